"""Score rollouts: extracted answers, per-prompt vote fields, reward terms and their weighted sum.

``score_rollouts`` turns rollout records into "Scored rollout records" (docs/DESIGN.md); the
self-training loop's score stage calls it, and so can a script.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from selfimprove.errors import InputError
from selfimprove.gold import check_record_no_gold
from selfimprove.score.extract import answers_equal, get_extractor
from selfimprove.score.rewards import completion_text, pseudo_label_reward
from selfimprove.score.vote import majority_vote

log = logging.getLogger(__name__)

RewardSpec = Any  # a reward function, or (reward function, weight)


def _reward_terms(rewards: Any) -> list[tuple[str, Callable[..., Any], float]]:
    """Normalise the rewards argument to (name, function, weight) triples with unique names."""
    if isinstance(rewards, Mapping):
        items = [
            (name, *(spec if isinstance(spec, tuple) else (spec, 1.0))) for name, spec in rewards.items()
        ]
    else:
        items = []
        for spec in rewards:
            fn, w = spec if isinstance(spec, tuple) else (spec, 1.0)
            items.append((getattr(fn, "__name__", type(fn).__name__), fn, w))
    names = [n for n, _f, _w in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"score_rollouts: reward names must be unique, repeated: {dup} (set name=...)")
    return [(n, f, float(w)) for n, f, w in items]


def score_rollouts(
    rollouts: Sequence[Mapping[str, Any]],
    extractor: Any = "last_number",
    rewards: Any = None,
    *,
    extractor_options: Mapping[str, Any] | None = None,
    math: bool = False,
    min_valid: int = 1,
    min_share: float = 0.0,
    tie_break: str = "first",
    judge_scores: Sequence[float | None] | None = None,
    vote_truncated: bool = True,
) -> list[dict[str, Any]]:
    """Scored rollout records (docs/DESIGN.md) from rollout records; inputs are not modified.

    The vote runs per ``prompt_id`` over all its samples; its pseudo-label is handed to the
    rewards as the ``pseudo_label`` column, so the default reward (agreement with the vote, named
    ``majority_vote``) and any ``pseudo_label`` reward are exact. ``rewards`` is a list of reward
    functions or (function, weight) pairs, or a name -> function/(function, weight) mapping;
    ``reward`` is their weighted sum over the terms that could score (None if none could).
    Meta fields present on every record are passed to the rewards as columns, so a gold field in
    ``meta`` raises LabelLeakError in any label-free reward.

    ``vote_truncated=False``: a sample cut at max_tokens (``finish_reason`` "length") counts as
    giving no answer: ``extracted`` None (it does not vote), every reward term None, and
    ``truncated_excluded`` True.
    """
    ex = get_extractor(extractor, **dict(extractor_options or {}))
    if rewards is None:
        rewards = [pseudo_label_reward(extractor=ex, math=math, name="majority_vote")]
    terms = _reward_terms(rewards)
    ours = {"min_valid": min_valid, "min_share": min_share, "tie_break": tie_break}
    for name, fn, _w in terms:
        theirs = getattr(fn, "vote_options", None)
        if isinstance(theirs, dict) and (theirs != ours or getattr(fn, "math", math) != math):
            # an online-voting reward with other options can reward a group whose pseudo_label is None
            log.warning(
                "reward %r votes with %s (math=%s) but score_rollouts with %s (math=%s): its rewards may "
                "disagree with the records' pseudo_label; pass the same options or use 'pseudo_label'",
                name,
                theirs,
                getattr(fn, "math", None),
                ours,
                math,
            )
    if judge_scores is not None and len(judge_scores) != len(rollouts):
        raise InputError(f"judge_scores has {len(judge_scores)} values for {len(rollouts)} rollouts")

    records: list[dict[str, Any]] = []
    for i, r in enumerate(rollouts):
        if not isinstance(r, Mapping):
            raise InputError(f"rollout {i}: expected a record (mapping), got {type(r).__name__}")
        for key in ("prompt_id", "completion"):
            if key not in r:
                raise InputError(f"rollout {i}: missing field {key!r}")
        check_record_no_gold(r, f"rollout {i} (label-free scoring)")
        rec = dict(r)
        rec["extracted"] = ex(completion_text(r["completion"]))
        if not vote_truncated and r.get("finish_reason") == "length":
            # An answer read from an unfinished completion (often a cut reasoning): left out.
            rec["extracted"] = None
            rec["truncated_excluded"] = True
        records.append(rec)

    equal = (lambda a, b: answers_equal(a, b, math=True)) if math else None
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(str(rec["prompt_id"]), []).append(i)
    for idx in groups.values():
        vote = majority_vote(
            [records[i]["extracted"] for i in idx],
            min_valid=min_valid,
            min_share=min_share,
            tie_break=tie_break,
            equal=equal,
        )
        for j, i in enumerate(idx):
            records[i]["pseudo_label"] = vote.pseudo_label
            records[i]["vote_share"] = vote.share_of(j)
            records[i]["majority_ratio"] = vote.majority_ratio
            records[i]["n_distinct"] = vote.n_distinct

    columns: dict[str, list[Any]] = {
        "prompts": [rec.get("prompt", "") for rec in records],
        "prompt_id": [str(rec["prompt_id"]) for rec in records],
        "pseudo_label": [rec["pseudo_label"] for rec in records],
    }
    meta_keys = None
    for rec in records:
        keys = set(rec.get("meta") or {}) if isinstance(rec.get("meta"), Mapping) else set()
        meta_keys = keys if meta_keys is None else meta_keys & keys
    for key in sorted(meta_keys or ()):
        if key not in columns:
            columns[key] = [rec["meta"][key] for rec in records]
    completions = [rec["completion"] for rec in records]

    per_term: dict[str, list[float | None]] = {}
    for name, fn, _w in terms:
        values = list(fn(completions, **columns)) if records else []
        if len(values) != len(records):
            raise InputError(f"reward {name!r} returned {len(values)} values for {len(records)} rollouts")
        per_term[name] = [
            None if v is None or (isinstance(v, float) and math_isnan(v)) else float(v) for v in values
        ]
    for i, rec in enumerate(records):
        if rec.get("truncated_excluded"):
            for name, _f, _w in terms:
                per_term[name][i] = None
        rec["rewards"] = {name: per_term[name][i] for name, _f, _w in terms}
        valid = [(w, per_term[name][i]) for name, _f, w in terms if per_term[name][i] is not None]
        rec["reward"] = sum(w * v for w, v in valid) if valid else None
        if judge_scores is not None:
            rec["judge_score"] = judge_scores[i]
    return records


def math_isnan(v: float) -> bool:
    """NaN check that tolerates non-floats."""
    try:
        return math.isnan(v)
    except TypeError:
        return False
