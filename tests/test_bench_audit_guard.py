"""benchmarks/audit_guard.py: each guard rule re-applied to recorded per-round metrics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from selfimprove.errors import InputError

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "audit_guard.py"


@pytest.fixture(scope="module")
def audit():
    spec = importlib.util.spec_from_file_location("audit_guard", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _round(r, p1, ent, maj=0.5):
    return {
        "round": r,
        "metrics": {
            "eval/pass@1": p1,
            "eval/answer_entropy": ent,
            "eval/majority_ratio": maj,
            "eval/distinct_answers": 3.0,
            "eval/mean_length": 20.0,
            "eval/answer_diversity": 1.0,
        },
    }


def _write(path, runs):
    rows = [{"task": t, "arm": a, "seed": s, **rd} for (t, a, s), rounds in runs.items() for rd in rounds]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_counts_rounds_by_pass1_move_and_dedupes_runs(audit, tmp_path):
    sharpen = [_round(0, 0.40, 1.0), _round(1, 0.60, 0.2), _round(2, 0.605, 0.05)]  # rose, then flat
    stall = [_round(0, 0.40, 1.0), _round(1, 0.35, 0.05)]  # fell
    _write(tmp_path / "a_raw.jsonl", {("sorting", "labelfree", 0): sharpen, ("counting", "gold", 1): stall})
    _write(tmp_path / "b_raw.jsonl", {("sorting", "labelfree", 0): sharpen})  # same run again: counted once
    runs = audit.load_runs(tmp_path)
    assert len(runs) == 2
    counts, misses = audit.audit(runs, tol=1.0)
    assert dict(counts["min_entropy_ratio=0.3"]) == {"rose": 1, "flat": 1, "fell": 1}
    assert dict(counts["min_entropy_ratio=0.1"]) == {"flat": 1, "fell": 1}  # 0.2 is above a 10% floor
    assert sum(counts["min_diversity_ratio=0.5"].values()) == 0
    assert misses["min_entropy_ratio=0.3"] == [
        "a_raw.jsonl counting gold seed 1 round 1: -5.0 vs round 0, -5.0 vs base",
        "a_raw.jsonl sorting labelfree seed 0 round 2: +0.5 vs round 1, +20.5 vs base",
    ]


def test_corrupt_raw_line_names_file_and_line(audit, tmp_path):
    (tmp_path / "x_raw.jsonl").write_text(json.dumps(_round(0, 0.4, 1.0)) + "\n{oops\n")
    with pytest.raises(InputError, match=r"x_raw\.jsonl:2"):
        audit.load_runs(tmp_path)
