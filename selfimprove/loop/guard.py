"""Label-free collapse guard and label-free choice of the best round.

Label-free self-training tends to rise, then collapse: the policy agrees with itself more and
more (majority ratio saturates), its answers stop varying (answer entropy and distinct answers
fall), its majority answer stops depending on the question (the same answer for every prompt), and
completions shrink or balloon. None of these signals needs a gold label, so the guard
can stop the loop or roll back to the last healthy adapter without touching gold. Thresholds are
relative to a reference round (round 0, the base model) except the majority-ratio ceiling.

Falling per-prompt answer entropy and fewer distinct answers per prompt are what every vote-based
recipe trains for (a right answer is one answer), so those two rules are off by default: on the
recorded benchmark runs (benchmarks/audit_guard.py) a 30% entropy floor flagged 48 rounds, and
held-out pass@1 rose by more than a point in 40 of them (19 of the 21 it flagged in
ground-truth-reward baselines). The default rules watch what collapse looks like without
labels: the same majority answer for different questions, completions that shrink or balloon, a
saturated majority ratio, and samples that stop giving an answer at all (the share without an
extractable answer rising by more than 15 points over round 0: self-consistency DPO at a too-high
learning rate on arithmetic went from 0% to 22% while held-out pass@1 fell 45 -> 26,
benchmarks/results/preference/; no recorded round of the other benchmarks rose by more than 13
points).

The best round is chosen without gold too: among rounds the guard did not flag, the one with the
highest mean majority ratio on the evaluation prompts (agreement of the policy with itself, which
counts samples without an answer against it). Gold-based metrics are never read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The label-free diagnostics the guard reads (computed on evaluation rollouts, gold unused).
MAJORITY = "eval/majority_ratio"
ENTROPY = "eval/answer_entropy"
DISTINCT = "eval/distinct_answers"
LENGTH = "eval/mean_length"
DIVERSITY = "eval/answer_diversity"
NO_ANSWER = "eval/no_answer_rate"
GUARD_KEYS = (MAJORITY, ENTROPY, DISTINCT, LENGTH, DIVERSITY, NO_ANSWER)


@dataclass
class GuardDecision:
    """The guard's verdict on one round."""

    round: int
    collapsed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for state.json and the report."""
        return {"round": self.round, "collapsed": self.collapsed, "reasons": list(self.reasons)}


def _ratio(cur: float | None, ref: float | None) -> float | None:
    if cur is None or ref is None or ref <= 0:
        return None
    return cur / ref


def check_collapse(
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    round: int = 0,
    min_entropy_ratio: float | None = None,
    min_distinct_ratio: float | None = None,
    max_majority_ratio: float | None = 0.99,
    min_length_ratio: float | None = 0.5,
    max_length_ratio: float | None = 3.0,
    min_diversity_ratio: float | None = 0.5,
    max_no_answer_increase: float | None = 0.15,
) -> GuardDecision:
    """Apply the collapse rules to ``current`` diagnostics, relative to ``reference``; None turns a rule off."""
    reasons: list[str] = []
    ent = _ratio(current.get(ENTROPY), reference.get(ENTROPY))
    if min_entropy_ratio is not None and ent is not None and ent < min_entropy_ratio:
        reasons.append(
            f"answer entropy fell to {ent:.0%} of the reference "
            f"({current[ENTROPY]:.3f} vs {reference[ENTROPY]:.3f}; limit {min_entropy_ratio:.0%})"
        )
    dis = _ratio(current.get(DISTINCT), reference.get(DISTINCT))
    if min_distinct_ratio is not None and dis is not None and dis < min_distinct_ratio:
        reasons.append(
            f"distinct answers per prompt fell to {dis:.0%} of the reference "
            f"({current[DISTINCT]:.2f} vs {reference[DISTINCT]:.2f}; limit {min_distinct_ratio:.0%})"
        )
    maj, maj_ref = current.get(MAJORITY), reference.get(MAJORITY)
    if max_majority_ratio is not None and maj is not None and maj > max_majority_ratio:
        # A base model that already agrees with itself this much has not collapsed by training.
        if maj_ref is None or maj_ref <= max_majority_ratio:
            reasons.append(f"majority ratio saturated at {maj:.3f} (limit {max_majority_ratio})")
    ln = _ratio(current.get(LENGTH), reference.get(LENGTH))
    if min_length_ratio is not None and ln is not None and ln < min_length_ratio:
        reasons.append(
            f"mean completion length fell to {ln:.0%} of the reference "
            f"({current[LENGTH]:.1f} vs {reference[LENGTH]:.1f} tokens; limit {min_length_ratio:.0%})"
        )
    if max_length_ratio is not None and ln is not None and ln > max_length_ratio:
        reasons.append(
            f"mean completion length grew to {ln:.1f}x the reference "
            f"({current[LENGTH]:.1f} vs {reference[LENGTH]:.1f} tokens; limit {max_length_ratio}x)"
        )
    div = _ratio(current.get(DIVERSITY), reference.get(DIVERSITY))
    if min_diversity_ratio is not None and div is not None and div < min_diversity_ratio:
        reasons.append(
            f"distinct majority answers across prompts fell to {div:.0%} of the reference "
            f"({current[DIVERSITY]:.3f} vs {reference[DIVERSITY]:.3f} per prompt; "
            f"limit {min_diversity_ratio:.0%}): the answer stopped depending on the question"
        )
    na, na_ref = current.get(NO_ANSWER), reference.get(NO_ANSWER)
    if max_no_answer_increase is not None and na is not None and na_ref is not None:
        if na - na_ref > max_no_answer_increase:
            reasons.append(
                f"samples without an answer rose from {na_ref:.0%} to {na:.0%} "
                f"(limit +{max_no_answer_increase:.0%} points over the reference)"
            )
    return GuardDecision(round=round, collapsed=bool(reasons), reasons=reasons)


def label_free_score(metrics: Mapping[str, Any]) -> float | None:
    """The label-free quality of a round: mean majority ratio on evaluation prompts (None if unknown)."""
    value = metrics.get(MAJORITY)
    return None if value is None else float(value)


def best_round(
    history: Sequence[Mapping[str, Any]], collapsed: Sequence[int] = ()
) -> tuple[int | None, float | None]:
    """(round, score) of the best round by :func:`label_free_score`, skipping ``collapsed`` rounds.

    Ties go to the earlier round (less training for the same agreement). ``history`` holds one
    metrics mapping per round with a ``round`` key.
    """
    best: tuple[int | None, float | None] = (None, None)
    skip = set(collapsed)
    for m in history:
        r = int(m["round"])
        if r in skip:
            continue
        score = label_free_score(m)
        if score is None:
            continue
        if best[1] is None or score > best[1]:
            best = (r, score)
    return best


def guard_settings(guard_cfg: Any) -> dict[str, Any]:
    """The threshold keyword arguments of :func:`check_collapse` from a ``GuardConfig``."""
    return {
        "min_entropy_ratio": guard_cfg.min_entropy_ratio,
        "min_distinct_ratio": guard_cfg.min_distinct_ratio,
        "max_majority_ratio": guard_cfg.max_majority_ratio,
        "min_length_ratio": guard_cfg.min_length_ratio,
        "max_length_ratio": guard_cfg.max_length_ratio,
        "min_diversity_ratio": guard_cfg.min_diversity_ratio,
        "max_no_answer_increase": guard_cfg.max_no_answer_increase,
    }


__all__ = [
    "DISTINCT",
    "DIVERSITY",
    "ENTROPY",
    "GUARD_KEYS",
    "LENGTH",
    "MAJORITY",
    "NO_ANSWER",
    "GuardDecision",
    "best_round",
    "check_collapse",
    "guard_settings",
    "label_free_score",
]
