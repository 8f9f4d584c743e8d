"""The round table printed after every round (and put in the report), with its warnings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from selfimprove.loop.inputs import EMPTY_EVAL_WARNING


def _fmt(v: Any, width: int = 7) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.3f}".rjust(width)
    return str(v).rjust(width)


def round_table(history: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> str:
    """The per-round table printed to the terminal (and put in the report)."""
    kmax = max(ks)
    cols = [
        ("round", "round"),
        ("pass@1", "eval/pass@1"),
        (f"maj@{kmax}", f"eval/maj@{kmax}"),
        (f"pass@{kmax}", f"eval/pass@{kmax}"),
        ("maj.ratio", "eval/majority_ratio"),
        ("entropy", "eval/answer_entropy"),
        ("length", "eval/mean_length"),
        ("lbl.acc", "train/label_accuracy"),
        ("rows", "data/rows"),
        ("loss", "train/loss"),
        ("note", "note"),
    ]
    widths = [max(7, len(c[0])) for c in cols]
    lines = ["  ".join(c[0].rjust(w) for c, w in zip(cols, widths, strict=True))]
    for m in history:
        cells = []
        for (_title, key), w in zip(cols, widths, strict=True):
            v = m.get(key)
            if key == "note":
                cells.append(str(v or ""))
            elif key == "eval/mean_length" and isinstance(v, float):
                cells.append(f"{v:.1f}".rjust(w))
            else:
                cells.append(_fmt(v, w))
        lines.append("  ".join(cells).rstrip())
    base = next((m.get("eval/constant_baseline") for m in history if "eval/constant_baseline" in m), None)
    if isinstance(base, float):
        lines.append(
            f"(always giving the eval split's most common answer scores {_fmt(base, 0).strip()}: "
            "pass@1 near it means the model ignores the question)"
        )
    if history:
        lines += [f"(warning: {w})" for w in round_warnings(history[-1])]
    return "\n".join(lines)


# A round warns when at least this share of its eval samples (or of its votes) hit max_tokens.
TRUNCATION_WARN_SHARE = 0.2


def round_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """What a user must know about one round's numbers (printed under the round table, in the report)."""
    r = metrics.get("round")
    out = []
    if metrics.get("eval/prompts") == 0:
        out.append(f"the eval split is empty: {EMPTY_EVAL_WARNING}")
    cut = metrics.get("eval/truncated_no_answer_rate")
    if isinstance(cut, float) and cut >= TRUNCATION_WARN_SHARE:
        out.append(
            f"{cut:.0%} of round {r}'s eval samples stopped at the token limit before giving an answer: "
            "raise generation.max_tokens / evaluation.max_tokens"
        )
    votes = metrics.get("train/truncated_vote_share")
    if isinstance(votes, float) and votes >= TRUNCATION_WARN_SHARE:
        out.append(
            f"{votes:.0%} of round {r}'s votes came from samples cut at the token limit (their answers "
            "were read from unfinished completions): raise generation.max_tokens, or set "
            "scoring.vote_truncated: false to leave them out of the vote"
        )
    return out
