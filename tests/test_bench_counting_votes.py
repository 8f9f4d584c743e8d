"""The label-free vote variants of benchmarks/bench_counting_votes.py (pure Python; the engine part
runs as a benchmark)."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(_DIR))  # it imports machine_info from bench_selftrain, as a script does
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_counting_votes", _DIR / "bench_counting_votes.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(_DIR))
        sys.modules.pop("bench_selftrain", None)


def test_a_permuted_view_asks_the_same_question(bench):
    from selfimprove.tasks import get_task

    task = get_task("counting", instruction=True)
    prompts, _ = task.make_split("train", 20, seed=3, level=2)
    rng = random.Random(0)
    changed = 0
    for p in prompts:
        text = p["prompt"][0]["content"]
        view = bench.permute(text, rng)
        word, new = (bench._WORD.search(t).group(1) for t in (text, view))
        assert Counter(word) == Counter(new)  # every letter's count, so the answer, is kept
        assert view.replace(new, word) == text  # nothing else in the question changes
        changed += new != word
    assert changed >= 18
    with pytest.raises(ValueError, match="not a counting question"):
        bench.permute("Sort 3, 1, 2.", rng)


def test_listed_matches_and_weighted_vote(bench):
    assert bench.listed_matches("Matches: a, a, a. The answer is 3.") == 3
    assert bench.listed_matches("Matches: none. The answer is 0.") == 0
    assert bench.listed_matches("The answer is 2.") is None
    # "4" has two votes but less weight than the single, far more probable "3"; None never wins
    assert bench.weighted_vote(["4", "3", "4", None], [0.1, 0.5, 0.1, 9.0]) == "3"
    assert bench.weighted_vote(["4", "3", "4"], [0.2, 0.3, 0.2]) == "4"
    assert bench.weighted_vote([None, None], [1.0, 1.0]) is None


def test_render_reports_each_variant_against_the_shipped_vote(bench):
    rows = [
        {
            "model": "m",
            "seed": s,
            "prompts": 8,
            "variant": name,
            "pass@1": 0.5,
            "label_accuracy": acc + s / 100,
        }
        for s in (0, 1)
        for name, acc in zip(
            [v for v, _ in bench.VARIANTS],
            [0.5, 0.6, 0.7, 0.72, 0.7, 0.71, 0.6, 0.65, 0.68, 0.7],
            strict=True,
        )
    ]
    meta = {
        "command": "c",
        "start": "s",
        "end": "e",
        "load_start": "0",
        "load_end": "0",
        "machine": {"nproc": 2, "cpu": "x", "gpus": "none"},
    }
    md = bench.render(rows, meta)
    assert "| vote of 32 (T=1) | 70.5 ± 0.7 | +0.0 |" in md
    assert "| 4 permuted views x 8, pooled | 65.5 ± 0.7 | -5.0 |" in md
    assert "| vote of 8 (T=1) | 50.5 ± 0.7 | -20.0 | TTRL with n=8 |" in md
