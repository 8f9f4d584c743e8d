"""The prompt-optimization workspace: every call's record, MetaGPT-compatible results, a summary.

Layout (``WS`` is ``--workspace``)::

    WS/state.json, manifest.json, run.lock   finished steps, cost ledger; what ran; the lock
    WS/config.yaml                           the resolved task and settings
    WS/questions.json                        the question sample, drawn once (texts only)
    WS/prompts/results.json                  MetaGPT's fields: round, answers, prompt, succeed, tokens, time
    WS/prompts/round_N/prompt.txt            the round's prompt (round 1: the initial one)
    WS/prompts/round_N/answers.txt           its answers, in MetaGPT's text layout
    WS/prompts/round_N/answers.json          the same with tokens, finish reasons and attempts
    WS/prompts/round_N/proposal.json         every optimizer attempt (reply, outcome, tokens)
    WS/prompts/round_N/judgements.json       every judge call (order, repeat, attempt, reply)
    WS/prompts/round_N/decision.json         the decision and why
    WS/heldout.json                          the held-out check (when enabled)
    WS/cost.json, summary.json, best_prompt.txt, report.md, report.html

Every file is written atomically; a file exists only once its step finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.runs.io import read_json, write_json_atomic, write_text_atomic

PROMPTS = "prompts"


class Workspace:
    """Paths and writers of one workspace folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def prompts_dir(self) -> Path:
        """``WS/prompts`` (MetaGPT's layout)."""
        return self.root / PROMPTS

    def round_dir(self, r: int) -> Path:
        """``WS/prompts/round_N``."""
        return self.prompts_dir / f"round_{r}"

    def path(self, name: str, r: int | None = None) -> Path:
        """A file of round ``r`` (or of the workspace when ``r`` is None)."""
        return (self.round_dir(r) if r is not None else self.root) / name

    def write_json(self, name: str, data: Any, r: int | None = None) -> None:
        """Write a JSON record atomically."""
        write_json_atomic(self.path(name, r), data)

    def read_json(self, name: str, r: int | None = None) -> Any:
        """Read a JSON record (errors name the file)."""
        return read_json(self.path(name, r))

    def write_text(self, name: str, text: str, r: int | None = None) -> None:
        """Write a text file atomically."""
        write_text_atomic(self.path(name, r), text)

    def write_answers(self, r: int, questions: Sequence[str], answers: Sequence[str]) -> None:
        """``answers.txt`` in MetaGPT's layout (Question:/Answer: blocks)."""
        text = "".join(f"Question:\n{q}\nAnswer:\n{a}\n\n" for q, a in zip(questions, answers, strict=True))
        self.write_text("answers.txt", text, r)

    def write_results(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """``prompts/results.json``: one entry per finished round, MetaGPT's fields first."""
        write_json_atomic(self.prompts_dir / "results.json", list(entries))


def results_entry(
    r: int,
    questions: Sequence[str],
    answers: Sequence[str],
    prompt: str,
    succeed: bool,
    tokens: int,
    time: str,
    **extra: Any,
) -> dict[str, Any]:
    """One ``results.json`` entry: MetaGPT's fields (round, answers, prompt, succeed, tokens, time).

    ``tokens`` is the executor's output tokens for the round's answers (MetaGPT counts the
    answers' tokens with its own tokenizer); ``extra`` (e.g. ``decision``) follows.
    """
    return {
        "round": r,
        "answers": [{"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)],
        "prompt": prompt,
        "succeed": succeed,
        "tokens": tokens,
        "time": time,
        **extra,
    }


__all__ = ["PROMPTS", "Workspace", "results_entry"]
