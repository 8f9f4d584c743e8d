"""Majority vote: pseudo-label, shares, ties, abstention, TTRL subsampling."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfimprove.score.extract import answers_equal
from selfimprove.score.vote import majority_vote, pseudo_labels, vote_groups, vote_then_subsample


def test_basic_vote_fields():
    v = majority_vote(["4", "4", "5", None, "4", "6"])
    assert v.pseudo_label == "4"
    assert v.shares == {"4": 3 / 6, "5": 1 / 6, "6": 1 / 6}
    assert v.majority_ratio == pytest.approx(0.5)
    assert (v.n_distinct, v.n_valid, v.n_total) == (3, 5, 6)
    assert not v.tie and not v.abstained and v.reason is None
    assert [v.agrees(i) for i in range(6)] == [True, True, False, False, True, False]
    assert v.share_of(2) == pytest.approx(1 / 6) and v.share_of(3) == 0.0


TIES = [
    ("first", ["9", "2", "2", "9"], "9", False),
    ("smallest", ["9", "2", "2", "9"], "2", False),
    ("smallest", ["10", "9", "10", "9"], "9", False),  # numbers compare by value, not as text
    ("smallest", ["b", "a"], "a", False),
    ("abstain", ["9", "2", "2", "9"], None, True),
]


@pytest.mark.parametrize("rule,answers,label,abstained", TIES)
def test_tie_breaking(rule, answers, label, abstained):
    v = majority_vote(answers, tie_break=rule)
    assert v.tie is True
    assert sorted(v.tied) == sorted(set(answers))
    assert v.pseudo_label == label
    assert v.abstained is abstained
    assert v.reason == ("tie" if abstained else None)


ABSTAIN = [
    ([], {}, "empty_group"),
    ([None, None], {}, "no_answers"),
    (["3", None, None, None], {"min_valid": 2}, "too_few_valid"),
    (["3", "3", "4", None, None], {"min_share": 0.5}, "below_min_share"),
]


@pytest.mark.parametrize("answers,opts,reason", ABSTAIN)
def test_abstention(answers, opts, reason):
    v = majority_vote(answers, **opts)
    assert v.pseudo_label is None and v.abstained and v.reason == reason
    assert not any(v.agrees(i) for i in range(len(answers)))


def test_equal_clusters_math_answers():
    eq = functools.partial(answers_equal, math=True)
    v = majority_vote(["1/2", "0.5", "\\frac{1}{2}", "3", "3"], equal=eq)
    assert v.pseudo_label == "1/2"
    assert v.n_distinct == 2
    assert v.assignments == ["1/2", "1/2", "1/2", "3", "3"]
    # without the comparator the strings are different answers and "3" wins
    assert majority_vote(["1/2", "0.5", "\\frac{1}{2}", "3", "3"]).pseudo_label == "3"


def test_entropy():
    assert majority_vote(["a", "a"]).entropy() == 0.0
    assert majority_vote(["a", "b"]).entropy() == pytest.approx(0.6931, abs=1e-4)
    assert majority_vote([None]).entropy() == 0.0


def test_bad_options():
    with pytest.raises(ValueError, match="tie_break"):
        majority_vote(["a"], tie_break="random")
    with pytest.raises(ValueError, match="min_share"):
        majority_vote(["a"], min_share=2)


def test_vote_groups_and_pseudo_labels():
    votes = vote_groups(["1", "1", "2", "x", "y", "y"], ["p", "p", "p", "q", "q", "q"])
    assert {k: v.pseudo_label for k, v in votes.items()} == {"p": "1", "q": "y"}
    with pytest.raises(ValueError, match="differ in length"):
        vote_groups(["1"], ["p", "q"])
    assert pseudo_labels({"a": ["1", "2", "2"], "b": [None]}) == {"a": "2", "b": None}


def test_vote_then_subsample():
    answers = ["7"] * 40 + ["8"] * 24
    vote, idx = vote_then_subsample(answers, 16, seed=3)
    assert vote.pseudo_label == "7" and vote.n_total == 64
    assert len(idx) == 16 and idx == sorted(set(idx)) and all(0 <= i < 64 for i in idx)
    assert vote_then_subsample(answers, 16, seed=3)[1] == idx  # reproducible
    assert vote_then_subsample(answers, 100)[1] == list(range(64))
    with pytest.raises(ValueError):
        vote_then_subsample(answers, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "x"])), max_size=20))
def test_vote_properties(answers):
    v = majority_vote(answers)
    assert v.n_total == len(answers)
    assert v.n_valid == sum(a is not None for a in answers)
    assert sum(v.shares.values()) == pytest.approx(v.n_valid / len(answers) if answers else 0.0)
    if v.pseudo_label is not None:
        assert v.shares[v.pseudo_label] == max(v.shares.values())
        assert v.majority_ratio == v.shares[v.pseudo_label]
    # deterministic
    assert majority_vote(list(answers)).to_dict() == v.to_dict()
