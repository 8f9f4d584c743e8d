"""The generator protocol shared by every backend (vLLM, HF, OpenAI-compatible).

A generator takes prompts (plain text or chat messages) and returns ``n`` completions per prompt.
Sampling parameters mean the same on every backend. Judges, trainers, the prompt optimizer and
distillation all talk to generation through this protocol only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

ChatMessage = dict[str, str]
Prompt = Union[str, list[ChatMessage]]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters, identical in meaning on every backend."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Top-k log-probabilities to return for every generated token (None: none).
    logprobs: int | None = None
    # Texts whose log-probabilities every step's ``logprobs`` dict must hold whether or not they
    # are in the top-k (e.g. a judge's answer letters); each must be one token of the model (the
    # others are skipped). Needs ``logprobs`` set; on vLLM (local or served) the step dict then
    # holds these tokens and the sampled one instead of the top-k.
    logprob_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"sampling.n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"sampling.logprobs must be None or an integer >= 0, got {self.logprobs!r}")
        object.__setattr__(self, "logprob_tokens", tuple(self.logprob_tokens))
        if self.logprob_tokens and self.logprobs is None:
            raise ValueError("sampling.logprob_tokens needs sampling.logprobs (an integer >= 0)")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for manifests and rollout metadata)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["logprob_tokens"] = list(self.logprob_tokens)
        return d


@dataclass
class Completion:
    """One sampled completion."""

    text: str
    # "stop" (EOS or a stop string), "length" (hit max_tokens), or "error" (backend failure).
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] | None = None
    # Per generated token: {token text: log-probability} for the top-k tokens (when asked).
    logprobs: list[dict[str, float]] | None = None
    # Log-probability of each sampled token (when logprobs were asked).
    token_logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """What every backend provides."""

    backend: str
    model: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Return ``sampling.n`` completions for each prompt, in prompt order.

        ``adapter`` is a path to a PEFT LoRA adapter folder applied on top of the base model.
        """
        ...

    def close(self) -> None:
        """Release the engine (processes, memory). Safe to call twice."""
        ...
