"""Generation backends behind one protocol: vLLM, HF transformers, OpenAI-compatible servers."""

from selfimprove.generate.base import ChatMessage, Completion, Generator, Prompt, Sampling

__all__ = ["ChatMessage", "Completion", "Generator", "Prompt", "Sampling"]
