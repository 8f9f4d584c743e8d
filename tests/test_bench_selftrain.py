"""The arithmetic and Markdown of benchmarks/bench_selftrain.py (pure Python, no runs)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_selftrain.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_selftrain", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_selftrain"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_selftrain", None)


def _rec(seed, arm, rnd, p1, best=None, **more):
    m = {"round": rnd, "eval/pass@1": p1, "time/generate": 2.0, "time/evaluate": 1.5, **more}
    return {
        "task": "counting",
        "seed": seed,
        "arm": arm,
        "round": rnd,
        "finished": True,
        "best_round": best,
        "stopped": None,
        "metrics": m,
    }


def _records():
    # labelfree: s0 0.20 -> 0.26 -> 0.24 (best round 1); s1 0.30 -> 0.32 -> 0.36 (best 2)
    # gold:      s0 0.20 -> 0.25 -> 0.30;               s1 0.30 -> 0.34 -> 0.38
    out = []
    for seed, vals, best in ((0, (0.20, 0.26, 0.24), 1), (1, (0.30, 0.32, 0.36), 2)):
        out += [_rec(seed, "labelfree", r, v, best) for r, v in enumerate(vals)]
    for seed, vals in ((0, (0.20, 0.25, 0.30)), (1, (0.30, 0.34, 0.38))):
        out += [_rec(seed, "gold", r, v, 0) for r, v in enumerate(vals)]
    return out


def test_mean_sd_and_format(bench):
    assert bench.mean_sd([]) == (None, None, 0)
    assert bench.mean_sd([0.5, None]) == (0.5, None, 1)
    mean, sd, n = bench.mean_sd([0.1, 0.3])
    assert mean == pytest.approx(0.2) and sd == pytest.approx(0.1414213562) and n == 2
    assert bench.fmt_stat([0.1, 0.3]) == "20.0 ± 14.1"
    assert bench.fmt_stat([0.25]) == "25.0"
    assert bench.fmt_stat([None]) == "-"
    assert bench.fmt_stat([12, 14], scale=1, digits=0) == "13 ± 1"
    assert bench.fmt_stat([0.5], of=3) == "50.0 (n=1)"


def test_gains_last_and_best(bench):
    g = bench.gains(_records(), "counting")
    lf, gold = g["labelfree"], g["gold"]
    assert lf[0]["gain_last"] == pytest.approx(0.04) and lf[0]["gain_best"] == pytest.approx(0.06)
    assert lf[1]["gain_last"] == pytest.approx(0.06) and lf[1]["gain_best"] == pytest.approx(0.06)
    assert gold[0]["gain_last"] == pytest.approx(0.10) and gold[1]["gain_last"] == pytest.approx(0.08)
    assert lf[0]["last_round"] == 2 and lf[0]["best_round"] == 1


def test_recovery(bench):
    ratio, per = bench.recovery({0: 0.04, 1: 0.06}, {0: 0.10, 1: 0.08})
    assert ratio == pytest.approx(0.05 / 0.09)
    assert per[0] == pytest.approx(0.4) and per[1] == pytest.approx(0.75)
    ratio, per = bench.recovery({0: 0.04, 1: 0.02}, {0: 0.0, 1: -0.02})
    assert ratio is None and per == {0: None, 1: None}
    assert bench.recovery({0: None}, {0: 0.1}) == (None, {})


def test_round_seconds(bench):
    assert bench.round_seconds({"time/generate": 2.0, "time/train": 3.5, "eval/pass@1": 0.5}) == 5.5
    assert bench.round_seconds({"eval/pass@1": 0.5}) is None


def test_markdown_section_numbers(bench):
    lines = bench.task_section(_records(), "counting", kmax=8, n_seeds=2, gold_rule="rule")
    text = "\n".join(lines)
    # round 1 of labelfree: pass@1 mean of 0.26, 0.32 = 29.0 ± 4.2
    assert "| labelfree | 1 | 29.0 ± 4.2 |" in text
    assert "| gold (SUPERVISED) | 2 | 34.0 ± 5.7 |" in text
    assert "+5.0 ± 1.4 points" in text  # labelfree after the last round: 4 and 6 points
    assert "recovers **56%**" in text  # 5 / 9
    assert "s0: 40%, s1: 75%" in text
    assert "recovers **67%**" in text  # best rounds: 6 and 6 -> 6 / 9
    assert "differs between the arms" not in text


def test_gold_overrides_per_method(bench):
    from selfimprove.loop.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "demo.yaml")
    extra, _what = bench.gold_overrides(cfg)
    assert "supervised=true" in extra and "data.sft.select=verifier" in extra
    assert f"data.sft.verifier_key={bench.GOLD_REWARD_KEY}" in extra
    gold = load_config(root / "configs" / "demo.yaml", extra)
    assert gold.supervised and [t.name for t in gold.scoring.rewards] == ["gold_verifier"]
    assert gold.data.sft["min_majority_ratio"] == 0.0
    # everything else (eval split, sampling, training budget) is the label-free config's
    for section in ("task", "generation", "training", "evaluation", "loop", "model"):
        assert getattr(gold, section) == getattr(cfg, section)


def test_gold_arm_of_an_abstaining_grpo_recipe_trains_every_prompt(bench):
    """`--set scoring.min_majority_ratio=0.3` reaches both arms; the gold arm undoes it (its GRPO
    data would otherwise lose the prompts whose vote abstained), and adds nothing when it is off."""
    from selfimprove.loop.config import load_config

    ttrl = Path(__file__).resolve().parents[1] / "configs" / "ttrl_grpo.yaml"
    common = bench.arm_overrides("sorting", "builtin:sorting", 0, None, ["scoring.min_majority_ratio=0.3"])
    labelfree = load_config(ttrl, common)
    extra, _what = bench.gold_overrides(labelfree)
    gold = load_config(ttrl, common + extra)
    assert labelfree.scoring.min_majority_ratio == 0.3 and gold.scoring.min_majority_ratio == 0.0
    assert gold.data.grpo == {"columns": ["pseudo_label"]} and gold.supervised
    plain, _ = bench.gold_overrides(load_config(ttrl))
    assert not any(o.startswith("scoring.min_majority_ratio") for o in plain)  # old run folders still match


def test_run_status(bench, tmp_path):
    assert bench.run_status(tmp_path, "abc") == "new"
    (tmp_path / "state.json").write_text(json.dumps({"fingerprint": "abc", "finished": False}))
    assert bench.run_status(tmp_path, "abc") == "resume"
    assert bench.run_status(tmp_path, "xyz") == "mismatch"
    (tmp_path / "state.json").write_text(json.dumps({"fingerprint": "abc", "finished": True}))
    assert bench.run_status(tmp_path, "abc") == "resume"  # no summary.json yet
    (tmp_path / "summary.json").write_text("{}")
    assert bench.run_status(tmp_path, "abc") == "done"
    # With the rounds asked for: a finished run with fewer rounds is extended, unless its guard stopped it.
    rounds = {"0": {"done": ["evaluate", "metrics"]}, "1": {"done": ["train", "evaluate", "metrics"]}}
    (tmp_path / "state.json").write_text(
        json.dumps({"fingerprint": "abc", "finished": True, "rounds": rounds})
    )
    assert bench.run_status(tmp_path, "abc", rounds=1) == "done"
    assert bench.run_status(tmp_path, "abc", rounds=3) == "resume"
    stopped = {"fingerprint": "abc", "finished": True, "rounds": rounds, "stopped": "collapse"}
    (tmp_path / "state.json").write_text(json.dumps(stopped))
    assert bench.run_status(tmp_path, "abc", rounds=3) == "done"


def test_a_run_writes_its_own_log_and_outlives_a_killed_benchmark(bench, tmp_path):
    """execute() echoes the run's log with a prefix and returns its exit code; the run does not
    write through the benchmark process, so killing the benchmark does not kill the run (with the
    output piped through the parent, the run died of SIGPIPE at its next write)."""
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            print("first line", flush=True)
            time.sleep(float(sys.argv[1]))
            print("after the wait", flush=True)
            open({str(tmp_path / "marker")!r}, "w").write("done")
            sys.exit(3)
            """
        )
    )

    class FakeJob(bench.Job):
        def command(self, config):
            return [sys.executable, str(child), config]

    job = FakeJob("counting", 0, "labelfree", tmp_path / "runs" / "s0" / "labelfree", [], "f", "sft")
    log = tmp_path / "runs" / "s0" / "labelfree.log"

    # In process: the echo and the exit code.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench.execute(job, "0", poll_seconds=0.05)
    assert rc == 3
    assert "[counting/s0/labelfree] first line\n" in out.getvalue()
    assert "[counting/s0/labelfree] after the wait\n" in out.getvalue()
    assert log.read_text().count("after the wait") == 1
    (tmp_path / "marker").unlink()

    # The benchmark killed while its run waits: the run goes on and finishes its log.
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, sys
            from pathlib import Path
            spec = importlib.util.spec_from_file_location("b", {str(_PATH)!r})
            b = importlib.util.module_from_spec(spec); sys.modules["b"] = b; spec.loader.exec_module(b)
            class J(b.Job):
                def command(self, config):
                    return [sys.executable, {str(child)!r}, config]
            b.execute(J("counting", 1, "gold", Path({str(tmp_path / "runs" / "s1" / "gold")!r}), [], "f", "sft"), "2")
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log1 = tmp_path / "runs" / "s1" / "gold.log"
    deadline = time.time() + 60
    while "first line" not in (log1.read_text() if log1.exists() else "") and time.time() < deadline:
        time.sleep(0.05)
    assert "first line" in log1.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.time() + 60
    while not (tmp_path / "marker").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "marker").read_text() == "done"
    assert "after the wait" in log1.read_text()


def test_gold_arm_borrowed_from_an_earlier_raw_file_only_when_round_0_matches(bench, tmp_path):
    recs = _records()
    labelfree = [r for r in recs if r["arm"] == "labelfree"]
    raw = tmp_path / "earlier_raw.jsonl"
    # the earlier file also holds another task and its own label-free arm: neither is taken
    other = [{**r, "task": "sorting"} for r in recs]
    raw.write_text("".join(json.dumps(r) + "\n" for r in recs + other))
    jobs = [bench.Job("counting", s, "labelfree", tmp_path / f"s{s}", [], "fp", "sft") for s in (0, 1)]
    gold = bench.borrowed_gold(raw, labelfree, jobs)
    assert sorted((r["seed"], r["round"]) for r in gold) == [(s, r) for s in (0, 1) for r in range(3)]
    assert {r["arm"] for r in gold} == {"gold"} and {r["task"] for r in gold} == {"counting"}
    assert all(r["borrowed_from"] == str(raw) for r in gold)
    # the table then compares the arms as if both had run here (same numbers as test_markdown...)
    text = "\n".join(bench.task_section(labelfree + gold, "counting", kmax=8, n_seeds=2, gold_rule="r"))
    assert "recovers **56%**" in text

    # another base model (round 0 differs on seed 1): refused, naming the seed and the metric
    moved = [
        {**r, "metrics": {**r["metrics"], "eval/pass@1": 0.31}} if (r["seed"], r["round"]) == (1, 0) else r
        for r in labelfree
    ]
    with pytest.raises(ValueError, match=r"counting seed 1: round 0 .*eval/pass@1 0.3 vs 0.31"):
        bench.borrowed_gold(raw, moved, jobs)
    # a seed the file does not have
    jobs.append(bench.Job("counting", 2, "labelfree", tmp_path / "s2", [], "fp", "sft"))
    with pytest.raises(ValueError, match="no gold-arm rounds for counting seed 2"):
        bench.borrowed_gold(raw, labelfree, jobs)
    (tmp_path / "bad.jsonl").write_text('{"arm": "gold"}\nnot json\n')
    from selfimprove.errors import InputError

    with pytest.raises(InputError, match=r"bad\.jsonl:2: corrupt JSON line"):
        bench.borrowed_gold(tmp_path / "bad.jsonl", labelfree, jobs)
