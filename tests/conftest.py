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
