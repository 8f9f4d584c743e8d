"""What a task is: prompts without gold, gold kept apart, an answer format, an extractor, a checker.

A task hands out ``(prompts, gold)``: ``prompts`` are records ``{"prompt_id", "prompt", "meta"}``
that carry no answer anywhere, and ``gold`` is a separate ``{prompt_id: answer}`` mapping meant only
for evaluation (and for explicitly supervised baselines). Keeping the two apart at the source makes
it impossible for a label-free path to read a label by accident.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

SPLITS = ("base", "train", "eval")


ANSWER_PREFIX = "The answer is"


@runtime_checkable
class Task(Protocol):
    """What the loop, the evaluator and the base-model builder need from a task."""

    name: str
    extractor: str
    extractor_options: dict[str, Any]

    def make_split(
        self, split: str, n: int | None = None, seed: int = 0, level: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Return ``(prompts, gold)`` for ``split``; prompts carry no gold, gold maps prompt_id -> answer."""
        ...

    def extract(self, text: str) -> str | None:
        """The normalised final answer in a completion (None when there is none)."""
        ...

    def check(self, pred: str | None, gold: str) -> bool:
        """Whether an extracted answer equals the gold answer."""
        ...


def split_of(key: str, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> str:
    """The split ('base', 'train' or 'eval') a problem belongs to, from a hash of its canonical key.

    Hashing the problem itself (not its position in a stream) makes the splits disjoint by
    construction: the same problem always lands in the same split, whatever the seed or count.
    """
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(16**12)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if bucket < edge:
            return name
    return SPLITS[-1]


def problem_id(task: str, key: str) -> str:
    """A stable prompt id derived from the problem's canonical key (never from its answer)."""
    return f"{task}-{hashlib.sha256(f'{task}|{key}'.encode()).hexdigest()[:12]}"


def normalize_answer(text: Any) -> str | None:
    """Canonical form for comparing answers: the scorer's normalisation, then '1 , 2' -> '1,2'."""
    from selfimprove.score.extract import normalize_answer as score_normalize

    s = score_normalize(text)
    if s is None:
        return None
    s = s.strip("'\"`")
    # List answers ("3, 5, 12") compare regardless of the spaces around their commas.
    s = re.sub(r"\s*,\s*", ",", s)
    return s or None


def extract(text: str, extractor: str, options: Mapping[str, Any] | None = None) -> str | None:
    """Run the named extractor of ``selfimprove.score.extract`` on ``text`` (None when no answer).

    Tasks use the scorer's extractors so that evaluation and label-free scoring read answers
    identically.
    """
    from selfimprove.score.extract import get_extractor

    return get_extractor(extractor, **dict(options or {}))(text)


def answers_equal(pred: Any, gold: Any, *, case_sensitive: bool = True) -> bool:
    """Compare two answers after normalisation; numbers compare by value; None never matches."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p is None or g is None:
        return False
    if not case_sensitive:
        p, g = p.lower(), g.lower()
    if p == g:
        return True
    try:
        return float(p) == float(g)
    except ValueError:
        return False


class SystemPromptTask:
    """A task whose prompts start with a system message (e.g. a prompt found by ``optimize-prompt``).

    Chat prompts get ``{"role": "system", "content": system_prompt}`` first (replacing a system
    message the task had); plain-text prompts get the system prompt and a blank line before them.
    Everything else (gold, extraction, checking) is the wrapped task's.
    """

    def __init__(self, task: Task, system_prompt: str) -> None:
        self.task = task
        self.system_prompt = system_prompt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def _with_system(self, prompt: Any) -> Any:
        if isinstance(prompt, str):
            return f"{self.system_prompt}\n\n{prompt}"
        rest = [m for m in prompt if m.get("role") != "system"]
        return [{"role": "system", "content": self.system_prompt}, *rest]

    def make_split(
        self, split: str, n: int | None = None, seed: int = 0, level: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The wrapped task's split with the system prompt put before every prompt."""
        prompts, gold = self.task.make_split(split, n=n, seed=seed, level=level)
        return [{**p, "prompt": self._with_system(p["prompt"])} for p in prompts], gold

    def extract(self, text: str) -> str | None:
        """The wrapped task's extractor."""
        return self.task.extract(text)

    def check(self, pred: str | None, gold: str) -> bool:
        """The wrapped task's checker."""
        return self.task.check(pred, gold)
