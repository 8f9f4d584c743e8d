"""Label-free diagnostics of scored rollouts (``score_rollouts`` is in ``selfimprove.score.rollouts``).

``compute_diagnostics`` summarises scored rollouts: majority ratio, answer entropy, distinct answers,
response length, no-answer rate with reasons, reward statistics, and, only when an evaluation
split passes gold explicitly, label accuracy and reward accuracy.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from selfimprove.errors import InputError
from selfimprove.score.extract import answers_equal
from selfimprove.score.rewards import completion_text
from selfimprove.score.vote import Vote, majority_vote

log = logging.getLogger(__name__)


def no_answer_reason(record: Mapping[str, Any]) -> str:
    """Why a scored record has no extracted answer: empty, truncated, generation_error, no_match."""
    if record.get("finish_reason") == "error":
        return "generation_error"
    if not completion_text(record.get("completion")).strip():
        return "empty"
    if record.get("finish_reason") == "length":
        return "truncated"
    return "no_match"


def truncated_vote_share(scored: Sequence[Mapping[str, Any]]) -> float:
    """Share of the votes (samples with an extracted answer) cast by samples cut at max_tokens."""
    votes = [r for r in scored if r.get("extracted") is not None]
    if not votes:
        return 0.0
    return sum(r.get("finish_reason") == "length" for r in votes) / len(votes)


def group_diagnostics(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    answers: Mapping[str, Sequence[str | None]],
    votes: Mapping[str, Vote] | None = None,
) -> dict[str, float]:
    """Label-free statistics of sampled groups: majority ratio, answer entropy, distinct answers, length.

    ``votes`` (prompt id -> the plain majority vote of its answers) saves voting again when the
    caller already has them.

    ``answer_diversity`` is across prompts: distinct majority answers / prompts (prompts whose
    vote has no answer count in the denominator only). It falls when the majority answer stops
    depending on the question (the same answer for every prompt), unlike entropy and distinct
    answers per prompt, which also fall when the policy merely becomes consistent.
    """
    ratios, entropies, distinct, lengths, none, cut = [], [], [], [], 0, 0
    majority_answers: set[str] = set()
    n_samples = 0
    for pid, recs in groups.items():
        vote = votes[pid] if votes is not None else majority_vote(list(answers[pid]))
        ratios.append(vote.majority_ratio)
        entropies.append(vote.entropy())
        distinct.append(vote.n_distinct)
        top = vote.pseudo_label if vote.pseudo_label is not None else (vote.tied[0] if vote.tied else None)
        if top is not None:  # a tie counts its first tied answer (deterministic order)
            majority_answers.add(str(top))
        for rec, ans in zip(recs, answers[pid], strict=True):
            lengths.append(rec.get("completion_tokens") or 0)
            cut += ans is None and no_answer_reason(rec) == "truncated"
        none += sum(a is None for a in answers[pid])
        n_samples += len(answers[pid])
    if not ratios:
        return {}
    return {
        "majority_ratio": sum(ratios) / len(ratios),
        "answer_entropy": sum(entropies) / len(entropies),
        "distinct_answers": sum(distinct) / len(distinct),
        "answer_diversity": len(majority_answers) / len(ratios),
        "mean_length": sum(lengths) / max(1, len(lengths)),
        "no_answer_rate": none / max(1, n_samples),
        # samples without an answer that stopped at max_tokens: the limit is too low for the task
        "truncated_no_answer_rate": cut / max(1, n_samples),
    }


def _stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
    valid = [v for v in values if v is not None]
    if not valid:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "n_none": len(values)}
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid))
    return {
        "mean": mean,
        "std": std,
        "min": min(valid),
        "max": max(valid),
        "n": len(valid),
        "n_none": len(values) - len(valid),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_diagnostics(
    scored: Sequence[Mapping[str, Any]],
    *,
    gold: Mapping[str, Any] | None = None,
    math: bool = False,
) -> dict[str, Any]:
    """Label-free health metrics of scored rollouts; with ``gold`` (evaluation only) accuracies.

    Per-prompt metrics are averaged over prompts. ``label_accuracy`` and ``reward_accuracy`` are
    :func:`selfimprove.eval.label_accuracy` and :func:`selfimprove.eval.reward_accuracy` (the same
    definitions as the loop's ``train/label_accuracy`` and ``train/reward_accuracy``): the share of
    voted prompts whose pseudo-label is correct, and the share of scored samples whose ``reward`` is
    positive exactly when the sample is correct.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for i, rec in enumerate(scored):
        if "prompt_id" not in rec:
            raise InputError(f"scored record {i}: missing field 'prompt_id'")
        groups.setdefault(str(rec["prompt_id"]), []).append(rec)

    reasons: Counter[str] = Counter()
    lengths_chars, lengths_tokens = [], []
    for rec in scored:
        lengths_chars.append(len(completion_text(rec.get("completion"))))
        if isinstance(rec.get("completion_tokens"), int):
            lengths_tokens.append(rec["completion_tokens"])
        if rec.get("extracted") is None:
            reasons[no_answer_reason(rec)] += 1

    answers = {pid: [r.get("extracted") for r in recs] for pid, recs in groups.items()}
    votes = {pid: majority_vote(a) for pid, a in answers.items()}
    shared = group_diagnostics(groups, answers, votes)
    ratios, distinct, zero_signal = [], [], 0
    abstained = 0
    for pid, recs in groups.items():
        vote = votes[pid]
        # the scorer's own fields win (they may cluster math-equivalent answers)
        ratios.append(recs[0].get("majority_ratio", vote.majority_ratio))
        distinct.append(recs[0].get("n_distinct", vote.n_distinct))
        if recs[0].get("pseudo_label", vote.pseudo_label) is None:
            abstained += 1
        rewards = {r.get("reward") for r in recs}
        if len(rewards) <= 1:
            zero_signal += 1  # constant reward in the group: no GRPO advantage

    n = len(scored)
    out: dict[str, Any] = {
        "n_samples": n,
        "n_prompts": len(groups),
        "majority_ratio": _mean(ratios),
        "answer_entropy": shared.get("answer_entropy"),
        "n_distinct": _mean(distinct),
        "answer_diversity": shared.get("answer_diversity"),
        "response_length_chars": _mean(lengths_chars),
        "response_length_tokens": _mean(lengths_tokens),
        "no_answer_rate": sum(reasons.values()) / n if n else None,
        "no_answer_reasons": dict(reasons),
        "truncated_no_answer_rate": shared.get("truncated_no_answer_rate"),
        "abstain_rate": abstained / len(groups) if groups else None,
        "zero_signal_prompt_rate": zero_signal / len(groups) if groups else None,
        "reward": _stats([r.get("reward") for r in scored]),
        "rewards": {},
    }
    names = sorted({k for r in scored for k in (r.get("rewards") or {})})
    for name in names:
        out["rewards"][name] = _stats([(r.get("rewards") or {}).get(name) for r in scored])

    if gold is not None:
        from selfimprove.eval.metrics import label_accuracy, reward_accuracy

        def check(pred: str | None, g: Any) -> bool:
            return answers_equal(pred, g, math=math)

        gold = {str(pid): g for pid, g in gold.items()}
        pseudo = {pid: recs[0].get("pseudo_label", votes[pid].pseudo_label) for pid, recs in groups.items()}
        samples = [(pid, r.get("reward"), r.get("extracted")) for pid, recs in groups.items() for r in recs]
        out["label_accuracy"] = label_accuracy(pseudo, gold, check)
        out["reward_accuracy"] = reward_accuracy(samples, gold, check)
        correct = [
            check(r.get("extracted"), gold[pid]) for pid, recs in groups.items() if pid in gold for r in recs
        ]
        out["sample_accuracy"] = _mean([float(c) for c in correct])
        out["gold_missing_prompts"] = sum(pid not in gold for pid in groups)
    return out
