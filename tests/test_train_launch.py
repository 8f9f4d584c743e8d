"""The train stage under ``accelerate launch`` (``training.accelerate_config``): config checks, refusals
before anything is written, distillation on 2 CPU processes, and no trainer process outliving its job.

The self-training run on 2 processes (same round table as in one process, failure and resume) is
in tests/test_regression.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CPU_2PROC = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"


# ---------------------------------------------------------------------------------------------
# Config: the key, its check at load, where relative paths are read from
# ---------------------------------------------------------------------------------------------


def test_a_missing_accelerate_config_is_refused_at_load_with_file_and_line(tmp_path, monkeypatch):
    from selfimprove.distill.config import load_config as load_distill
    from selfimprove.loop.config import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("name: x\ntraining:\n  method: sft\n  accelerate_config: nope.yaml\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml:4: training\.accelerate_config: accelerate config not found: nope"
    ):
        load_config(tmp_path / "run.yaml")
    with pytest.raises(
        ConfigError, match=r"override 'training.accelerate_config=gone.yaml'.*not found: gone"
    ):
        load_config(tmp_path / "run.yaml", ["training.accelerate_config=gone.yaml"])
    (tmp_path / "distill.yaml").write_text(
        "teacher:\n  model: builtin:string_ops\nstudent:\n  model: x\ntraining:\n  accelerate_config: nope.yaml\n"
    )
    with pytest.raises(
        ConfigError, match=r"distill\.yaml:6: training\.accelerate_config: accelerate config not"
    ):
        load_distill(tmp_path / "distill.yaml")
    # A file removed after the config loaded: the train stage says so, and starts nothing.
    from selfimprove.train.launch import launch_training

    with pytest.raises(ConfigError, match=r"training\.accelerate_config: accelerate config not found: gone"):
        launch_training("x:y", {}, [{}], tmp_path / "adapter", accelerate_config="gone.yaml")
    assert not (tmp_path / "train_launch").exists()


def test_relative_paths_are_read_from_the_working_folder_then_from_the_shipped_configs(tmp_path, monkeypatch):
    from selfimprove.config.sections import PACKAGE_CONFIGS, resolve_accelerate_config
    from selfimprove.loop.config import load_config

    monkeypatch.chdir(tmp_path)
    shipped = (PACKAGE_CONFIGS / "accelerate" / "cpu_2proc.yaml").resolve()
    # No configs/ folder here: the package's copy is found.
    assert resolve_accelerate_config("configs/accelerate/cpu_2proc.yaml") == shipped
    cfg = load_config({"training": {"accelerate_config": "configs/accelerate/cpu_2proc.yaml"}})
    assert cfg.training.accelerate_config == "configs/accelerate/cpu_2proc.yaml"  # kept as written
    # A file of that name in the working folder wins.
    own = tmp_path / "configs" / "accelerate" / "cpu_2proc.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("num_processes: 2\n")
    assert resolve_accelerate_config("configs/accelerate/cpu_2proc.yaml") == own.resolve()


def test_unset_the_key_leaves_the_config_hash_as_it_was():
    """Run folders written before the key existed resume without --force; setting it is a change."""
    from selfimprove.distill.config import config_from_dict
    from selfimprove.loop.config import load_config

    plain = load_config(REPO / "configs" / "demo.yaml")
    assert plain.training.accelerate_config is None
    assert plain.fingerprint() == "8d87dbcc1cbfde92"  # the hash tests/test_config.py pins
    launched = load_config(REPO / "configs" / "demo.yaml", [f"training.accelerate_config={CPU_2PROC}"])
    assert launched.fingerprint() != plain.fingerprint()
    base = {"teacher": {"model": "builtin:string_ops"}, "student": {"model": "x"}}
    assert (
        config_from_dict(base).fingerprint()
        == config_from_dict(base, [f"training.accelerate_config={CPU_2PROC}"]).fingerprint()
    )  # the teacher's labels do not depend on it


# ---------------------------------------------------------------------------------------------
# What cannot reach other processes is refused before the run folder is written
# ---------------------------------------------------------------------------------------------


def _grpo_config(tiny_model_dir: Path, **training):
    from selfimprove.loop.config import load_config

    return load_config(
        {
            "model": {"path": str(tiny_model_dir)},
            "task": {"name": "arithmetic", "train_size": 4, "eval_size": 4},
            "generation": {"backend": "hf", "n": 2},
            "training": {"method": "grpo", **training},
            "evaluation": {"n": 2, "k": [1]},
        }
    )


def test_python_rewards_and_task_objects_are_refused_with_grpo_under_accelerate(tmp_path, tiny_model_dir):
    from selfimprove.loop.inputs import check_launch_task, load_task
    from selfimprove.loop.runner import run
    from selfimprove.tasks import get_task

    def digits(completions, **columns):
        return [float(any(ch.isdigit() for ch in str(c))) for c in completions]

    cfg = _grpo_config(tiny_model_dir, accelerate_config=str(CPU_2PROC))
    with pytest.raises(ConfigError, match=r"run\(rewards=...\): GRPO trains with the reward functions"):
        run(cfg, tmp_path / "a", rewards=[digits], progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match=r"run\(task=...\): GRPO under training.accelerate_config"):
        run(cfg, tmp_path / "b", task=get_task("arithmetic"), progress=False, log=lambda m: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing was written
    check_launch_task(cfg, load_task(cfg))  # the config's own task is rebuilt in the processes
    # In one process, or with SFT (the trainer never calls the rewards), both are fine.
    check_launch_task(_grpo_config(tiny_model_dir), get_task("arithmetic"))
    sft = cfg.model_copy(deep=True)
    sft.training.method = "sft"
    check_launch_task(sft, get_task("arithmetic"))
    from selfimprove.loop.components import user_reward_terms

    assert [t[0] for t in user_reward_terms(sft, [digits])] == ["digits"]


# ---------------------------------------------------------------------------------------------
# Distillation: the student trains on 2 processes, as in one
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_distill_trains_the_student_under_accelerate_as_in_one_process(tmp_path, tiny_model_dir, monkeypatch):
    """4 selected rows, 2 steps: batch 2 on each of 2 processes sees what batch 4 sees in one."""
    from safetensors.torch import load_file

    from selfimprove.distill import distill

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = {
        "teacher": {
            "model": "builtin:string_ops",
            "backend": "hf",
            "k": 2,
            "max_tokens": 28,
            "batch_size": 8,
        },
        "student": {"model": str(tiny_model_dir), "backend": "hf"},
        "task": {"name": "string_ops", "unlabeled_size": 8, "eval_size": 4},
        "selection": {"strategies": ["random"], "sizes": [4]},
        "training": {
            "max_steps": 2,
            "batch_size": 2,
            "learning_rate": 0.01,
            "accelerate_config": str(CPU_2PROC),
        },
        "evaluation": {"enabled": False},
    }
    run_dir = tmp_path / "run"
    launched = distill(cfg, run_dir, progress=False, log=lambda m: None).summary["variants"][0]
    vdir = run_dir / "variants" / "random-4"
    assert launched["train"]["world_size"] == 2 and launched["train"]["steps"] == 2
    result = json.loads((vdir / "train_launch" / "result.json").read_text())
    assert result["world_size"] == 2 and Path(result["adapter_path"]) == (vdir / "adapter").resolve()
    weights = load_file(str(vdir / "adapter" / "adapter_model.safetensors"))
    assert any(float(t.abs().max()) > 0 for n, t in weights.items() if "lora_B" in n)  # B starts at 0
    # The same variant in one process with the same global batch: the teacher's labels and the
    # student's need are kept (their settings did not change), the training is redone.
    one = {**cfg, "training": {**cfg["training"], "batch_size": 4, "accelerate_config": None}}
    single = distill(one, run_dir, resume=True, progress=False, log=lambda m: None).summary["variants"][0]
    assert single["train"]["world_size"] == 1 and single["select"] == launched["select"]
    for key in ("loss_first", "loss_last"):
        assert single["train"][key] == pytest.approx(launched["train"][key], rel=1e-5), key


# ---------------------------------------------------------------------------------------------
# Stopping: no training process outlives the job
# ---------------------------------------------------------------------------------------------

SLEEPER = '''
import json, os, time
from pathlib import Path


def wait(payload, rows, out_dir):
    """Record this process (pid, launcher pid) and wait to be stopped."""
    folder = Path(payload["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{os.environ['RANK']}.json").write_text(json.dumps([os.getpid(), os.getppid()]))
    time.sleep(600)
'''

PARENT = (
    "import sys\n"
    "from selfimprove.train.launch import launch_training\n"
    "launch_training('sleeper:wait', {'dir': sys.argv[1]}, [{}], sys.argv[2], accelerate_config=sys.argv[3])\n"
)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _start_parent(tmp_path: Path, name: str) -> tuple[subprocess.Popen, list[int]]:
    """A job process running launch_training with two waiting ranks; (it, the ranks' and launcher's pids)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    pids = tmp_path / name
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(pids), str(tmp_path / name / "out" / "adapter"), str(CPU_2PROC)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(list(pids.glob("rank*.json"))) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the ranks did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    time.sleep(0.5)  # both files complete
    recorded = [json.loads(p.read_text()) for p in sorted(pids.glob("rank*.json"))]
    return proc, sorted({pid for pair in recorded for pid in pair})


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if _running(p)]


@pytest.mark.slow
def test_interrupting_or_killing_the_job_ends_every_training_process(tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    # Ctrl-C (the CLI turns SIGTERM into the same exception): the launcher's group is stopped.
    proc, pids = _start_parent(tmp_path, "interrupted")
    assert len(pids) == 3  # two ranks and the launcher above them
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert _gone_within(pids, 20) == []
    # kill -9 of the job passes nothing on: each rank sees its job gone and ends itself.
    proc, pids = _start_parent(tmp_path, "killed")
    proc.kill()
    proc.wait(timeout=10)
    assert _gone_within(pids, 30) == []
