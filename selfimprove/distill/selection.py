"""Which teacher labels the student trains on: pluggable measures, keep rules and weights.

A candidate is one labelled input with two numbers: the teacher's **confidence** in its label and
the student's **need** of it. The parts are chosen by name and compared side by side:

- confidence measures: ``vote_share`` (share of the teacher's k samples that gave the label),
  ``label_prob`` (probability of the label's tokens), ``auto`` (label_prob where present);
- need measures: ``entropy`` or ``loss`` of the student on the training text (teacher-forced);
- keep rules (LLKD): ``adaptive`` (per-class moving averages of both numbers over a seeded stream
  of batches: a candidate is kept when both are at or above its class's current averages),
  ``fixed`` (two given thresholds) or ``none``;
- weight rules (LLKD): relative ``confidence``, relative ``need``, their ``product`` or ``none``,
  clipped to ``[weight_min, weight_max]``.

Strategies: ``all``, ``random``, ``confidence`` (top by confidence), ``need`` (top by need),
``llkd`` (keep rule, then weights). LLKD (arXiv 2411.08028) publishes no code and no exact
formulas; the rules here are one reading of its description, kept as separate parts to be
measured. Nothing here sees gold answers: candidates are built from teacher samples and student
scores only.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

STRATEGIES = ("all", "random", "confidence", "need", "llkd")
CONFIDENCE_MEASURES = ("auto", "vote_share", "label_prob")
NEED_MEASURES = ("entropy", "loss")
THRESHOLD_RULES = ("adaptive", "fixed", "none")
WEIGHT_RULES = ("none", "confidence", "need", "product")

_Row = TypeVar("_Row")


@dataclass(frozen=True)
class Candidate:
    """One labelled input as selection sees it: its label, confidence and need (no gold)."""

    prompt_id: str
    label: str
    confidence: float
    need: float


@dataclass(frozen=True)
class SelectionSettings:
    """The pluggable parts of a selection (see the module docstring)."""

    threshold: str = "adaptive"
    momentum: float = 0.9
    stream_batch: int = 16
    min_class_count: int = 3
    fixed_confidence: float = 0.5
    fixed_need: float = 0.0
    weight: str = "product"
    weight_min: float = 0.5
    weight_max: float = 2.0
    fill: bool = True

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_RULES:
            raise ValueError(f"threshold must be one of {THRESHOLD_RULES}, got {self.threshold!r}")
        if self.weight not in WEIGHT_RULES:
            raise ValueError(f"weight must be one of {WEIGHT_RULES}, got {self.weight!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.stream_batch < 1:
            raise ValueError(f"stream_batch must be >= 1, got {self.stream_batch!r}")
        if not 0 < self.weight_min <= self.weight_max:
            raise ValueError(f"need 0 < weight_min <= weight_max, got {self.weight_min}, {self.weight_max}")


@dataclass
class Selection:
    """The chosen candidates (in rank order) with their weights, and what the rule did."""

    strategy: str
    size: int | None
    rows: list[dict[str, Any]]
    # Candidates that passed llkd's keep rule (before truncation or filling); None for other strategies.
    passed: int | None = None
    filled: int = 0
    candidates: int = 0
    # prompt_id -> (confidence threshold, need threshold) in force when it was judged (adaptive / fixed).
    thresholds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def prompt_ids(self) -> list[str]:
        """The selected prompt ids, in rank order."""
        return [r["prompt_id"] for r in self.rows]


def confidence_of(item: Mapping[str, Any], measure: str) -> float:
    """The teacher's confidence in a labelled input's label by ``measure``."""
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence measure must be one of {CONFIDENCE_MEASURES}, got {measure!r}")
    prob = item.get("label_prob")
    if measure == "label_prob":
        if prob is None:
            raise ValueError(
                f"input {item.get('prompt_id')!r} has no label probability (the teacher's backend returned no "
                "log-probabilities); use selection.confidence: vote_share or auto"
            )
        return float(prob)
    if measure == "auto" and prob is not None:
        return float(prob)
    return float(item["vote_share"])


def need_of(item: Mapping[str, Any], measure: str) -> float:
    """The student's need of a labelled input by ``measure`` (``entropy`` or ``loss``)."""
    if measure not in NEED_MEASURES:
        raise ValueError(f"need measure must be one of {NEED_MEASURES}, got {measure!r}")
    return float(item[measure])


def candidates(
    items: Sequence[Mapping[str, Any]], confidence: str = "vote_share", need: str = "entropy"
) -> list[Candidate]:
    """Candidates from labelled inputs (``teacher_label``, ``vote_share`` / ``label_prob`` and ``entropy`` / ``loss``."""
    return [
        Candidate(
            str(it["prompt_id"]), str(it["teacher_label"]), confidence_of(it, confidence), need_of(it, need)
        )
        for it in items
    ]


class AdaptiveThresholds:
    """Per-class exponential moving averages of confidence and need, updated batch by batch.

    A class (a label) with fewer than ``min_class_count`` candidates in the pool uses the global
    averages. A class (or the global pair) is initialised with the mean of the first batch it
    appears in, before that batch is judged.
    """

    def __init__(self, momentum: float, min_class_count: int, class_counts: Mapping[str, int]) -> None:
        self.momentum = momentum
        self.min_class_count = min_class_count
        self.class_counts = dict(class_counts)
        self.conf: dict[str | None, float] = {}
        self.need: dict[str | None, float] = {}

    def key(self, label: str) -> str | None:
        """The class whose averages judge ``label`` (None: the global averages)."""
        return label if self.class_counts.get(label, 0) >= self.min_class_count else None

    def _groups(self, batch: Sequence[Candidate]) -> dict[str | None, list[Candidate]]:
        groups: dict[str | None, list[Candidate]] = {None: list(batch)}
        for c in batch:
            k = self.key(c.label)
            if k is not None:
                groups.setdefault(k, []).append(c)
        return groups

    def start(self, batch: Sequence[Candidate]) -> None:
        """Initialise the classes first seen in ``batch`` with its means."""
        for k, members in self._groups(batch).items():
            if k not in self.conf:
                self.conf[k] = sum(c.confidence for c in members) / len(members)
                self.need[k] = sum(c.need for c in members) / len(members)

    def thresholds(self, label: str) -> tuple[float, float]:
        """(confidence threshold, need threshold) now in force for ``label``."""
        k = self.key(label)
        return self.conf[k], self.need[k]

    def update(self, batch: Sequence[Candidate]) -> None:
        """Move the averages of the classes in ``batch`` towards the batch's means."""
        m = self.momentum
        for k, members in self._groups(batch).items():
            self.conf[k] = m * self.conf[k] + (1 - m) * sum(c.confidence for c in members) / len(members)
            self.need[k] = m * self.need[k] + (1 - m) * sum(c.need for c in members) / len(members)


def keep_adaptive(
    cands: Sequence[Candidate], settings: SelectionSettings, seed: int
) -> tuple[list[Candidate], dict[str, tuple[float, float]]]:
    """LLKD's adaptive keep rule over a seeded stream; returns (kept, thresholds each was judged by)."""
    order = list(cands)
    random.Random(f"llkd-stream|{seed}").shuffle(order)
    rule = AdaptiveThresholds(settings.momentum, settings.min_class_count, Counter(c.label for c in cands))
    kept: list[Candidate] = []
    seen: dict[str, tuple[float, float]] = {}
    for start in range(0, len(order), settings.stream_batch):
        batch = order[start : start + settings.stream_batch]
        rule.start(batch)
        for c in batch:
            tc, tn = rule.thresholds(c.label)
            seen[c.prompt_id] = (tc, tn)
            if c.confidence >= tc and c.need >= tn:
                kept.append(c)
        rule.update(batch)
    return kept, seen


def rank_scores(cands: Sequence[Candidate]) -> dict[str, float]:
    """Rank of confidence x rank of need, each in (0, 1] (ties share the higher rank): scale-free."""
    n = len(cands)

    def ranks(values: list[float]) -> list[float]:
        return [sum(v <= x for v in values) / n for x in values]

    rc = ranks([c.confidence for c in cands])
    rn = ranks([c.need for c in cands])
    return {c.prompt_id: a * b for c, a, b in zip(cands, rc, rn, strict=True)}


def sample_weights(cands: Sequence[Candidate], settings: SelectionSettings) -> list[float]:
    """Weights by the weight rule, relative to the selection's means, clipped to the bounds."""
    if not cands or settings.weight == "none":
        return [1.0 for _ in cands]
    mc = sum(c.confidence for c in cands) / len(cands)
    mn = sum(c.need for c in cands) / len(cands)
    out = []
    for c in cands:
        rel_c = c.confidence / mc if mc > 0 else 1.0
        rel_n = c.need / mn if mn > 0 else 1.0
        raw = {"confidence": rel_c, "need": rel_n, "product": rel_c * rel_n}[settings.weight]
        out.append(min(settings.weight_max, max(settings.weight_min, raw)))
    return out


def select(
    cands: Sequence[Candidate],
    strategy: str,
    size: int | None,
    settings: SelectionSettings = SelectionSettings(),
    *,
    seed: int = 0,
) -> Selection:
    """Choose up to ``size`` candidates by ``strategy`` (``all`` ignores ``size``); weights by llkd only."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1 or None, got {size!r}")
    ids = [c.prompt_id for c in cands]
    if len(set(ids)) != len(ids):
        raise ValueError("candidates repeat a prompt id")
    pool = list(cands)
    cap = len(pool) if size is None else min(size, len(pool))
    passed: int | None = None
    filled = 0
    thresholds: dict[str, tuple[float, float]] = {}
    if strategy == "all":
        chosen = pool
    elif strategy == "random":
        chosen = random.Random(f"select-random|{seed}").sample(pool, cap)
    elif strategy == "confidence":
        chosen = sorted(pool, key=lambda c: (-c.confidence, -c.need, c.prompt_id))[:cap]
    elif strategy == "need":
        chosen = sorted(pool, key=lambda c: (-c.need, -c.confidence, c.prompt_id))[:cap]
    else:
        if settings.threshold == "adaptive":
            kept, thresholds = keep_adaptive(pool, settings, seed)
        elif settings.threshold == "fixed":
            t = (settings.fixed_confidence, settings.fixed_need)
            kept = [c for c in pool if c.confidence >= t[0] and c.need >= t[1]]
            thresholds = {c.prompt_id: t for c in pool}
        else:
            kept = list(pool)
        passed = len(kept)
        score = rank_scores(pool) if pool else {}
        kept_ids = {c.prompt_id for c in kept}
        chosen = sorted(kept, key=lambda c: (-score[c.prompt_id], c.prompt_id))
        if size is not None:
            chosen = chosen[:cap]
            if len(chosen) < cap and settings.fill:
                rest = sorted(
                    (c for c in pool if c.prompt_id not in kept_ids),
                    key=lambda c: (-score[c.prompt_id], c.prompt_id),
                )
                extra = rest[: cap - len(chosen)]
                filled = len(extra)
                chosen = chosen + extra
    weights = sample_weights(chosen, settings) if strategy == "llkd" else [1.0] * len(chosen)
    filled_ids = {c.prompt_id for c in chosen[len(chosen) - filled :]} if filled else set()
    rows = [
        {
            "prompt_id": c.prompt_id,
            "teacher_label": c.label,
            "confidence": c.confidence,
            "need": c.need,
            "weight": w,
            "filled": c.prompt_id in filled_ids,
        }
        for c, w in zip(chosen, weights, strict=True)
    ]
    return Selection(strategy, size, rows, passed, filled, len(pool), thresholds)


def weighted_rows(rows: Sequence[_Row], weights: Sequence[float], n: int, seed: int) -> list[_Row]:
    """``n`` rows, each repeated in proportion to its weight (largest remainders), in a seeded order.

    Row i appears ``n * w_i / sum(w)`` times, rounded so the counts sum to ``n``: SFT on the
    result is SFT with a weighted loss (up to rounding) through the unchanged SFT trainer.
    """
    if len(rows) != len(weights):
        raise ValueError(f"{len(rows)} rows but {len(weights)} weights")
    if not rows or n < 1:
        return []
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    total = float(sum(weights))
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(rows)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    out = [rows[i] for i, c in enumerate(counts) for _ in range(c)]
    random.Random(f"weighted-sft|{seed}").shuffle(out)
    return out


__all__ = [
    "CONFIDENCE_MEASURES",
    "NEED_MEASURES",
    "STRATEGIES",
    "THRESHOLD_RULES",
    "WEIGHT_RULES",
    "AdaptiveThresholds",
    "Candidate",
    "Selection",
    "SelectionSettings",
    "candidates",
    "confidence_of",
    "keep_adaptive",
    "need_of",
    "rank_scores",
    "sample_weights",
    "select",
    "weighted_rows",
]
