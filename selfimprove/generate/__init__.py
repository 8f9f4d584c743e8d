"""Generation backends behind one protocol: vLLM, HF transformers, OpenAI-compatible servers."""

from __future__ import annotations

from typing import Any

from selfimprove.generate._common import adapter_fingerprint, check_prompt, render_prompt, trim_at_stop
from selfimprove.generate.base import ChatMessage, Completion, Generator, Prompt, Sampling

BACKENDS = ("vllm", "hf", "openai")


def build_generator(backend: str, model: str, **options: Any) -> Generator:
    """Build the generator for ``backend`` (vllm | hf | openai); options go to its constructor."""
    from selfimprove.errors import ConfigError

    if backend == "vllm":
        from selfimprove.generate.vllm_backend import VLLMGenerator

        cls: Any = VLLMGenerator
    elif backend == "hf":
        from selfimprove.generate.hf_backend import HFGenerator

        cls = HFGenerator
    elif backend == "openai":
        from selfimprove.generate.openai_backend import OpenAIGenerator

        cls = OpenAIGenerator
    else:
        raise ConfigError(f"unknown generation backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    try:
        return cls(model, **options)
    except TypeError as exc:
        # An unknown option: name it and the backend rather than a bare constructor TypeError.
        raise ConfigError(f"backend {backend!r}: bad option ({exc})") from exc


__all__ = [
    "BACKENDS",
    "ChatMessage",
    "Completion",
    "Generator",
    "Prompt",
    "Sampling",
    "adapter_fingerprint",
    "build_generator",
    "check_prompt",
    "render_prompt",
    "trim_at_stop",
]
