"""Quiet by default: `selfimprove run` keeps the engines' output off the terminal and in RUN_DIR/run.log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "loop.rounds=1",
    "task.train_size=16",
    "task.eval_size=16",
    "generation.n=4",
    "evaluation.n=2",
    "evaluation.k=[1, 2]",
    "data.sft.min_majority_ratio=0.5",
]


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "INFO"}
    for name in ("TRANSFORMERS_VERBOSITY", "VLLM_CONFIGURE_LOGGING"):  # whatever earlier tests set
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "selfimprove.cli",
        "run",
        str(REPO / "configs" / "demo.yaml"),
        *SMALL,
        *extra,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_run_is_quiet_and_logs_the_engines_to_the_run_folder(tmp_path):
    proc = _run(tmp_path, "--run-dir", "quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    terminal = proc.stdout + proc.stderr
    # the command's own output is there
    assert "round 1: train" in terminal
    assert "pass@1" in terminal and "run folder: quiet" in terminal
    # the engines' is not: vLLM's INFO log lines (main and engine process), TRL's metric dicts
    assert "INFO" not in terminal
    assert "{'loss'" not in terminal
    log = (tmp_path / "quiet" / "run.log").read_text(encoding="utf-8")
    assert "INFO" in log and "EngineCore" in log
    assert "'loss'" in log


SNIPPET = """
import os, sys, warnings
from pathlib import Path
from selfimprove.console import quiet_output
with quiet_output(verbose=VERBOSE) as out:
    os.write(1, b"engine line at fd level\\n")
    print("library print")
    warnings.warn("a library warning")
    out.echo("our own line")
    kept = out.keep_log(Path(sys.argv[1]))
print("after:", kept)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_output_routes_fd_1_and_warnings_to_the_log(tmp_path, verbose):
    code = SNIPPET.replace("VERBOSE", str(verbose))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stdout + proc.stderr
    assert "our own line" in proc.stdout
    log = tmp_path / "run.log"
    if verbose:
        assert "engine line at fd level" in proc.stdout and "library print" in proc.stdout
        assert "a library warning" in proc.stderr
        assert not log.exists() and "after: None" in proc.stdout
    else:
        for line in ("engine line at fd level", "library print", "a library warning"):
            assert line not in terminal
            assert line in log.read_text(encoding="utf-8")
        assert f"after: {log}" in proc.stdout
