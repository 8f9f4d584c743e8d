"""Evaluation metrics: tables of inputs and expected outputs."""

from __future__ import annotations

from math import comb

import pytest

from selfimprove.eval.metrics import (
    evaluate_answers,
    maj_at_k,
    majority_answer,
    pass_at_1,
    pass_at_k,
    pass_at_k_estimate,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (8, 0, 1, 0.0),
        (8, 8, 1, 1.0),
        (8, 2, 1, 0.25),
        (8, 1, 8, 1.0),
        (8, 0, 8, 0.0),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 5, 1 - comb(7, 5) / comb(10, 5)),
        (5, 4, 2, 1.0),  # n - c < k: every pair holds a correct sample
    ],
)
def test_pass_at_k_estimate_table(n, c, k, expected):
    assert pass_at_k_estimate(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (8, 9, 1), (8, -1, 1), (8, 1, 0)])
def test_pass_at_k_estimate_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k_estimate(n, c, k)


def test_pass_at_k_matches_brute_force_subsets():
    from itertools import combinations

    row = [True, False, False, True, False]
    subsets = list(combinations(row, 3))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k([row], 3) == pytest.approx(brute)


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        ([[True, False], [False, False]], 0.25),
        ([[True, True, True, False]], 0.75),
        ([[True], [False], [True]], 2 / 3),
        ([[False] * 8, [True] * 8], 0.5),
    ],
)
def test_pass_at_1_table(correct, expected):
    assert pass_at_1(correct) == pytest.approx(expected)


def test_pass_at_k_averages_over_prompts_and_needs_n_at_least_k():
    rows = [[True, False, False, False], [False] * 4]
    assert pass_at_k(rows, 2) == pytest.approx(0.5 * 0.5)
    with pytest.raises(ValueError, match="prompt 1"):
        pass_at_k([[True, True], [False]], 2)
    with pytest.raises(ValueError, match="no prompts"):
        pass_at_1([])


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["3", "4", "3"], "3"),
        (["4", "3", "3", "4"], "4"),  # tie: the first seen wins
        ([None, None, "7"], "7"),  # samples without an answer do not vote
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_answer_table(answers, expected):
    assert majority_answer(answers) == expected


def test_maj_at_k_uses_first_k_samples_and_checker():
    answers = [["1", "2", "2", "2"], ["5", "5", "6", "6"], [None, "9", None, None]]
    gold = ["1", "6", "9"]
    # k=1: only the first sample votes -> right, wrong, abstain
    assert maj_at_k(answers, gold, 1) == pytest.approx(1 / 3)
    # k=4: 2 wins, 5 wins the tie (first), 9 -> only the last prompt is right
    assert maj_at_k(answers, gold, 4) == pytest.approx(1 / 3)
    assert maj_at_k(answers, gold, 3) == pytest.approx(1 / 3)
    assert maj_at_k([["A"]], ["a"], 1, check=lambda p, g: p is not None and p.lower() == g) == 1.0
    with pytest.raises(ValueError, match="only 1 samples"):
        maj_at_k([["1"]], ["1"], 2)
    with pytest.raises(ValueError, match="gold"):
        maj_at_k([["1"]], ["1", "2"], 1)


def test_evaluate_answers_all_metrics():
    answers = {"a": ["1", "1", "2", None], "b": ["3", "4", "4", "4"]}
    gold = {"a": "1", "b": "3"}
    m = evaluate_answers(answers, gold, lambda p, g: p == g, ks=(4,))
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["answer_rate"] == pytest.approx(7 / 8)
    assert m["n_prompts"] == 2
    assert m["constant_baseline"] == pytest.approx(0.5)  # "1" or "3": each is right on one prompt of two
    with pytest.raises(ValueError, match="no gold"):
        evaluate_answers({"zz": ["1"]}, gold, lambda p, g: p == g, ks=(1,))


def test_constant_baseline_is_the_most_common_gold_share():
    """A model that always says "2" scores exactly the constant baseline, whatever it samples."""
    gold = {f"p{i}": g for i, g in enumerate(["2", "2", "2", "1", "0", "2", "3", "1"])}
    answers = {pid: ["2"] * 4 for pid in gold}
    m = evaluate_answers(answers, gold, lambda p, g: p == g, ks=(4,))
    assert m["constant_baseline"] == pytest.approx(4 / 8)
    assert m["pass@1"] == pytest.approx(m["constant_baseline"])
