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


@pytest.mark.slow
def test_two_processes_under_accelerate_give_the_same_round_table(tmp_path, tiny_model_dir, monkeypatch):
    """The config of this module with its train stage under ``accelerate launch`` (2 CPU processes).

    With ``training.batch_size: 2`` per process, each optimizer step sees the 4 rows the single
    process sees with batch size 4 (accelerate hands process i the i-th batch of the same seeded
    order, and DDP averages the gradients with tokens counted across both), so the round table
    equals the in-process one recorded above. One count differs by construction: round 1 has 2
    rows, less than the 4 of a global batch, and accelerate fills the second process's batch with
    the same rows (``even_batches``), so both processes train on them and ``train/tokens`` is
    counted twice (the gradient is the same). A first attempt with a broken accelerate config
    fails in the train stage with the log path, leaves the stage not done, and resumes.
    """
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import round_table, run
    from selfimprove.train.launch import LaunchError

    cfg_path = prepare(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes even where a GPU exists
    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: NOT_A_TYPE\nnum_processes: 2\n"
    )
    overrides = ["training.accelerate_config=accelerate.yaml", "training.batch_size=2"]
    with pytest.raises(LaunchError) as failed:
        run(load_config(cfg_path, overrides), "run", progress=False, log=lambda msg: None)
    first_line = str(failed.value).splitlines()[0]
    log = Path("run/round_01/train_launch/output.log")
    assert "NOT_A_TYPE" in first_line and first_line.endswith(f"its output: {log}"), first_line
    assert "NOT_A_TYPE" in log.read_text()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["rounds"]["1"]["done"] == ["generate", "score", "build"]
    assert not (tmp_path / "run" / "round_01" / "adapter").exists()

    shutil.copy(Path(__file__).parents[1] / "configs" / "accelerate" / "cpu_2proc.yaml", accelerate)
    run(load_config(cfg_path, overrides), "run", resume=True, progress=False, log=lambda msg: None)

    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert round_table(rows, [1, 4]) == EXPECTED["table"]
    for got, expected in zip(rows, EXPECTED["metrics"], strict=True):
        r = got["round"]
        launched = {"train/world_size"} if r > 0 else set()
        assert sorted(k for k in got if not k.startswith("time/")) == sorted({*expected, *launched}), r
        for key, value in expected.items():
            if key == "train/tokens" and r == 1:
                assert got[key] == 2 * value  # 2 rows < 4: both processes trained on them
            elif isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (r, key)
            else:
                assert got[key] == value, (r, key)
        if r > 0:
            assert got["train/world_size"] == 2
    state = json.loads((run_dir / "state.json").read_text())
    # round 2 trained on top of round 1's adapter, in the processes that accelerate started
    assert state["rounds"]["2"]["adapter_in"] == "round_01/adapter"
    spec = json.loads((run_dir / "round_02" / "train_launch" / "spec.json").read_text())
    assert Path(spec["payload"]["adapter_init"]) == (run_dir / "round_01" / "adapter").resolve()
    meta = json.loads((run_dir / "round_02" / "adapter" / "adapter_meta.json").read_text())
    assert Path(meta["config"]["adapter_init"]) == (run_dir / "round_01" / "adapter").resolve()
    for r in (1, 2):
        result = json.loads((run_dir / f"round_0{r}" / "train_launch" / "result.json").read_text())
        assert result["world_size"] == 2 and result["steps"] == 2
