"""Per-prompt failures: a generator whose failed requests come back as error completions.

A backend raises ``BackendError`` when a request fails for good (an HTTP server that keeps
answering 500, or never answers): the whole ``generate`` call fails, and the answers to the other
prompts of the call, already paid for, are lost. Jobs that make many independent calls (the prompt
optimizer, judges) wrap their generator with :func:`isolate_failures`: the prompts of an
OpenAI-compatible backend are then sent as separate requests (concurrently, up to the backend's
``max_concurrency``), and a prompt whose request failed gets ``sampling.n`` completions with
``finish_reason="error"`` (the message in ``extra["error"]``, no tokens) while the others keep
their answers. Other backends (vllm, hf) run the whole batch as before; if it raises, each prompt
is run alone to find the ones that fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from selfimprove.errors import BackendError
from selfimprove.generate.base import Completion, Generator, Prompt, Sampling


def error_completions(n: int, message: str) -> list[Completion]:
    """``n`` completions that stand for a failed request."""
    return [
        Completion(
            text="", finish_reason="error", prompt_tokens=0, completion_tokens=0, extra={"error": message}
        )
        for _ in range(n)
    ]


class FailureIsolatingGenerator:
    """Wraps a generator so that a failed request fails only its own prompt (see module docstring)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.backend = generator.backend
        self.model = generator.model

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Like the wrapped ``generate``; failed requests give error completions instead of raising."""

        def one(prompt: Prompt) -> list[Completion]:
            try:
                return self.generator.generate([prompt], sampling, adapter=adapter)[0]
            except BackendError as exc:
                return error_completions(sampling.n, str(exc))

        if self.backend == "openai" and len(prompts) > 1:
            workers = max(1, int(getattr(self.generator, "max_concurrency", 8)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(one, prompts))
        try:
            return self.generator.generate(prompts, sampling, adapter=adapter, progress=progress)
        except BackendError as exc:
            if len(prompts) == 1:
                return [error_completions(sampling.n, str(exc))]
        # the batch failed: run each prompt alone to find the ones that fail
        return [one(p) for p in prompts]

    def close(self) -> None:
        """Close the wrapped generator."""
        self.generator.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


def isolate_failures(generator: Generator) -> Generator:
    """``generator`` wrapped so that failed requests fail only their own prompts."""
    if isinstance(generator, FailureIsolatingGenerator):
        return generator
    return FailureIsolatingGenerator(generator)


__all__ = ["FailureIsolatingGenerator", "error_completions", "isolate_failures"]
