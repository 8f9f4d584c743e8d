"""The runnable examples in scripts/ (tiny local model, user task file), each run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def write_task(path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "prompt": f"Pick a letter for item {i}. The answer is", "answer": "abcde"[i % 5]}
        for i in range(16)
    ]
    path.write_text(
        "".join(json.dumps({**r, "split": "eval" if i % 2 else "train"}) + "\n" for i, r in enumerate(rows))
    )
    return path


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SCRIPTS.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.slow
def test_self_training_round_script(tmp_path, tiny_model_dir):
    task = write_task(tmp_path / "task.jsonl")
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--task", str(task), "--out", str(out), "--prompts", "0"]
    args += [
        "--n",
        "4",
        "--max-tokens",
        "8",
        "--steps",
        "2",
        "--answer-pattern",
        "([a-e])",
        "--keep-truncated",
    ]
    proc = run_script("self_training_round.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "round_01" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 4 and all("answer" not in r for r in rows)  # 8 train prompts, no gold
    assert (out / "round_01" / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["before"]["n_samples"] == summary["after"]["n_samples"] == 8 * 4
    assert 0.0 <= summary["after"]["pass@1"] <= 1.0 and summary["rows"] > 0
    assert "pass@1" in proc.stdout


@pytest.mark.slow
def test_run_from_dict_script(tmp_path, tiny_model_dir):
    task = write_task(tmp_path / "task.jsonl")
    out = tmp_path / "run"
    args = [
        "--model",
        str(tiny_model_dir),
        "--task",
        str(task),
        "--out",
        str(out),
        "--answer-pattern",
        "([a-e])",
    ]
    proc = run_script("run_from_dict.py", *args, "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(x) for x in (out / "round_01" / "scores.jsonl").read_text().splitlines()]
    # The Python reward was the run's only reward, under its own name.
    assert {name for x in scored for name in x["rewards"]} == {"agrees_and_short"}
    assert any(x["rewards"]["agrees_and_short"] is not None for x in scored)  # the test can fail
    for x in scored:
        v = x["rewards"]["agrees_and_short"]
        if x["pseudo_label"] is None:
            assert v is None
        else:
            text = x["completion"]
            assert v == float(x["extracted"] == x["pseudo_label"]) + 0.5 * (len(text) < 40)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 1 and (out / "report.md").is_file()
    assert "pass@1" in proc.stdout
