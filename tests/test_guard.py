"""Collapse guard rules and the label-free best-round choice, as tables."""

from __future__ import annotations

import pytest

from selfimprove.loop.config import GuardConfig
from selfimprove.loop.guard import (
    DISTINCT,
    DIVERSITY,
    ENTROPY,
    LENGTH,
    MAJORITY,
    NO_ANSWER,
    best_round,
    check_collapse,
    guard_settings,
)

REF = {MAJORITY: 0.5, ENTROPY: 1.0, DISTINCT: 3.0, LENGTH: 40.0, DIVERSITY: 0.8, NO_ANSWER: 0.02}
ON = {"min_entropy_ratio": 0.3, "min_distinct_ratio": 0.3}  # the two opt-in rules, at the old defaults


def _m(**kw):
    out = dict(REF)
    keys = {
        "maj": MAJORITY,
        "ent": ENTROPY,
        "dis": DISTINCT,
        "len": LENGTH,
        "div": DIVERSITY,
        "na": NO_ANSWER,
    }
    for k, v in kw.items():
        out[keys[k]] = v
    return out


# (current diagnostics, settings, expected collapsed, substrings of the reasons)
CASES = [
    (_m(), {}, False, []),
    (_m(maj=0.8, ent=0.6, dis=2.0, len=35.0), {}, False, []),  # healthy sharpening
    (_m(ent=0.2), {}, False, []),  # entropy rule off by default: sharpening is the goal
    (_m(dis=0.6), {}, False, []),  # distinct-per-prompt rule off by default
    (_m(ent=0.2), ON, True, ["answer entropy fell to 20%"]),
    (_m(ent=0.31), ON, False, []),  # just above the 30% floor
    (_m(dis=0.6), ON, True, ["distinct answers per prompt fell to 20%"]),
    (_m(maj=0.995), {}, True, ["majority ratio saturated at 0.995"]),
    (_m(maj=0.995), {"max_majority_ratio": 0.999}, False, []),
    (_m(len=10.0), {}, True, ["mean completion length fell to 25%"]),
    (_m(len=130.0), {}, True, ["grew to 3.2x"]),
    (_m(len=130.0), {"max_length_ratio": None}, False, []),
    (
        _m(div=0.2),
        {},
        True,
        ["distinct majority answers across prompts fell to 25%"],
    ),  # same answer everywhere
    (_m(div=0.41), {}, False, []),  # just above half of round 0's
    (_m(div=0.3), {"min_diversity_ratio": None}, False, []),
    (_m(ent=0.2, div=0.8), {"min_entropy_ratio": 0.1}, False, []),  # consistent, still question-dependent
    (_m(maj=1.0, ent=0.0, dis=0.5, len=8.0), ON, True, ["entropy", "distinct", "saturated", "length fell"]),
    (_m(maj=1.0, ent=0.0, dis=0.5, len=8.0), {}, True, ["saturated", "length fell"]),
    # The model stops answering: 2% -> 25% of samples without an answer (limit +15 points).
    (_m(na=0.25), {}, True, ["samples without an answer rose from 2% to 25%"]),
    (_m(na=0.16), {}, False, []),  # +14 points: within the limit
    (_m(na=0.25), {"max_no_answer_increase": None}, False, []),
]


@pytest.mark.parametrize("current,settings,collapsed,reasons", CASES)
def test_check_collapse(current, settings, collapsed, reasons):
    d = check_collapse(REF, current, round=3, **settings)
    assert d.collapsed is collapsed and d.round == 3
    assert len(d.reasons) == len(reasons)
    for needle, reason in zip(reasons, d.reasons, strict=True):
        assert needle in reason


def test_saturated_base_is_not_collapse():
    """A base model that already agrees with itself has not collapsed through training."""
    ref = _m(maj=1.0)
    assert not check_collapse(ref, _m(maj=1.0)).collapsed


def test_missing_or_zero_reference_turns_rule_off():
    assert not check_collapse({MAJORITY: 0.4, ENTROPY: 0.0}, {MAJORITY: 0.5, ENTROPY: 0.0}).collapsed
    assert not check_collapse({}, _m(ent=0.0, dis=0.0, len=1.0)).collapsed


def test_defaults_do_not_flag_measured_sharpening():
    """Sorting, TTRL seed 2, round 2 (benchmarks/results/selftrain_grpo_sorting_guard030_raw.jsonl):
    pass@1 rose 77.1 -> 86.7 while entropy fell to 29% of the base model's; the old 30% floor stopped
    the run there. With the defaults of both check_collapse and GuardConfig it is healthy."""
    base = {MAJORITY: 0.618, ENTROPY: 0.922, DISTINCT: 3.305, LENGTH: 27.84, DIVERSITY: 0.995}
    sharpened = {MAJORITY: 0.897, ENTROPY: 0.264, DISTINCT: 1.655, LENGTH: 27.844, DIVERSITY: 0.995}
    assert not check_collapse(base, sharpened).collapsed
    assert not check_collapse(base, sharpened, **guard_settings(GuardConfig())).collapsed
    assert check_collapse(base, sharpened, **ON).collapsed  # what the old defaults did


def test_guard_settings_from_config():
    cfg = GuardConfig(min_entropy_ratio=0.5, max_length_ratio=None)
    s = guard_settings(cfg)
    assert s["min_entropy_ratio"] == 0.5 and s["max_length_ratio"] is None
    assert check_collapse(REF, _m(ent=0.4), **s).collapsed


# (history as (round, majority ratio), collapsed rounds, expected best round)
BEST = [
    ([(0, 0.5), (1, 0.7), (2, 0.8)], [], 2),
    ([(0, 0.5), (1, 0.7), (2, 0.99)], [2], 1),  # the saturated round was flagged
    ([(0, 0.5), (1, 0.4)], [], 0),  # training made it worse: the base model wins
    ([(0, 0.5), (1, 0.7), (2, 0.7)], [], 1),  # ties go to the earlier round
    ([(0, 0.5)], [0], None),
    ([], [], None),
]


@pytest.mark.parametrize("hist,collapsed,expected", BEST)
def test_best_round(hist, collapsed, expected):
    history = [{"round": r, MAJORITY: v} for r, v in hist]
    best, score = best_round(history, collapsed)
    assert best == expected
    if expected is not None:
        assert score == dict(hist)[expected]


def test_best_round_ignores_gold_metrics():
    """Gold-based accuracy is in the metrics but the choice must not depend on it."""
    history = [
        {"round": 0, MAJORITY: 0.5, "eval/pass@1": 0.9, "train/label_accuracy": 1.0},
        {"round": 1, MAJORITY: 0.6, "eval/pass@1": 0.1, "train/label_accuracy": 0.0},
    ]
    assert best_round(history)[0] == 1
    history[1]["eval/pass@1"] = 0.99
    assert best_round(history)[0] == 1


def test_answer_diversity_counts_majority_answers_across_prompts():
    """Distinct majority answers / prompts: ties count their first tied answer, no-answer prompts only the denominator."""
    from selfimprove.score.diagnostics import group_diagnostics as diagnostics

    answers = {
        "a": ["1", "1", "2"],  # majority 1
        "b": ["2", "2", "2"],  # majority 2
        "c": ["1", "1", None],  # majority 1 again: same answer for a different question
        "d": [None, None, None],  # no answer
        "e": ["3", "4", None],  # tie: first of the tied answers
    }
    groups = {pid: [{"completion_tokens": 4}] * len(a) for pid, a in answers.items()}
    d = diagnostics(groups, answers)
    assert d["answer_diversity"] == pytest.approx(3 / 5)
    collapsed = {pid: ["7"] * 3 for pid in answers}  # one answer for every question
    d2 = diagnostics(groups, collapsed)
    assert d2["answer_diversity"] == pytest.approx(1 / 5)
    assert d2["answer_entropy"] == 0.0
    ref = {DIVERSITY: d["answer_diversity"]}
    assert check_collapse(ref, {DIVERSITY: d2["answer_diversity"]}).collapsed


def test_check_collapse_defaults_are_the_config_defaults():
    """`check_collapse` called without thresholds applies exactly the loop's default guard: its
    keyword defaults and `GuardConfig`'s field defaults cannot drift apart (every rule, by name)."""
    import inspect

    params = inspect.signature(check_collapse).parameters
    config_defaults = guard_settings(GuardConfig())
    rules = {name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    rules.pop("round")
    assert rules == config_defaults
