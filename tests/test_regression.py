"""The round table of a small fixed run, recorded before the runner was split into modules.

A 2-round SFT run on the letter task (HF backend, tiny model built with seed 0): the same config and
seed must give the same round table as the code at b711b95 did. The folder ``tests/data/run_b711b95``
is round 1 of that run as the code at b711b95 wrote it (``loop.rounds: 1``); resuming it with
``loop.rounds=2`` must finish with the same table as the fresh run.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
OLD_RUN = DATA / "run_b711b95"
# Recorded with the code at b711b95: this module's config, a fresh 2-round run (twice, identical but
# for the time/* keys, which are left out).
EXPECTED = json.loads((DATA / "regression_b711b95.json").read_text())


def write_task(path: Path, n: int = 16, seed: int = 0) -> None:
    """A JSONL task whose gold answers are letters, half train, half eval."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            rec = {
                "id": f"q{i}",
                "prompt": [{"role": "user", "content": f"Pick a letter for item {i}."}],
                "answer": rng.choice("abcde"),
                "split": "eval" if i % 2 else "train",
            }
            fh.write(json.dumps(rec) + "\n")


CONFIG = """
name: regression
model:
  path: model
task:
  name: null
  file: task.jsonl
  train_size: null
  eval_size: null
scoring:
  extractor: regex
  extractor_options: {pattern: "([a-e])", which: first}
  rewards:
    - name: majority_vote
generation:
  backend: hf
  n: 4
  max_tokens: 10
  batch_size: 4
data:
  sft: {drop_truncated: false}
training:
  method: sft
  max_steps: 2
  batch_size: 4
  learning_rate: 0.01
  lora: {rank: 8, alpha: 16}
evaluation:
  n: 4
  k: [1, 4]
loop:
  rounds: 2
"""


def prepare(workdir: Path, tiny_model_dir: Path) -> Path:
    """The run's inputs under ``workdir`` with relative paths (so the config hash is the same anywhere)."""
    shutil.copytree(tiny_model_dir, workdir / "model")
    write_task(workdir / "task.jsonl")
    (workdir / "cfg.yaml").write_text(CONFIG)
    return workdir / "cfg.yaml"


def check_same_as_b711b95(run_dir: Path) -> None:
    """The run's metrics (all but time/*) and round table equal the ones recorded at b711b95."""
    from selfimprove.loop.runner import round_table

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    got = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rows]
    assert [m["round"] for m in got] == [0, 1, 2]
    for g, e in zip(got, EXPECTED["metrics"], strict=True):
        assert sorted(g) == sorted(e), g["round"]
        for key, value in e.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g["round"], key)
            else:
                assert g[key] == value, (g["round"], key)
    assert round_table(rows, [1, 4]) == EXPECTED["table"]


@pytest.mark.slow
def test_same_config_and_seed_give_the_round_table_of_b711b95(tmp_path, tiny_model_dir, monkeypatch):
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import run

    cfg_path = prepare(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    run(load_config(cfg_path), "run", progress=False, log=lambda msg: None, command=["pytest"])
    check_same_as_b711b95(tmp_path / "run")


@pytest.mark.slow
def test_resume_of_a_run_folder_written_by_b711b95(tmp_path, tiny_model_dir, monkeypatch):
    """Round 1 written by the old code; the new code adds round 2 and ends where the old code did."""
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import run

    cfg_path = prepare(tmp_path, tiny_model_dir)
    shutil.copytree(OLD_RUN, tmp_path / "run")
    before = json.loads((tmp_path / "run" / "state.json").read_text())
    assert before["finished"] and sorted(before["rounds"]) == ["0", "1"]
    monkeypatch.chdir(tmp_path)
    logs: list[str] = []
    run(load_config(cfg_path, ["loop.rounds=2"]), "run", resume=True, progress=False, log=logs.append)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["rounds"]["1"] == before["rounds"]["1"]  # round 1 was not redone
    check_same_as_b711b95(tmp_path / "run")
