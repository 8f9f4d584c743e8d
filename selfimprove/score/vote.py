"""Majority vote over the extracted answers of one prompt's samples (TTRL / MM-UPT).

Shares and the majority ratio are fractions of *all* samples of the group (``n_total``), so a
sample without an answer counts against confidence instead of silently disappearing. Ties are
broken deterministically by a stated rule and always reported (``Vote.tie``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TIE_BREAKS = ("first", "smallest", "abstain")


@dataclass
class Vote:
    """The outcome of a majority vote over one group of answers."""

    pseudo_label: str | None
    # answer -> share of the group's samples (n_total) that gave it; clusters keyed by their first member.
    shares: dict[str, float]
    # share of the top answer among all samples (0.0 for an empty or all-invalid group)
    majority_ratio: float
    n_distinct: int
    n_valid: int
    n_total: int
    tie: bool
    abstained: bool
    # why the vote abstained: "empty_group", "no_answers", "too_few_valid", "below_min_share", "tie"
    reason: str | None = None
    # for each input answer: the cluster (answer key) it belongs to, None for a missing answer
    assignments: list[str | None] = field(default_factory=list)
    # the answers tied at the top (len > 1 when tie)
    tied: list[str] = field(default_factory=list)

    def agrees(self, index: int) -> bool:
        """Whether the ``index``-th answer voted for the pseudo-label (False when abstained)."""
        return self.pseudo_label is not None and self.assignments[index] == self.pseudo_label

    def share_of(self, index: int) -> float:
        """Share of the group that gave the same answer as the ``index``-th sample (0 if none)."""
        key = self.assignments[index]
        return 0.0 if key is None else self.shares[key]

    def entropy(self) -> float:
        """Entropy (nats) of the distribution of valid answers; 0.0 with fewer than one valid answer."""
        if self.n_valid == 0:
            return 0.0
        counts = [s * self.n_total for s in self.shares.values()]
        return -sum((c / self.n_valid) * math.log(c / self.n_valid) for c in counts if c > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the per-sample assignments)."""
        return {
            "pseudo_label": self.pseudo_label,
            "shares": dict(self.shares),
            "majority_ratio": self.majority_ratio,
            "n_distinct": self.n_distinct,
            "n_valid": self.n_valid,
            "n_total": self.n_total,
            "tie": self.tie,
            "tied": list(self.tied),
            "abstained": self.abstained,
            "reason": self.reason,
        }


def _sort_key(answer: str) -> tuple[int, float, str]:
    """Numbers before text, numbers by value, text by code points: a total, reproducible order."""
    try:
        value = float(answer)
        if math.isnan(value):
            raise ValueError
        return (0, value, answer)
    except (ValueError, OverflowError):
        return (1, 0.0, answer)


def majority_vote(
    answers: Sequence[str | None],
    *,
    min_valid: int = 1,
    min_share: float = 0.0,
    tie_break: str = "first",
    equal: Callable[[str, str], bool] | None = None,
) -> Vote:
    """Vote over extracted answers (None = no answer).

    ``equal`` (e.g. ``functools.partial(answers_equal, math=True)``) clusters answers that are
    written differently; each answer joins the first earlier cluster it equals, so the result is
    deterministic. The vote abstains (``pseudo_label=None``) when fewer than ``min_valid``
    answers exist, when the top share of all samples is below ``min_share``, or on a tie with
    ``tie_break="abstain"``. Otherwise ties go to the answer seen first ("first") or to the
    smallest answer, numbers by value ("smallest").
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    if min_valid < 0:
        raise ValueError(f"min_valid must be >= 0, got {min_valid!r}")
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must be in [0, 1], got {min_share!r}")
    n_total = len(answers)
    counts: dict[str, int] = {}
    assignments: list[str | None] = []
    for a in answers:
        if a is None or (isinstance(a, str) and not a.strip()):
            assignments.append(None)
            continue
        a = str(a)
        key = a
        if a not in counts and equal is not None:
            for rep in counts:
                try:
                    same = bool(equal(rep, a))
                except Exception:  # noqa: BLE001 - a failing comparator means "not shown equal"
                    same = False
                if same:
                    key = rep
                    break
        counts[key] = counts.get(key, 0) + 1
        assignments.append(key)
    n_valid = sum(counts.values())
    shares = {k: c / n_total for k, c in counts.items()} if n_total else {}
    top = max(counts.values(), default=0)
    tied = [k for k, c in counts.items() if c == top] if top else []
    tie = len(tied) > 1
    majority_ratio = top / n_total if n_total else 0.0

    reason = None
    if n_total == 0:
        reason = "empty_group"
    elif n_valid == 0:
        reason = "no_answers"
    elif n_valid < min_valid:
        reason = "too_few_valid"
    elif majority_ratio < min_share:
        reason = "below_min_share"
    elif tie and tie_break == "abstain":
        reason = "tie"

    label = None
    if reason is None:
        label = tied[0] if tie_break == "first" or not tie else min(tied, key=_sort_key)
    return Vote(
        pseudo_label=label,
        shares=shares,
        majority_ratio=majority_ratio,
        n_distinct=len(counts),
        n_valid=n_valid,
        n_total=n_total,
        tie=tie,
        abstained=reason is not None,
        reason=reason,
        assignments=assignments,
        tied=tied if tie else [],
    )


def vote_groups(
    answers: Sequence[str | None], group_keys: Sequence[Any], **vote_options: Any
) -> dict[Any, Vote]:
    """Vote separately within each group (samples sharing a key), keys in first-seen order."""
    if len(answers) != len(group_keys):
        raise ValueError(f"answers ({len(answers)}) and group_keys ({len(group_keys)}) differ in length")
    groups: dict[Any, list[str | None]] = {}
    for a, k in zip(answers, group_keys, strict=True):
        groups.setdefault(k, []).append(a)
    return {k: majority_vote(v, **vote_options) for k, v in groups.items()}


def vote_then_subsample(
    answers: Sequence[str | None],
    n_train: int,
    *,
    seed: int = 0,
    **vote_options: Any,
) -> tuple[Vote, list[int]]:
    """TTRL's "vote on more than you train on": vote over all answers, keep ``n_train`` indices.

    Returns the vote over every sample (e.g. 64) and a reproducible random subset of sample
    indices (e.g. 16) to train on; the subset's rewards use the full vote's pseudo-label.
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train!r}")
    vote = majority_vote(answers, **vote_options)
    indices = list(range(len(answers)))
    if n_train < len(indices):
        indices = sorted(random.Random(seed).sample(indices, n_train))
    return vote, indices


def pseudo_labels(
    answers_by_prompt: Mapping[Any, Sequence[str | None]], **vote_options: Any
) -> dict[Any, str | None]:
    """Per prompt id: the voted pseudo-label (None when the vote abstains).

    This is the precomputed ``pseudo_label`` column for the ``pseudo_label`` reward: voting before
    training over as many samples as wanted keeps the reward exact on any number of processes.
    """
    return {pid: majority_vote(list(a), **vote_options).pseudo_label for pid, a in answers_by_prompt.items()}
