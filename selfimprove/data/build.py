"""Training data from scored rollouts: SFT rows, DPO pairs, GRPO prompt sets (pure functions).

Every builder takes scored rollout records (``docs/DESIGN.md``), never mutates them, and returns
``(rows, BuildStats)``. ``BuildStats`` counts what was kept and why the rest was dropped, so a
caller can see *why* a round has no data (e.g. every prompt was unanimous) and skip it, instead
of launching a zero-step "training". Gold-named columns are refused with ``LabelLeakError``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfimprove.errors import ConfigError, InputError
from selfimprove.gold import check_no_gold, check_record_no_gold

SFT_SELECT = ("majority", "verifier", "judge", "reward")
DPO_STRATEGIES = ("majority_vs_minority", "best_vs_worst")
DPO_DEGREES = ("vote_share_gap", "score_gap", None)


@dataclass
class BuildStats:
    """What a builder kept, and how many records/prompts it dropped for each reason."""

    kind: str
    records_in: int = 0
    prompts_in: int = 0
    prompts_kept: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def empty(self) -> bool:
        """True when nothing was kept (the caller should skip training and say why)."""
        return self.kept == 0

    def summary(self) -> str:
        """One line: kept counts and drop reasons, largest first."""
        reasons = ", ".join(f"{k}={v}" for k, v in self.dropped.most_common())
        return (
            f"{self.kind}: kept {self.kept} from {self.records_in} records "
            f"({self.prompts_kept}/{self.prompts_in} prompts); dropped: {reasons or 'none'}"
        )

    def why_empty(self) -> str:
        """A sentence explaining an empty result (empty string when something was kept)."""
        if not self.empty:
            return ""
        if self.records_in == 0:
            return f"{self.kind}: no input records"
        if self.kind == "dpo" and self.dropped.get("no_minority_answer", 0) == self.prompts_in:
            return (
                f"dpo: no prompt has both a majority and a minority answer "
                f"({self.prompts_in} prompts, all unanimous); {self.summary()}"
            )
        return f"{self.kind}: nothing kept; {self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for manifests and logs."""
        return {
            "kind": self.kind,
            "records_in": self.records_in,
            "prompts_in": self.prompts_in,
            "prompts_kept": self.prompts_kept,
            "kept": self.kept,
            "dropped": dict(self.dropped),
        }


def _group(scored: Sequence[Mapping[str, Any]], required: Sequence[str]) -> OrderedDict[str, list]:
    """Validate records and group them by prompt_id (first-seen order), sorted by sample_index."""
    groups: OrderedDict[str, list] = OrderedDict()
    for i, rec in enumerate(scored):
        if not isinstance(rec, Mapping):
            raise InputError(f"scored record {i}: expected a mapping, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise InputError(
                f"scored record {i} (prompt_id={rec.get('prompt_id')!r}): missing field(s) {missing}"
            )
        check_record_no_gold(rec, f"scored record {i} (label-free data builder)")
        groups.setdefault(str(rec["prompt_id"]), []).append(rec)
    for recs in groups.values():
        recs.sort(key=lambda r: r.get("sample_index", 0))
    return groups


def _as_completion(prompt: Any, text: str) -> Any:
    """A completion in the same form as its prompt: text, or an assistant message list (TRL's rule)."""
    if isinstance(prompt, list):
        return [{"role": "assistant", "content": text}]
    return text


def _usable(rec: Mapping[str, Any], stats: BuildStats, drop_truncated: bool) -> bool:
    """False (and counted) for completions cut at max_tokens or failed in the backend."""
    reason = rec.get("finish_reason")
    if reason == "error":
        stats.dropped["generation_error"] += 1
        return False
    if drop_truncated and reason == "length":
        stats.dropped["truncated"] += 1
        return False
    return True


def build_sft_rows(
    scored: Sequence[Mapping[str, Any]],
    *,
    select: str = "majority",
    min_majority_ratio: float = 0.0,
    max_per_prompt: int | None = None,
    dedupe: bool = True,
    min_score: float | None = None,
    verifier_key: str = "verifier",
    drop_truncated: bool = True,
) -> tuple[list[dict[str, Any]], BuildStats]:
    """SFT rows (``prompt``/``completion``) from the rollouts that agree with the vote, pass a verifier, or win.

    ``select``: ``majority`` keeps samples whose extracted answer equals the prompt's pseudo-label;
    ``verifier`` keeps samples whose ``rewards[verifier_key]`` is >= ``min_score`` (default 1.0);
    ``judge`` / ``reward`` keep the top-scoring samples of each prompt by ``judge_score`` / ``reward``
    (and, with ``min_score``, only those at or above it). Prompts whose ``majority_ratio`` is below
    ``min_majority_ratio`` are dropped whole.
    """
    if select not in SFT_SELECT:
        raise ConfigError(f"build_sft_rows: select must be one of {list(SFT_SELECT)}, got {select!r}")
    if not 0.0 <= min_majority_ratio <= 1.0:
        raise ConfigError(f"build_sft_rows: min_majority_ratio must be in [0, 1], got {min_majority_ratio!r}")
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ConfigError(f"build_sft_rows: max_per_prompt must be >= 1 or None, got {max_per_prompt!r}")
    groups = _group(scored, ("prompt_id", "prompt", "completion"))
    stats = BuildStats("sft", records_in=len(scored), prompts_in=len(groups))
    rows: list[dict[str, Any]] = []
    for recs in groups.values():
        if min_majority_ratio > 0:
            ratio = recs[0].get("majority_ratio")
            if ratio is None or ratio < min_majority_ratio:
                stats.dropped["below_majority_ratio"] += len(recs)
                continue
        recs = [r for r in recs if _usable(r, stats, drop_truncated)]
        picked = _select_sft(recs, select, min_score, verifier_key, stats)
        seen: set[str] = set()
        n_kept = 0
        for rec in picked:
            text = rec["completion"]
            key = text.strip()
            if dedupe and key in seen:
                stats.dropped["duplicate"] += 1
                continue
            if max_per_prompt is not None and n_kept >= max_per_prompt:
                stats.dropped["over_max_per_prompt"] += 1
                continue
            seen.add(key)
            rows.append({"prompt": rec["prompt"], "completion": _as_completion(rec["prompt"], text)})
            n_kept += 1
        if n_kept:
            stats.prompts_kept += 1
    stats.kept = len(rows)
    return rows, stats


def _select_sft(
    recs: list, select: str, min_score: float | None, verifier_key: str, stats: BuildStats
) -> list:
    """The records of one prompt that ``select`` keeps; the rest are counted by reason."""
    if select == "majority":
        out = []
        for r in recs:
            label = r.get("pseudo_label")
            if label is None:
                stats.dropped["no_pseudo_label"] += 1
            elif r.get("extracted") is None:
                stats.dropped["no_answer"] += 1
            elif r["extracted"] != label:
                stats.dropped["disagrees_with_majority"] += 1
            else:
                out.append(r)
        return out
    if select == "verifier":
        threshold = 1.0 if min_score is None else min_score
        out = []
        for r in recs:
            value = (r.get("rewards") or {}).get(verifier_key)
            if value is None:
                stats.dropped["no_verifier_score"] += 1
            elif value < threshold:
                stats.dropped["failed_verifier"] += 1
            else:
                out.append(r)
        return out
    key = "judge_score" if select == "judge" else "reward"
    scored = [r for r in recs if r.get(key) is not None]
    stats.dropped[f"no_{key}"] += len(recs) - len(scored)
    if not scored:
        return []
    best = max(r[key] for r in scored)
    out = []
    for r in scored:
        if r[key] < best:
            stats.dropped["not_best"] += 1
        elif min_score is not None and r[key] < min_score:
            stats.dropped["below_min_score"] += 1
        else:
            out.append(r)
    return out


def build_dpo_pairs(
    scored: Sequence[Mapping[str, Any]],
    *,
    strategy: str = "majority_vs_minority",
    min_margin: float = 0.0,
    max_pairs_per_prompt: int = 1,
    degree: str | None = "vote_share_gap",
    score_key: str = "judge_score",
    score_scale: float | None = None,
    drop_truncated: bool = True,
    d2o_positives: int = 0,
) -> tuple[list[dict[str, Any]], BuildStats]:
    """DPO pairs (``prompt``/``chosen``/``rejected`` [+ ``degree`` in [0, 1]]) from scored rollouts.

    ``majority_vs_minority``: chosen agrees with the pseudo-label, rejected gives another answer;
    the margin is the vote-share gap. ``best_vs_worst``: chosen/rejected are the highest/lowest
    ``score_key`` (``judge_score`` or ``reward``) of a prompt; the margin is the score gap.
    Pairs whose margin is below ``min_margin`` are dropped. ``degree``: ``vote_share_gap`` or
    ``score_gap`` (divided by ``score_scale``, default the score range over all records, clipped
    to [0, 1]); None adds no column. ``d2o_positives`` K > 0 adds a ``d2o_positives`` list to
    every pair: up to K further distinct samples of the prompt on the chosen side (same answer as
    the pseudo-label, or the chosen's score), the self-generated positives D2O averages over.
    """
    if strategy not in DPO_STRATEGIES:
        raise ConfigError(
            f"build_dpo_pairs: strategy must be one of {list(DPO_STRATEGIES)}, got {strategy!r}"
        )
    if degree not in DPO_DEGREES:
        raise ConfigError(f"build_dpo_pairs: degree must be one of {list(DPO_DEGREES)}, got {degree!r}")
    if max_pairs_per_prompt < 1:
        raise ConfigError(f"build_dpo_pairs: max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt!r}")
    if not isinstance(d2o_positives, int) or d2o_positives < 0:
        raise ConfigError(f"build_dpo_pairs: d2o_positives must be an integer >= 0, got {d2o_positives!r}")
    if score_key not in ("judge_score", "reward"):
        raise ConfigError(f"build_dpo_pairs: score_key must be 'judge_score' or 'reward', got {score_key!r}")
    groups = _group(scored, ("prompt_id", "prompt", "completion"))
    stats = BuildStats("dpo", records_in=len(scored), prompts_in=len(groups))
    if degree == "score_gap" and score_scale is None:
        values = [r[score_key] for r in scored if r.get(score_key) is not None]
        score_scale = (max(values) - min(values)) if values else 0.0
    pairs: list[dict[str, Any]] = []
    for recs in groups.values():
        recs = [r for r in recs if _usable(r, stats, drop_truncated)]
        if strategy == "majority_vs_minority":
            candidates = _majority_minority(recs, stats)
        else:
            candidates = _best_worst(recs, score_key, stats)
        n_kept = 0
        used: set[tuple[str, str]] = set()
        for chosen, rejected in candidates:
            if strategy == "majority_vs_minority":
                margin = float(chosen.get("vote_share") or 0.0) - float(rejected.get("vote_share") or 0.0)
            else:
                margin = float(chosen[score_key]) - float(rejected[score_key])
            if margin < min_margin:
                stats.dropped["below_margin"] += 1
                continue
            key = (chosen["completion"].strip(), rejected["completion"].strip())
            if key[0] == key[1] or key in used:
                stats.dropped["duplicate"] += 1
                continue
            if n_kept >= max_pairs_per_prompt:
                stats.dropped["over_max_pairs_per_prompt"] += 1
                continue
            used.add(key)
            prompt = chosen["prompt"]
            row = {
                "prompt": prompt,
                "chosen": _as_completion(prompt, chosen["completion"]),
                "rejected": _as_completion(prompt, rejected["completion"]),
            }
            if degree == "vote_share_gap":
                gap = float(chosen.get("vote_share") or 0.0) - float(rejected.get("vote_share") or 0.0)
                row["degree"] = min(max(gap, 0.0), 1.0)
            elif degree == "score_gap":
                gap = float(chosen[score_key]) - float(rejected[score_key])
                row["degree"] = min(max(gap / score_scale, 0.0), 1.0) if score_scale else 0.0
            if d2o_positives:
                row["d2o_positives"] = _positives(recs, chosen, strategy, score_key, d2o_positives)
            pairs.append(row)
            n_kept += 1
        if n_kept:
            stats.prompts_kept += 1
    stats.kept = len(pairs)
    return pairs, stats


def _positives(recs: list, chosen: Mapping[str, Any], strategy: str, score_key: str, k: int) -> list[Any]:
    """Up to ``k`` distinct samples of the prompt on the chosen side, other than the chosen itself."""
    if strategy == "majority_vs_minority":
        same = [
            r for r in recs if r.get("extracted") is not None and r["extracted"] == chosen.get("pseudo_label")
        ]
    else:
        same = [r for r in recs if r.get(score_key) is not None and r[score_key] >= chosen[score_key]]
    seen = {chosen["completion"].strip()}
    out = []
    for r in same:
        text = r["completion"].strip()
        if text in seen:
            continue
        seen.add(text)
        out.append(_as_completion(chosen["prompt"], r["completion"]))
        if len(out) == k:
            break
    return out


def _majority_minority(recs: list, stats: BuildStats) -> list[tuple[dict, dict]]:
    """Candidate pairs (majority sample, minority sample) of one prompt, i-th with i-th."""
    if not recs:
        stats.dropped["no_usable_sample"] += 1
        return []
    label = recs[0].get("pseudo_label")
    if label is None:
        stats.dropped["no_pseudo_label"] += 1
        return []
    majority = [r for r in recs if r.get("extracted") is not None and r["extracted"] == label]
    minority = [r for r in recs if r.get("extracted") is not None and r["extracted"] != label]
    if not majority:
        stats.dropped["no_majority_answer"] += 1
        return []
    if not minority:
        stats.dropped["no_minority_answer"] += 1
        return []
    # Pair each minority answer with a different majority sample, so pairs of a prompt differ.
    return [(majority[i % len(majority)], minority[i]) for i in range(len(minority))]


def _best_worst(recs: list, score_key: str, stats: BuildStats) -> list[tuple[dict, dict]]:
    """Candidate pairs (high score, low score) of one prompt: best vs worst, then next best vs next worst."""
    scored = [r for r in recs if r.get(score_key) is not None]
    if len(scored) < 2:
        stats.dropped[f"fewer_than_two_{score_key}"] += 1
        return []
    ranked = sorted(scored, key=lambda r: r[score_key], reverse=True)
    pairs = []
    for i in range(len(ranked) // 2):
        hi, lo = ranked[i], ranked[-1 - i]
        if hi[score_key] == lo[score_key]:
            stats.dropped["tied_scores"] += 1
            break
        pairs.append((hi, lo))
    return pairs


def build_grpo_prompts(
    records: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] = ("pseudo_label",),
    drop_unanimous: bool = False,
    drop_abstained: bool = True,
) -> tuple[list[dict[str, Any]], BuildStats]:
    """One GRPO row per prompt (``prompt``, ``prompt_id`` and the named ``columns``) from scored rollouts or prompts.

    ``columns`` are looked up on the record, then in its ``meta``. A gold-named column raises
    ``LabelLeakError``. ``drop_unanimous`` drops prompts whose samples all agree
    (``majority_ratio`` == 1), which give zero GRPO advantage. ``drop_abstained`` (default) drops
    prompts where a column is present but None: the vote abstained (``scoring.min_majority_ratio``)
    or found no answer, so a label-agreement reward would give every sample the same value and the
    prompt would only spend generation time.
    """
    columns = tuple(columns)
    check_no_gold(columns, "build_grpo_prompts columns")
    for name in columns:
        if name in ("prompt", "prompt_id"):
            raise ConfigError(
                f"build_grpo_prompts: column {name!r} is always carried; remove it from columns"
            )
    groups = _group(records, ("prompt_id", "prompt"))
    stats = BuildStats("grpo", records_in=len(records), prompts_in=len(groups))
    rows: list[dict[str, Any]] = []
    for pid, recs in groups.items():
        first = recs[0]
        if drop_unanimous and first.get("majority_ratio") is not None and first["majority_ratio"] >= 1.0:
            stats.dropped["unanimous"] += 1
            continue
        row: dict[str, Any] = {"prompt": first["prompt"], "prompt_id": pid}
        missing = False
        for name in columns:
            meta = first.get("meta") or {}
            if name in first:
                row[name] = first[name]
            elif name in meta:
                row[name] = meta[name]
            else:
                missing = True
                break
        if missing:
            raise InputError(
                f"build_grpo_prompts: prompt_id={pid!r} has no column {name!r} (looked in the record and its meta); "
                f"columns asked: {list(columns)}"
            )
        if drop_abstained and any(row[name] is None for name in columns):
            stats.dropped["abstained"] += 1
            continue
        rows.append(row)
    stats.kept = stats.prompts_kept = len(rows)
    return rows, stats
