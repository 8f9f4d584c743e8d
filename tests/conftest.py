"""Shared fixtures: tiny local models (no hub), offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Qwen2 (hidden 128, head_dim 64) with a char tokenizer, saved as safetensors."""
    from selfimprove.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def vllm_generator(tiny_model_dir):
    """One real vLLM engine on ``tiny_model_dir`` for the whole test session (start-up ~20-45 s).

    Built with ``enable_lora=True`` (max_lora_rank 16, max_loras 2) and ``enforce_eager=True``;
    pass ``adapter=<PEFT folder>`` to ``generate`` to serve a LoRA (re-saved folders are picked up
    without a restart). Share it: never build another engine in a test, and never ``close()`` it
    (the fixture shuts it down at the end of the session). Mark tests using it ``@pytest.mark.slow``.
    """
    from selfimprove.generate.vllm_backend import VLLMGenerator

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    gen = VLLMGenerator(
        tiny_model_dir,
        enable_lora=True,
        max_lora_rank=16,
        max_loras=2,
        enforce_eager=True,
        max_model_len=1024,
        seed=0,
    )
    yield gen
    gen.close()


@pytest.fixture(scope="session")
def make_lora_adapter(tiny_model_dir):
    """Factory ``make(out_dir, seed=0, r=8) -> Path``: a PEFT LoRA adapter on ``tiny_model_dir``.

    The B matrices are random (non-zero, seeded), so the adapter really changes the model's output
    (a fresh PEFT LoRA is a no-op). Saving again to the same folder with another seed gives a new
    adapter version there.
    """
    from pathlib import Path

    def make(out_dir, seed: int = 0, r: int = 8) -> Path:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        cfg = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        return Path(out_dir)

    return make
