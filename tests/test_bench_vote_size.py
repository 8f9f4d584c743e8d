"""The arithmetic of benchmarks/bench_vote_size.py (pure Python; the engine part runs as a benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(_DIR))  # it imports machine_info from bench_selftrain, as a script does
    try:
        spec = importlib.util.spec_from_file_location("bench_vote_size", _DIR / "bench_vote_size.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(_DIR))
        sys.modules.pop("bench_selftrain", None)


def test_vote_sizes_are_powers_of_two_up_to_the_sample_count(bench):
    assert bench.vote_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bench.vote_sizes(40) == [1, 2, 4, 8, 16, 32, 40]


def test_groups_are_disjoint_and_scored_against_gold(bench):
    answers = ["3", "3", "4", "4", "4", "3", "4", None]  # gold "3"
    correct = [a == "3" for a in answers]
    right = lambda a: a == "3"  # noqa: E731
    # n=2 -> groups (3,3) (4,4) (4,3) (4,None); labels 3 (right), 4, 4 (a tie goes to the first), 4
    s = bench.group_scores(answers, correct, 2, right)
    assert s["label"] == pytest.approx(1 / 4)
    assert s["unanimous"] == pytest.approx(2 / 4)
    # a sample's reward is right when agreeing with the label == being correct:
    # (3,3) 2/2, (4,4) 0/2, (4,3) 0/2, (4,None) 1/2 (None neither agrees nor is correct)
    assert s["reward"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    # n=8: one group voting 4 (four 4s against three 3s): wrong; only the None's reward is right
    s8 = bench.group_scores(answers, correct, 8, right)
    assert (s8["label"], s8["reward"], s8["unanimous"]) == (0.0, pytest.approx(1 / 8), 0.0)
    # the same samples grouped by 1: each sample is its own vote (label accuracy = pass@1)
    assert bench.group_scores(answers, correct, 1, right)["label"] == pytest.approx(3 / 8)
