"""benchmarks/bench_preference.py: its method table validates as configs, and its tables read run folders right."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(_DIR))  # it imports from bench_selftrain, as a script does
    try:
        spec = importlib.util.spec_from_file_location("bench_preference", _DIR / "bench_preference.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(_DIR))
        sys.modules.pop("bench_selftrain", None)


def _args(tmp_path: Path, **more) -> argparse.Namespace:
    base = {
        "config": str(_DIR.parent / "configs" / "sc_dpo.yaml"),
        "families": ["string_ops"],
        "methods": ["sc_dpo", "dpo_spo_paper", "d2o", "ttrl_grpo"],
        "seeds": [0, 1],
        "rounds": 1,
        "train_size": 16,
        "eval_size": 16,
        "n": 4,
        "dpo_lr": 5e-4,
        "run_root": str(tmp_path),
    }
    return argparse.Namespace(**{**base, **more})


def test_every_method_is_a_valid_label_free_config(bench, tmp_path):
    args = _args(tmp_path, families=["string_ops", "arithmetic"], methods=list(bench.METHODS), seeds=[0])
    jobs = bench.plan(args)
    assert len(jobs) == 2 * len(bench.METHODS)
    by = {(j.task, j.arm): j for j in jobs}
    assert by[("arithmetic", "ttrl_grpo")].method == "grpo" and by[("arithmetic", "sft")].method == "sft"
    assert all(by[("string_ops", m)].method == "dpo" for m in bench.PREFERENCE)
    # Same budget: every method of a family shares the task, sampling and evaluation overrides.
    shared = set(bench.common_overrides("string_ops", 0, args))
    assert all(shared <= set(by[("string_ops", m)].overrides) for m in bench.METHODS)
    assert len({j.fingerprint for j in jobs}) == len(jobs)


def test_gold_twins_are_the_supervised_analogues_of_their_label_free_methods(bench, tmp_path):
    args = _args(tmp_path, methods=["sft", "sc_dpo", "ttrl_grpo", *bench.GOLD_TWINS], seeds=[0])
    by = {j.arm: j for j in bench.plan(args)}
    from selfimprove.loop.config import load_config

    for twin, method in bench.GOLD_TWINS.items():
        lf, gold = (load_config(args.config, by[m].overrides) for m in (method, twin))
        assert not lf.supervised and gold.supervised, twin
        assert [r.name for r in gold.scoring.rewards] == ["gold_verifier"]
        assert by[twin].overrides[: len(by[method].overrides)] == by[method].overrides  # same budget
        assert gold.training.method == lf.training.method and by[twin].run_dir.name == twin
    sft = load_config(args.config, by["sft_gold"].overrides)
    assert sft.data.sft["select"] == "verifier" and sft.data.sft["verifier_key"] == "gold_verifier"
    dpo = load_config(args.config, by["dpo_gold"].overrides)
    assert dpo.data.dpo["strategy"] == "best_vs_worst" and dpo.data.dpo["score_key"] == "reward"
    assert "SUPERVISED" in bench.describe("dpo_gold") and "SUPERVISED" not in bench.describe("sc_dpo")


def _run(root: Path, method: str, seed: int, p1: list[float], logps: dict | None = None) -> None:
    d = root / "string_ops" / f"s{seed}" / method
    d.mkdir(parents=True)
    lines = [
        {"round": r, "eval/pass@1": v, "eval/maj@4": v + 0.1, "eval/pass@4": 0.9, "time/train": 10.0 + r}
        for r, v in enumerate(p1)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (d / "state.json").write_text(json.dumps({"finished": True}))
    if logps:
        (d / "round_01" / "adapter").mkdir(parents=True)
        (d / "round_01" / "adapter" / "train_result.json").write_text(json.dumps({"history": logps}))


def test_tables_from_run_folders(bench, tmp_path):
    history = {
        "logps/chosen": [-10.0, -11.0, -12.0],
        "logps/rejected": [-20.0, -25.0, -30.0],
        # beta 0.1: log pi - log pi_ref of the last 3 steps average 0.3 (chosen), -1.0 (rejected)
        "rewards/chosen": [0.0, 0.0, 0.02, 0.03, 0.04],
        "rewards/rejected": [0.0, -0.1, -0.1, -0.1, -0.1],
    }
    _run(tmp_path, "sc_dpo", 0, [0.5, 0.6], history)
    _run(tmp_path, "sc_dpo", 1, [0.4, 0.6], {**history, "logps/chosen": [-8.0, -9.0, -10.0]})
    _run(tmp_path, "ttrl_grpo", 0, [0.5, 0.55])
    args = _args(tmp_path)
    recs = bench.collect(bench.plan(args))
    assert len(recs) == 6
    text = "\n".join(bench.task_section(recs, "string_ops", args.methods, 4))
    # Round 1 of sc_dpo: pass@1 60.0 ± 0.0, gain mean of +10 and +20 points, sd 7.1.
    assert "| sc_dpo | 1 | 2 | 60.0 ± 0.0 | 70.0 ± 0.0 | 90.0 ± 0.0 | 15.0 ± 7.1 |" in text
    assert "| ttrl_grpo | 1 | 1 | 55.0 | 65.0 | 90.0 | 5.0 |" in text
    # Same-batch change +0.30 / -1.00 (margin +1.30); first/last: chosen -9 -> -11 (mean of seeds), rejected -20 -> -30.
    assert "| sc_dpo | 1 | +0.30 | -1.00 | +1.30 | -9.00 | -11.00 | -20.00 | -30.00 |  |" in text
    assert "| ttrl_grpo | 1 | -" not in text  # GRPO has no pairs
