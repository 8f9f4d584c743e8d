"""Set-level pairwise comparison: is output set B better than output set A on the same questions?

Used by the prompt optimizer (incumbent prompt's answers vs a challenger's) and by anything else
that compares two systems on one question set without references. What makes it sound:

- the judge sees only what its template shows (for the bundled templates: the requirements,
  the question and the two answers), never how the answers were produced;
- ``orders="both"``: every comparison is asked with A first and with B first, and an item counts
  only when both orders gave a verdict, so a judge's position bias cancels instead of being
  shuffled (``"one_random"``, one order drawn at random per call, is kept for comparison with
  published loops that do that);
- ``repeats``: each repeat is a separate call (seeded ``seed + repeat``); ties are allowed
  (a verdict of C, or equal letter probabilities, is 0.5);
- a failed call (backend error, unparsable reply) is retried up to ``max_attempts`` times with a
  new seed, counted, and when it keeps failing the item is left out: never a win, never a loss.

``unit="question"`` judges each question's two answers; ``unit="set"`` puts all questions and
both answer sets into one judgement (one item), as set-level judges in the literature do.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfimprove.errors import BackendError, ConfigError, InputError
from selfimprove.score.judges import PairwiseJudge

ORDERS = ("both", "one_random")
UNITS = ("question", "set")


@dataclass
class OrderCall:
    """One judge call: which answer was shown first, and what came back."""

    item: int
    repeat: int
    order: str  # "AB" (set A's answer shown first) or "BA"
    attempt: int
    p_first: float | None  # P(the answer shown first is better); None: the call failed
    reply: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def p_b(self) -> float | None:
        """P(set B's answer is better) from this call."""
        if self.p_first is None:
            return None
        return 1.0 - self.p_first if self.order == "AB" else self.p_first


@dataclass
class ItemJudgement:
    """The judgement of one item (a question, or the whole set with ``unit="set"``)."""

    item: int
    preference_b: float | None  # P(B better) in [0, 1]; 0.5 = tie; None: not judged (failures)
    p_b_ab: float | None  # mean over repeats with A shown first
    p_b_ba: float | None  # mean over repeats with B shown first
    consistent: bool | None  # the same winner in both orders (None unless both orders judged)


@dataclass
class SetComparison:
    """Set A vs set B: the mean preference for B over the judged items, and what it cost."""

    preference_b: float | None  # mean of the items' preferences; None when no item was judged
    items: list[ItemJudgement]
    calls: list[OrderCall] = field(default_factory=list)
    orders: str = "both"
    unit: str = "question"

    @property
    def judged(self) -> int:
        """Items with a preference (both orders answered, in ``orders="both"``)."""
        return sum(j.preference_b is not None for j in self.items)

    @property
    def wins_b(self) -> int:
        """Items whose preference favours B."""
        return sum(j.preference_b is not None and j.preference_b > 0.5 for j in self.items)

    @property
    def wins_a(self) -> int:
        """Items whose preference favours A."""
        return sum(j.preference_b is not None and j.preference_b < 0.5 for j in self.items)

    @property
    def ties(self) -> int:
        """Items judged exactly even."""
        return sum(j.preference_b == 0.5 for j in self.items)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and reports (calls, failures, retries, tokens, consistency)."""
        failed = [c for c in self.calls if c.p_first is None]
        valid = [c.p_first for c in self.calls if c.p_first is not None]
        both = [j for j in self.items if j.consistent is not None]
        return {
            "preference_b": self.preference_b,
            "items": len(self.items),
            "judged": self.judged,
            "wins_b": self.wins_b,
            "wins_a": self.wins_a,
            "ties": self.ties,
            "calls": len(self.calls),
            "failed_calls": len(failed),
            "retried_calls": sum(c.attempt > 0 for c in self.calls),
            "prompt_tokens": sum(c.prompt_tokens for c in self.calls),
            "completion_tokens": sum(c.completion_tokens for c in self.calls),
            "position_consistency": sum(j.consistent for j in both) / len(both) if both else None,
            "first_position_preference": sum(valid) / len(valid) if valid else None,
            "orders": self.orders,
            "unit": self.unit,
        }


def set_item(questions: Sequence[str], answers: Sequence[str]) -> tuple[str, str]:
    """The (question, answer) texts of a whole question set judged as one item."""
    q = "\n\n".join(f"Question {i}: {text}" for i, text in enumerate(questions, 1))
    a = "\n\n".join(f"Answer to question {i}: {text}" for i, text in enumerate(answers, 1))
    return q, a


def _mean(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def compare_output_sets(
    judge: PairwiseJudge,
    questions: Sequence[str],
    outputs_a: Sequence[str],
    outputs_b: Sequence[str],
    *,
    orders: str = "both",
    unit: str = "question",
    repeats: int = 1,
    max_attempts: int = 3,
    seed: int = 0,
) -> SetComparison:
    """Compare answer set B with answer set A on the same ``questions`` (see the module docstring).

    Returns a :class:`SetComparison` whose ``preference_b`` is the mean P(B better) over the
    judged items (0.5 = even), with every call (order, repeat, attempt, reply, tokens) kept.
    """
    if orders not in ORDERS:
        raise ConfigError(f"orders must be one of {', '.join(ORDERS)}, got {orders!r}")
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if repeats < 1 or max_attempts < 1:
        raise ConfigError(f"repeats and max_attempts must be >= 1, got {repeats} and {max_attempts}")
    if not len(questions) == len(outputs_a) == len(outputs_b):
        raise InputError(
            f"compare_output_sets: {len(questions)} questions, {len(outputs_a)} A outputs, "
            f"{len(outputs_b)} B outputs"
        )
    if unit == "set":
        q, a = set_item(questions, outputs_a)
        _, b = set_item(questions, outputs_b)
        items = [(q, a, b)] if questions else []
    else:
        items = list(zip(questions, outputs_a, outputs_b, strict=True))
    rng = random.Random(seed)
    # (item, repeat, order) jobs; one_random draws one order per item and repeat, up front
    jobs: list[tuple[int, int, str]] = []
    for r in range(repeats):
        for i in range(len(items)):
            if orders == "both":
                jobs += [(i, r, "AB"), (i, r, "BA")]
            else:
                jobs.append((i, r, rng.choice(("AB", "BA"))))
    calls: list[OrderCall] = []
    finished: dict[tuple[int, int, str], list[OrderCall]] = {}
    pending = jobs
    for attempt in range(max_attempts):
        if not pending:
            break
        retry: list[tuple[int, int, str]] = []
        # one batch per repeat: each repeat has its own seed (identical prompts in one batch
        # would get identical samples on a seeded engine)
        for r in sorted({job[1] for job in pending}):
            batch = [job for job in pending if job[1] == r]
            sampling = dataclasses.replace(judge.sampling, seed=seed + 1000 * attempt + r)
            qs = [items[i][0] for i, _r, _o in batch]
            firsts = [items[i][1] if o == "AB" else items[i][2] for i, _r, o in batch]
            seconds = [items[i][2] if o == "AB" else items[i][1] for i, _r, o in batch]
            try:
                verdicts = judge.judge_order(qs, firsts, seconds, sampling=sampling)
            except BackendError as exc:
                judge.stats["errors"] += len(batch) * sampling.n
                judge.stats["calls"] += len(batch) * sampling.n
                for i, rr, o in batch:
                    for _ in range(sampling.n):
                        calls.append(OrderCall(i, rr, o, attempt, None, "", error=str(exc)))
                retry += batch
                continue
            for (i, rr, o), row in zip(batch, verdicts, strict=True):
                made = [
                    OrderCall(
                        i,
                        rr,
                        o,
                        attempt,
                        v.p_first,
                        v.completion.text,
                        v.completion.prompt_tokens,
                        v.completion.completion_tokens,
                        (v.completion.extra.get("error") or "backend error")
                        if v.completion.finish_reason == "error"
                        else None,
                    )
                    for v in row
                ]
                calls += made
                if any(c.p_first is not None for c in made):
                    finished[(i, rr, o)] = made
                else:
                    retry.append((i, rr, o))
        pending = retry
    judgements = []
    for i in range(len(items)):
        by_order = {
            o: _mean([c.p_b for (ii, _r, oo), cs in finished.items() if ii == i and oo == o for c in cs])
            for o in ("AB", "BA")
        }
        p_ab, p_ba = by_order["AB"], by_order["BA"]
        if orders == "both":
            # both orders or nothing: one order alone would let position bias decide
            pref = (p_ab + p_ba) / 2 if p_ab is not None and p_ba is not None else None
        else:
            pref = _mean([c.p_b for (ii, _r, _o), cs in finished.items() if ii == i for c in cs])
        consistent = None
        if p_ab is not None and p_ba is not None and orders == "both":
            consistent = (p_ab > 0.5) == (p_ba > 0.5) and (p_ab < 0.5) == (p_ba < 0.5)
        judgements.append(ItemJudgement(i, pref, p_ab, p_ba, consistent))
    valid = [j.preference_b for j in judgements if j.preference_b is not None]
    return SetComparison(
        preference_b=sum(valid) / len(valid) if valid else None,
        items=judgements,
        calls=calls,
        orders=orders,
        unit=unit,
    )


__all__ = [
    "ORDERS",
    "UNITS",
    "ItemJudgement",
    "OrderCall",
    "SetComparison",
    "compare_output_sets",
    "set_item",
]


# ---------------------------------------------------------------------------------------------
# Judging the rollouts of a round (self-rewarding)
# ---------------------------------------------------------------------------------------------


def prompt_text(prompt: Any) -> str:
    """The question of a prompt: the text, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt[-1].get("content", ""))


def build_rollout_judge(
    kind: str,
    generator: Any,
    options: Mapping[str, Any] | None = None,
    *,
    adapter: str | None = None,
    seed: int = 0,
    progress: bool = False,
    where: str = "judge options",
) -> tuple[Any, Any]:
    """A pointwise or pairwise judge from plain options (as a YAML config gives them); returns (judge, opponents).

    ``options`` are the judge's constructor keywords plus ``max_tokens`` and ``temperature`` (the
    judge's sampling, built here: a YAML file cannot build a ``Sampling``) and, pairwise,
    ``opponents`` (``"all"`` or a number of opponents per rollout). A pairwise judge samples seeded
    with ``seed``. An unknown option is a ConfigError that starts with ``where``.
    """
    from selfimprove.generate.base import Sampling
    from selfimprove.score.judges import PointwiseJudge, pairwise_sampling

    if kind not in ("pointwise", "pairwise"):
        raise ConfigError(f"judge kind must be 'pointwise' or 'pairwise', got {kind!r}")
    options = dict(options or {})
    opponents = options.pop("opponents", "all")
    sampling_keys = {k: options.pop(k) for k in ("max_tokens", "temperature") if k in options}
    n = int(options.get("n_repeats", 1))
    if kind == "pairwise":
        # Always built here: seeded (reproducible sampled judgements); the judge's own sampling
        # otherwise (letters and top-k log-probabilities in logprob mode).
        options["sampling"] = pairwise_sampling(
            n_repeats=n,
            temperature=sampling_keys.get("temperature", 0.0 if n == 1 else 0.7),
            max_tokens=sampling_keys.get("max_tokens"),
            seed=seed,
            **{k: options[k] for k in ("mode", "top_logprobs") if k in options},
        )
    elif sampling_keys:
        options["sampling"] = Sampling(
            n=n,
            temperature=sampling_keys.get("temperature", 0.0 if n == 1 else 0.7),
            max_tokens=sampling_keys.get("max_tokens", 256),
        )
    cls = PairwiseJudge if kind == "pairwise" else PointwiseJudge
    try:
        judge = cls(generator, adapter=adapter, progress=progress, **options)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return judge, opponents


def judge_rollouts(
    judge: Any,
    rollouts: Sequence[Mapping[str, Any]],
    *,
    opponents: int | str = "all",
    seed: Any = 0,
) -> tuple[list[float | None], dict[str, Any]]:
    """Judge scores of rollout records (``prompt_id``, ``prompt``, ``completion``), in rollout order, and the judge's report.

    A pointwise judge scores each rollout on its rubric. A pairwise judge scores each rollout by its
    mean soft win probability against the other rollouts of the same prompt (``opponents`` per
    rollout, both orders judged, failures left out; None without a valid comparison); ``seed``
    fixes which opponents are drawn (with the prompt id). The report holds the judge's counts
    (failure rate, position consistency, ...; NaN as None) and ``scored_rate``.
    """
    if isinstance(judge, PairwiseJudge):
        # Groups of one prompt's rollouts (in sample order); scores mapped back to rollout order.
        groups: dict[str, list[int]] = {}
        for k, x in enumerate(rollouts):
            groups.setdefault(str(x["prompt_id"]), []).append(k)
        for idx in groups.values():
            idx.sort(key=lambda k: rollouts[k].get("sample_index", 0))
        pids = list(groups)
        table = judge.tournament(
            [prompt_text(rollouts[groups[p][0]]["prompt"]) for p in pids],
            [[rollouts[k]["completion"] for k in groups[p]] for p in pids],
            opponents=opponents,
            seeds=[f"{seed}|{p}" for p in pids],
        )
        scores: list[float | None] = [None] * len(rollouts)
        for p, row in zip(pids, table, strict=True):
            for k, v in zip(groups[p], row, strict=True):
                scores[k] = v
        kind = "pairwise"
    else:
        scores = list(
            judge.score([prompt_text(x["prompt"]) for x in rollouts], [x["completion"] for x in rollouts])
        )
        kind = "pointwise"
    report: dict[str, Any] = {"kind": kind}
    for key, value in judge.report().items():
        report[key] = None if isinstance(value, float) and math.isnan(value) else value
    report["scored_rate"] = sum(v is not None for v in scores) / len(scores) if scores else 0.0
    return scores, report
