"""LLM judges over (question, response) pairs, through any Generator backend.

- ``PointwiseJudge``: a rubric score (default: the additive 5-point Self-Rewarding rubric),
  parsed robustly; an unparsable reply is ``None`` and counted, never a score.
- ``PairwiseJudge``: which of two responses better meets the requirements, always asked in both
  orders (AB and BA) so that position bias cancels; ties allowed; in ``logprob`` mode the
  probabilities of the letters A/B/C at the first generated token are compared (robust for weak
  local models), in ``text`` mode the reply is parsed (API models). The result is a soft
  preference in [0, 1] (1 = the first response is better, 0.5 = tie); failures are counted in
  ``stats`` and never counted as a win or a loss.
- ``PairwiseJudge.judge_order``: one order only, one :class:`Verdict` per repeat; set-level
  comparisons (:func:`selfimprove.score.judging.compare_output_sets`) schedule orders with it.
- ``PairwiseJudge.tournament``: each response of a prompt group scored by its mean soft win
  probability against the group's other responses (all of them, or ``opponents`` seeded ones).
- ``aggregate_judgements``: soft averages over repetitions and over several judges.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError, InputError
from selfimprove.generate.base import Completion, Sampling
from selfimprove.registry import build_registered

# prompts/ at the repository root (beside the package in a source checkout / editable install).
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
# Also searched, in this order after an explicit path: $SELFIMPROVE_PROMPTS_DIR, PROMPTS_DIR, and
# selfimprove/prompts inside the package (where a wheel would carry them).
_PACKAGE_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
# Judge replies are parsed from their last characters only (bounded time on run-away replies).
_MAX_REPLY = 4096


def load_prompt(name_or_path: str | Path) -> str:
    """Text of a prompt template: a name in prompts/ (without .txt) or a file path."""
    p = Path(name_or_path)
    dirs = [Path(d) for d in [os.environ.get("SELFIMPROVE_PROMPTS_DIR")] if d]
    dirs += [PROMPTS_DIR, _PACKAGE_PROMPTS]
    candidates = [p] if p.suffix else [*(d / f"{name_or_path}.txt" for d in dirs), p]
    for c in candidates:
        if c.is_file():
            return c.read_text(encoding="utf-8")
    raise ConfigError(
        f"prompt template {str(name_or_path)!r} not found (looked in {', '.join(str(c) for c in candidates)})"
    )


def _template_text(template: str) -> str:
    """A template given by name/path, or inline (anything containing a '{' placeholder)."""
    if "{" in template:
        return template
    return load_prompt(template)


def _fill(template: str, where: str, **fields: str) -> str:
    """str.format with a clear error for a missing placeholder (user data is never formatted)."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"{where}: template placeholder {exc} unknown; available: {', '.join('{' + k + '}' for k in fields)}"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"{where}: malformed template ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None


# Numbers are bounded (\d{1,6}) and must start a digit run ((?<![\d.])): linear time on digit floods.
_NUM = r"(?<![\d.])(-?\d{1,6}(?:\.\d{1,6})?)(?![\d.]\d)"
_SCORE_PATTERNS = [
    re.compile(r"score\s{0,4}(?:is|of|=|:)?\s{0,4}:?\s{0,4}\**\s{0,2}" + _NUM, re.IGNORECASE),
    re.compile(_NUM + r"\s{0,4}(?:/|out of)\s{0,4}(\d{1,6})(?!\d)", re.IGNORECASE),
    re.compile(r"(?:rating|points?|total)\s{0,4}(?:is|=|:)?\s{0,4}" + _NUM, re.IGNORECASE),
]


def parse_score(text: str, *, min_score: float = 0, max_score: float = 5) -> float | None:
    """The judge's score from a reply ("Score: 4", "4/5", "**Score**: 4", a bare "4"), else None.

    The last match of the most specific pattern wins; a value outside [min_score, max_score] or a
    "x/y" with y != max_score is rejected.
    """
    if not isinstance(text, str):
        return None
    t = text[-_MAX_REPLY:].replace("*", "")
    for i, rx in enumerate(_SCORE_PATTERNS):
        last = None
        for last in rx.finditer(t):  # noqa: B007 - keep the last match
            pass
        if last is None:
            continue
        if i == 1 and float(last.group(2)) != max_score:
            continue
        value = float(last.group(1))
        return value if min_score <= value <= max_score else None
    bare = t.strip().rstrip(".")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", bare):
        value = float(bare)
        return value if min_score <= value <= max_score else None
    return None


# Letters are matched case-sensitively: a lowercase "a" is usually the article, not a verdict.
_VERDICT = re.compile(r"(?:^|[^A-Za-z])(A|B|C|(?i:tie))(?:[^A-Za-z]|$)")
_NAMED = re.compile(
    r"(?i:response|answer|verdict|winner|choice)\s{0,4}(?i:is|:)?\s{0,4}\[{0,2}\s{0,2}(A|B|C)\b"
)
_LEADING = re.compile(r"\W{0,4}(A|B|C|(?i:tie))\b")
_TIE_WORDS = re.compile(r"\b(?:tie|equally good|both are equal)\b", re.IGNORECASE)


_CHOOSE_TAG = re.compile(r"<choose>\s{0,8}\[?(A|B|C|(?i:tie))\]?\.?\s{0,8}</choose>")


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a pairwise reply ("A", "[[B]]", "Response A is better", "Tie",
    "<analyse>...</analyse><choose>B</choose>"), else None.

    A ``<choose>`` tag (the last one) decides when present; a reply whose tag holds anything
    else is unparsable, never read from its free text.
    """
    if not isinstance(text, str):
        return None
    t = text[-_MAX_REPLY:].strip()
    if not t:
        return None
    if "<choose>" in t:
        tags = _CHOOSE_TAG.findall(t)
        if not tags:
            return None
        letter = tags[-1].upper()
        return "tie" if letter in ("C", "TIE") else letter
    m = _NAMED.search(t) or _LEADING.match(t)
    if m is None and len(t) <= 40:
        m = _VERDICT.search(t)
    if m is None:
        return "tie" if _TIE_WORDS.search(t) else None
    letter = m.group(1).upper()
    return "tie" if letter in ("C", "TIE") else letter


@dataclass
class PointwiseJudgement:
    """One response's judgement: the mean parsed score (None when every repeat failed)."""

    score: float | None
    scores: list[float | None]
    n_failed: int
    replies: list[str] = field(default_factory=list)


class PointwiseJudge:
    """Rubric scoring of (question, response) pairs by an LLM (Self-Rewarding LMs).

    ``template`` is a prompt name/path or inline text with ``{question}`` and ``{response}``.
    ``stats`` counts calls, parsed replies, unparsable replies and backend errors.
    """

    def __init__(
        self,
        generator: Any,
        template: str = "judge_pointwise_additive",
        *,
        n_repeats: int = 1,
        min_score: float = 0,
        max_score: float = 5,
        sampling: Sampling | None = None,
        adapter: str | None = None,
        progress: bool = False,
    ) -> None:
        if n_repeats < 1:
            raise ConfigError(f"judge n_repeats must be >= 1, got {n_repeats!r}")
        self.generator = generator
        self.template = _template_text(template)
        self.n_repeats = n_repeats
        self.min_score, self.max_score = min_score, max_score
        self.sampling = sampling or Sampling(
            n=n_repeats, temperature=0.0 if n_repeats == 1 else 0.7, max_tokens=256
        )
        if self.sampling.n != n_repeats:
            raise ConfigError(f"judge sampling.n ({self.sampling.n}) must equal n_repeats ({n_repeats})")
        self.adapter = adapter
        self.progress = progress  # a progress bar from the generator on long judging runs
        self.stats: Counter[str] = Counter()

    def judge(self, questions: Sequence[str], responses: Sequence[str]) -> list[PointwiseJudgement]:
        """Judge each (question, response) pair ``n_repeats`` times."""
        if len(questions) != len(responses):
            raise InputError(f"judge: {len(questions)} questions but {len(responses)} responses")
        prompts = [
            [{"role": "user", "content": _fill(self.template, "pointwise judge", question=q, response=r)}]
            for q, r in zip(questions, responses, strict=True)
        ]
        if not prompts:
            return []
        outputs = self.generator.generate(
            prompts, self.sampling, adapter=self.adapter, progress=self.progress
        )
        results = []
        for comps in outputs:
            scores: list[float | None] = []
            for c in comps:
                self.stats["calls"] += 1
                if c.finish_reason == "error":
                    self.stats["errors"] += 1
                    scores.append(None)
                    continue
                s = parse_score(c.text, min_score=self.min_score, max_score=self.max_score)
                self.stats["parsed" if s is not None else "unparsable"] += 1
                scores.append(s)
            valid = [s for s in scores if s is not None]
            results.append(
                PointwiseJudgement(
                    score=sum(valid) / len(valid) if valid else None,
                    scores=scores,
                    n_failed=len(scores) - len(valid),
                    replies=[c.text for c in comps],
                )
            )
        return results

    def score(self, questions: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        """Mean score per pair (None when no repeat could be parsed)."""
        return [j.score for j in self.judge(questions, responses)]

    def report(self) -> dict[str, float]:
        """Counts plus the parse-failure rate."""
        calls = self.stats["calls"]
        counts = {k: self.stats[k] for k in ("calls", "parsed", "unparsable", "errors")}
        return {
            **counts,
            **self.stats,
            "failure_rate": (calls - self.stats["parsed"]) / calls if calls else 0.0,
        }


@dataclass
class PairwiseJudgement:
    """Both-order judgement of one pair: ``preference`` = P(first response is better)."""

    preference: float | None
    # preference for the first response from the AB order and from the BA order (None: failed)
    p_ab: float | None
    p_ba: float | None
    # same winner in both orders (None when an order failed)
    consistent: bool | None
    n_failed: int


@dataclass
class Verdict:
    """One judge reply in one order: P(the response shown first is better), None when it failed."""

    p_first: float | None
    completion: Completion


# The verdict letters whose probabilities logprob mode compares (C = tie).
LETTERS = ("A", "B", "C")


def pairwise_sampling(
    mode: str = "text",
    n_repeats: int = 1,
    top_logprobs: int = 20,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
) -> Sampling:
    """The replies a pairwise judge asks for (its default, and the loop's seeded variant).

    ``logprob``: the verdict letter is the first generated token; greedy unless ``temperature``
    says otherwise; its top-k distribution is read, and the letters themselves are asked for (a
    weak model may rank them below the top-k; backends that cannot honour it still return the
    top-k). ``text``: a short verdict, greedy for one repeat, at temperature 0.7 for several.
    """
    logprob = mode == "logprob"
    if temperature is None:
        temperature = 0.0 if logprob or n_repeats == 1 else 0.7
    return Sampling(
        n=n_repeats,
        temperature=temperature,
        max_tokens=max_tokens if max_tokens is not None else (1 if logprob else 64),
        logprobs=top_logprobs if logprob else None,
        logprob_tokens=LETTERS if logprob else (),
        seed=seed,
    )


def check_opponents(opponents: Any) -> None:
    """Raise ConfigError unless ``opponents`` is ``"all"`` or an integer >= 1."""
    if isinstance(opponents, bool) or not (
        opponents == "all" or (isinstance(opponents, int) and opponents >= 1)
    ):
        raise ConfigError(f"pairwise judge opponents must be 'all' or an integer >= 1, got {opponents!r}")


def _letter_probs(logprobs: dict[str, float]) -> dict[str, float]:
    """Probabilities of A, B, C from a top-k {token: logprob} dict (token variants summed)."""
    out = {"A": 0.0, "B": 0.0, "C": 0.0}
    for tok, lp in logprobs.items():
        key = tok.strip().strip("[(*")
        if key in out and lp is not None and not math.isnan(lp):
            out[key] += math.exp(lp)
    return out


def _winner(p: float) -> str:
    return "A" if p > 0.5 else ("B" if p < 0.5 else "tie")


class PairwiseJudge:
    """Which of two responses better meets ``requirements``; both orders, soft result, ties."""

    def __init__(
        self,
        generator: Any,
        requirements: str = "Answer the question correctly, helpfully and concisely.",
        template: str = "judge_pairwise",
        *,
        mode: str = "text",
        n_repeats: int = 1,
        sampling: Sampling | None = None,
        adapter: str | None = None,
        top_logprobs: int = 20,
        progress: bool = False,
    ) -> None:
        if mode not in ("text", "logprob"):
            raise ConfigError(f"pairwise judge mode must be 'text' or 'logprob', got {mode!r}")
        if n_repeats < 1:
            raise ConfigError(f"judge n_repeats must be >= 1, got {n_repeats!r}")
        self.generator = generator
        self.requirements = requirements
        self.template = _template_text(template)
        self.mode = mode
        self.n_repeats = n_repeats
        if sampling is None:
            sampling = pairwise_sampling(mode, n_repeats, top_logprobs)
        if mode == "logprob" and not sampling.logprobs:
            raise ConfigError("pairwise judge mode 'logprob' needs sampling.logprobs >= 1")
        self.sampling = sampling
        self.adapter = adapter
        self.progress = progress  # a progress bar from the generator on long judging runs
        self.stats: Counter[str] = Counter()
        # sum of P(first position wins) over parsed calls: measures position bias
        self._first_pos_sum = 0.0

    def messages(self, question: str, first: str, second: str) -> list[dict[str, str]]:
        """The chat messages sent to the judge for one pair in one order (``first`` shown as A)."""
        return self._prompt(question, first, second)

    def _prompt(self, question: str, first: str, second: str) -> list[dict[str, str]]:
        text = _fill(
            self.template,
            "pairwise judge",
            requirements=self.requirements,
            question=question,
            response_a=first,
            response_b=second,
        )
        return [{"role": "user", "content": text}]

    def _first_preference(self, c: Completion) -> float | None:
        """P(the response shown first is better) from one reply; None (counted) on failure."""
        self.stats["calls"] += 1
        if c.finish_reason == "error":
            self.stats["errors"] += 1
            return None
        if self.mode == "logprob":
            probs = _letter_probs(c.logprobs[0]) if c.logprobs else {"A": 0.0, "B": 0.0, "C": 0.0}
            total = probs["A"] + probs["B"] + probs["C"]
            if probs["A"] + probs["B"] > 0:
                self.stats["logprob"] += 1
                return (probs["A"] + 0.5 * probs["C"]) / total
            # neither letter in the top-k: fall back to the generated text (counted)
            self.stats["logprob_fallback"] += 1
        verdict = parse_verdict(c.text)
        if verdict is None:
            self.stats["unparsable"] += 1
            return None
        self.stats["parsed_text"] += 1
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[verdict]

    def compare(
        self, questions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[PairwiseJudgement]:
        """Judge each pair in both orders and combine into P(response A is better)."""
        if not len(questions) == len(responses_a) == len(responses_b):
            raise InputError(
                f"pairwise judge: {len(questions)} questions, {len(responses_a)} A responses, "
                f"{len(responses_b)} B responses"
            )
        n = len(questions)
        if n == 0:
            return []
        firsts = list(responses_a) + list(responses_b)
        seconds = list(responses_b) + list(responses_a)
        verdicts = self.judge_order(list(questions) * 2, firsts, seconds)
        results = []
        for i in range(n):
            ab = [v.p_first for v in verdicts[i]]
            # in the BA order the first position holds response B: P(A better) = 1 - P(first better)
            ba = [None if v.p_first is None else 1.0 - v.p_first for v in verdicts[n + i]]
            p_ab = _mean(ab)
            p_ba = _mean(ba)
            valid = [p for p in (p_ab, p_ba) if p is not None]
            pref = sum(valid) / len(valid) if valid else None
            consistent = None
            if p_ab is not None and p_ba is not None:
                consistent = _winner(p_ab) == _winner(p_ba)
                self.stats["both_orders"] += 1
                self.stats["consistent"] += int(consistent)
            elif valid:
                self.stats["one_order_only"] += 1
            else:
                self.stats["failed_pairs"] += 1
            if pref is not None and pref == 0.5:
                self.stats["ties"] += 1
            self.stats["pairs"] += 1
            results.append(
                PairwiseJudgement(
                    preference=pref,
                    p_ab=p_ab,
                    p_ba=p_ba,
                    consistent=consistent,
                    n_failed=sum(p is None for p in ab + ba),
                )
            )
        return results

    def judge_order(
        self,
        questions: Sequence[str],
        firsts: Sequence[str],
        seconds: Sequence[str],
        *,
        sampling: Sampling | None = None,
    ) -> list[list[Verdict]]:
        """Judge each pair in ONE order (``firsts[i]`` shown as A): a :class:`Verdict` per repeat.

        The building block of :meth:`compare` and of set-level comparisons that schedule the
        orders themselves. ``sampling`` (default: the judge's) may change the seed of a retry.
        Failures are counted in ``stats`` and give ``p_first=None``. Position bias is not
        cancelled here: a caller that wants it cancelled asks both orders.
        """
        if not len(questions) == len(firsts) == len(seconds):
            raise InputError(
                f"pairwise judge: {len(questions)} questions, {len(firsts)} first and "
                f"{len(seconds)} second responses"
            )
        if not questions:
            return []
        prompts = [self._prompt(q, a, b) for q, a, b in zip(questions, firsts, seconds, strict=True)]
        outputs = self.generator.generate(
            prompts, sampling or self.sampling, adapter=self.adapter, progress=self.progress
        )
        result = []
        for comps in outputs:
            row = []
            for c in comps:
                p = self._first_preference(c)
                if p is not None:
                    self._first_pos_sum += p
                row.append(Verdict(p, c))
            result.append(row)
        return result

    def preferences(
        self, questions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float | None]:
        """P(A better) per pair (None when every call failed)."""
        return [j.preference for j in self.compare(questions, responses_a, responses_b)]

    def tournament(
        self,
        questions: Sequence[str],
        groups: Sequence[Sequence[str]],
        *,
        opponents: int | str = "all",
        seeds: Sequence[Any] | None = None,
    ) -> list[list[float | None]]:
        """Score every response of each group against the group's other responses.

        ``groups[g]`` are the responses to ``questions[g]``. Pairs come from
        :func:`opponent_pairs` (seeded per group by ``seeds[g]``, default the group index) and are
        judged in one batch, each in both orders. A response's score is its mean soft win
        probability over its comparisons that did not fail (a failed pair counts neither as a
        win nor as a loss); a response with no valid comparison (a group of one, or every
        judgement failed) gets None and is counted in ``stats["unscored_responses"]``.
        """
        if len(questions) != len(groups):
            raise InputError(f"pairwise tournament: {len(questions)} questions but {len(groups)} groups")
        if seeds is not None and len(seeds) != len(groups):
            raise InputError(f"pairwise tournament: {len(seeds)} seeds but {len(groups)} groups")
        qs: list[str] = []
        first: list[str] = []
        second: list[str] = []
        index: list[tuple[int, int, int]] = []
        for g, (q, responses) in enumerate(zip(questions, groups, strict=True)):
            seed = g if seeds is None else seeds[g]
            for i, j in opponent_pairs(len(responses), opponents, seed=seed):
                qs.append(q)
                first.append(responses[i])
                second.append(responses[j])
                index.append((g, i, j))
        prefs = self.preferences(qs, first, second) if qs else []
        wins = [[0.0] * len(r) for r in groups]
        counts = [[0] * len(r) for r in groups]
        for (g, i, j), p in zip(index, prefs, strict=True):
            if p is None:
                continue
            wins[g][i] += p
            wins[g][j] += 1.0 - p
            counts[g][i] += 1
            counts[g][j] += 1
        out = [
            [w / c if c else None for w, c in zip(ws, cs, strict=True)]
            for ws, cs in zip(wins, counts, strict=True)
        ]
        self.stats["tournament_responses"] += sum(len(r) for r in groups)
        self.stats["unscored_responses"] += sum(v is None for row in out for v in row)
        return out

    def report(self) -> dict[str, float]:
        """Counts plus position consistency, parse-failure rate and first-position win rate."""
        s = self.stats
        parsed = s["logprob"] + s["parsed_text"]
        keys = ("calls", "logprob", "logprob_fallback", "parsed_text", "unparsable", "errors", "pairs")
        keys += ("both_orders", "consistent", "one_order_only", "failed_pairs", "ties")
        return {
            **{k: s[k] for k in keys},
            **s,
            "position_consistency": s["consistent"] / s["both_orders"] if s["both_orders"] else float("nan"),
            "failure_rate": (s["calls"] - parsed) / s["calls"] if s["calls"] else 0.0,
            "first_position_preference": self._first_pos_sum / parsed if parsed else float("nan"),
        }


def opponent_pairs(n: int, opponents: int | str = "all", *, seed: Any = 0) -> list[tuple[int, int]]:
    """Unordered pairs ``(i, j)``, ``i < j``, of ``n`` responses to compare with each other.

    ``opponents="all"`` (or any N >= n - 1): every pair. An integer N caps the comparisons: the
    responses are shuffled (``random.Random(seed)``, deterministic) and each meets the N
    neighbours of a circulant schedule (offsets 1..N//2 both ways, plus the opposite response
    when N is odd), so every response meets exactly N opponents, except that when N and n are
    both odd one response meets N + 1.
    """
    check_opponents(opponents)
    if n < 2:
        return []
    if opponents == "all" or opponents >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    order = list(range(n))
    random.Random(seed if isinstance(seed, (int, str)) else str(seed)).shuffle(order)
    pairs: set[tuple[int, int]] = set()

    def add(a: int, b: int) -> None:
        pairs.add((min(a, b), max(a, b)))

    for d in range(1, opponents // 2 + 1):
        for i in range(n):
            add(order[i], order[(i + d) % n])
    if opponents % 2:
        half = n // 2
        for i in range(half):
            add(order[i], order[i + half])
        if n % 2:  # the response left without a partner meets the middle one
            add(order[n - 1], order[half])
    return sorted(pairs)


def _mean(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def aggregate_judgements(
    judgements: Sequence[Sequence[float | None]], weights: Sequence[float] | None = None
) -> list[float | None]:
    """Soft (weighted) average per item over several judges or repetitions, skipping failures.

    ``judgements[j][i]`` is judge j's score/preference for item i; None (a failure) is left out,
    never counted as 0 or 1. An item no judge could score stays None.
    """
    if not judgements:
        return []
    n = len(judgements[0])
    for j, row in enumerate(judgements):
        if len(row) != n:
            raise InputError(f"aggregate_judgements: judge {j} has {len(row)} items, judge 0 has {n}")
    weights = list(weights) if weights is not None else [1.0] * len(judgements)
    if len(weights) != len(judgements) or any(w < 0 for w in weights):
        raise InputError("aggregate_judgements: one non-negative weight per judge")
    out: list[float | None] = []
    for i in range(n):
        num = den = 0.0
        for row, w in zip(judgements, weights, strict=True):
            v = row[i]
            if v is not None and not math.isnan(v):
                num += w * v
                den += w
        out.append(num / den if den > 0 else None)
    return out


# kind -> judge class (configs name judges by kind; options are the constructor's keywords)
JUDGES: dict[str, type] = {"pointwise": PointwiseJudge, "pairwise": PairwiseJudge}


def get_judge(kind: str, generator: Any, **options: Any) -> PointwiseJudge | PairwiseJudge:
    """Build a judge by kind ("pointwise" | "pairwise") on any Generator."""
    return build_registered("judge", JUDGES, kind, generator, **options)
