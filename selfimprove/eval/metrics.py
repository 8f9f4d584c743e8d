"""Evaluation metrics from per-prompt samples: pass@1, maj@k and unbiased pass@k.

- pass@1: for each prompt the share of its samples that are correct, averaged over prompts.
- maj@k: for each prompt, majority-vote the extracted answers of its first k samples (ties go to
  the answer seen first; samples without an answer do not vote) and score the voted answer.
- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), for a prompt with
  n samples of which c are correct; it needs n >= k.
- label accuracy and reward accuracy: how often the pseudo-labels and the rewards of a label-free
  round agree with gold (diagnostics, computed after the round; never fed back).

Gold labels enter here and only here (and in explicitly supervised baselines).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from math import comb
from typing import Any


def _check_nonempty(rows: Sequence[Sequence[Any]], what: str) -> None:
    if len(rows) == 0:
        raise ValueError(f"{what}: no prompts given")
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise ValueError(f"{what}: prompt {i} has no samples")


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with ``n`` samples, ``c`` correct: 1 - C(n-c, k) / C(n, k)."""
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass@k needs at least k samples per prompt: n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be within [0, n={n}]")
    if n - c < k:  # every size-k subset holds a correct sample
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_1(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over prompts of the share of correct samples."""
    _check_nonempty(correct, "pass@1")
    return sum(sum(map(bool, r)) / len(r) for r in correct) / len(correct)


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over prompts of the unbiased pass@k estimate (every prompt needs at least k samples)."""
    _check_nonempty(correct, f"pass@{k}")
    total = 0.0
    for i, r in enumerate(correct):
        try:
            total += pass_at_k_estimate(len(r), sum(map(bool, r)), k)
        except ValueError as exc:
            raise ValueError(f"prompt {i}: {exc}") from None
    return total / len(correct)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer (ties: the one that appears first); None if none voted."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    gold: Sequence[str],
    k: int | None = None,
    check: Callable[[str | None, str], bool] | None = None,
) -> float:
    """Share of prompts whose majority answer over the first ``k`` samples (all if None) is correct."""
    _check_nonempty(answers, "maj@k")
    if len(answers) != len(gold):
        raise ValueError(f"maj@k: {len(answers)} prompts of answers but {len(gold)} gold answers")
    if k is not None and k < 1:
        raise ValueError(f"maj@k needs k >= 1, got k={k}")
    check = check or (lambda p, g: p is not None and p == g)
    hits = 0
    for i, (row, g) in enumerate(zip(answers, gold, strict=True)):
        if k is not None and len(row) < k:
            raise ValueError(f"maj@{k}: prompt {i} has only {len(row)} samples")
        hits += bool(check(majority_answer(row[:k] if k else row), g))
    return hits / len(answers)


def evaluate_answers(
    answers: Mapping[str, Sequence[str | None]],
    gold: Mapping[str, str],
    check: Callable[[str | None, str], bool],
    *,
    ks: Sequence[int] = (8,),
) -> dict[str, float]:
    """pass@1, maj@k and pass@k for each k in ``ks``, plus answer-rate, from extracted answers per prompt.

    ``answers`` maps prompt_id -> extracted answers (None where none was found); every prompt must
    have gold. A k larger than the samples per prompt is an error (pass@k needs n >= k).
    """
    missing = [pid for pid in answers if pid not in gold]
    if missing:
        raise ValueError(f"no gold answer for {len(missing)} prompt(s), e.g. {missing[:3]}")
    pids = list(answers)
    rows = [list(answers[p]) for p in pids]
    golds = [gold[p] for p in pids]
    correct = [[bool(check(a, g)) for a in row] for row, g in zip(rows, golds, strict=True)]
    out: dict[str, float] = {"pass@1": pass_at_1(correct)}
    for k in ks:
        out[f"maj@{k}"] = maj_at_k(rows, golds, k, check)
        out[f"pass@{k}"] = pass_at_k(correct, k)
    n_samples = sum(len(r) for r in rows)
    out["answer_rate"] = sum(a is not None for r in rows for a in r) / n_samples
    # What a model that ignores the question reaches by always giving the split's most common gold
    # answer: a pass@1 near it means nothing was learned, whatever the trend (evaluation only).
    out["constant_baseline"] = Counter(golds).most_common(1)[0][1] / len(golds) if golds else 0.0
    out["n_prompts"] = float(len(rows))
    out["n_samples"] = float(n_samples)
    return out


def label_accuracy(
    pseudo_labels: Mapping[str, str | None], gold: Mapping[str, str], check: Callable[[str | None, str], bool]
) -> float | None:
    """Share of prompts with gold and a pseudo-label whose pseudo-label is correct (None: no such prompt).

    The one definition used by the loop's ``train/label_accuracy`` and by ``compute_diagnostics``:
    prompts whose vote abstained (no pseudo-label) or that have no gold are left out.
    """
    pairs = [(p, gold[pid]) for pid, p in pseudo_labels.items() if p is not None and pid in gold]
    if not pairs:
        return None
    return sum(bool(check(p, g)) for p, g in pairs) / len(pairs)


def reward_accuracy(
    samples: Iterable[tuple[str, float | None, str | None]],
    gold: Mapping[str, str],
    check: Callable[[str | None, str], bool],
) -> float | None:
    """Share of scored samples whose reward is positive exactly when the sample is correct.

    ``samples`` are ``(prompt_id, reward, extracted answer)``; samples without gold or with a None
    reward (cannot score) are left out (None: no sample left). The one definition used by the
    loop's ``train/reward_accuracy`` and by ``compute_diagnostics``.
    """
    hits = [
        (reward > 0) == bool(check(extracted, gold[pid]))
        for pid, reward, extracted in samples
        if reward is not None and pid in gold
    ]
    return sum(hits) / len(hits) if hits else None
