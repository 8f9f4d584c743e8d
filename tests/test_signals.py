"""Stopping: SIGTERM and Ctrl-C end `selfimprove generate` and `selfimprove run` within seconds on
every backend, with exit 143 / 130, and the work stays resumable.

The openai backend is tested against real HTTP servers on loopback: one that accepts connections
and never answers (before, every in-flight request ran through its time-out and retries: about
155 s), and one that answers some prompts and hangs on the others.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "selfimprove")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _start(*args: object, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [EXE, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=new_session,
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"ended before the condition held: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"condition never held: {proc.communicate()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, signum: int, limit: float = 10.0) -> tuple[float, str]:
    """Send ``signum``; return (seconds until the process ended, its stderr)."""
    start = time.monotonic()
    proc.send_signal(signum)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running 60 s after signal {signum}") from None
    return time.monotonic() - start, err


class SilentServer:
    """A TCP server on loopback that accepts every connection, reads, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)  # kept open, never written to
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


class HangOn:
    """An OpenAI-compatible completions server that answers some prompts and hangs on the others."""

    def __init__(self, answer: set[str] | None) -> None:
        self.answer = answer  # None: answer every prompt
        self.release = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if state.answer is not None and body["prompt"] not in state.answer:
                    state.release.wait()  # hangs until the test ends
                    return
                data = json.dumps(
                    {
                        "choices": [
                            {"text": f"re:{body['prompt']}:{body.get('seed')}", "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "id": f"q{i}"}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize(
    "signum, status, said",
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_signal_ends_openai_generate_against_a_server_that_never_answers(
    tmp_path, silent_server, signum, status, said
):
    """Default time-out (60 s) and retries (4): the requests in flight are abandoned at once."""
    out = tmp_path / "out"
    proc = _start("generate", "--backend", "openai", "--model", "m", "--base-url", f"http://127.0.0.1:{silent_server.port}/v1",
                  "--prompts", _prompts(tmp_path / "p.jsonl", 4), "--out", out, "--n", "2", "--no-progress")  # fmt: skip
    _wait_for(lambda: silent_server.accepted >= 1, proc)
    seconds, err = _stop(proc, signum)
    assert seconds < 10, (seconds, err)
    assert proc.returncode == status, err
    assert said in err and "Traceback" not in err and "error" not in err, err
    assert not out.exists()  # nothing was stored: no empty folder left


def test_sigterm_mid_openai_generate_keeps_what_was_stored_and_a_rerun_resumes(tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "out"
    args = ["generate", "--backend", "openai", "--model", "m", "--prompts", prompts, "--out", out, "--n", "2",
            "--batch-size", "1", "--seed", "0", "--no-progress"]  # fmt: skip
    partial = HangOn(answer={"p0"})
    try:
        proc = _start(*args, "--base-url", partial.url)
        rollouts = out / "rollouts.jsonl"
        _wait_for(lambda: rollouts.exists() and rollouts.read_text().count("\n") >= 2, proc)
        seconds, err = _stop(proc, signal.SIGTERM)
    finally:
        partial.close()
    assert seconds < 10 and proc.returncode == 143, (seconds, err)
    assert "run it again with the same --out" in err
    kept = rollouts.read_text()
    assert [json.loads(x)["prompt_id"] for x in kept.splitlines()] == ["q0", "q0"]
    full = HangOn(answer=None)
    try:
        r = subprocess.run(
            [EXE, *map(str, args), "--base-url", full.url],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
    finally:
        full.close()
    assert r.returncode == 0, r.stderr
    now = rollouts.read_text()
    assert now.startswith(kept)
    assert sorted({json.loads(x)["prompt_id"] for x in now.splitlines()}) == ["q0", "q1", "q2", "q3"]


def test_sigterm_ends_a_run_on_the_openai_backend_within_seconds(tmp_path, tiny_model_dir, silent_server):
    """`selfimprove run` with generation.backend=openai: round 0's evaluation hangs on the server;
    SIGTERM ends it at once and leaves the run folder for --resume."""
    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "prompt": f"Pick a letter for item {i}.",
                    "answer": "a",
                    "split": "eval" if i % 2 else "train",
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"""
name: openai-stop
model: {{path: "{tiny_model_dir}"}}
task: {{name: null, file: "{task}", train_size: null, eval_size: null, chat_template: false}}
generation:
  backend: openai
  openai: {{base_url: "http://127.0.0.1:{silent_server.port}/v1"}}
  n: 2
  max_tokens: 4
evaluation: {{n: 2, k: [1, 2]}}
loop: {{rounds: 1}}
"""
    )
    run_dir = tmp_path / "run"
    proc = _start("run", cfg, "--run-dir", run_dir, "--no-progress", "--no-report")
    _wait_for(lambda: silent_server.accepted >= 1, proc)
    seconds, err = _stop(proc, signal.SIGTERM)
    assert seconds < 10 and proc.returncode == 143, (seconds, err)
    assert "terminated (SIGTERM); continue it with --resume" in err and "Traceback" not in err, err
    state = json.loads((run_dir / "state.json").read_text())
    assert not state["finished"]
    assert "evaluate" not in state["rounds"].get("0", {}).get("done", [])


@pytest.mark.slow
def test_sigterm_ends_hf_generate_between_batches_and_a_rerun_resumes(tmp_path, tiny_model_dir):
    prompts = _prompts(tmp_path / "p.jsonl", 12)
    out = tmp_path / "out"
    args = ["generate", "--backend", "hf", "--model", tiny_model_dir, "--prompts", prompts, "--out", out,
            "--n", "2", "--max-tokens", "64", "--batch-size", "2", "--seed", "0", "--no-progress",
            "--no-chat-template"]  # fmt: skip
    proc = _start(*args)
    rollouts = out / "rollouts.jsonl"
    _wait_for(lambda: rollouts.exists() and rollouts.read_text().count("\n") >= 4, proc, timeout=600)
    seconds, err = _stop(proc, signal.SIGTERM)
    assert seconds < 10 and proc.returncode == 143, (seconds, proc.returncode, err)
    kept = rollouts.read_text()
    done = {json.loads(x)["prompt_id"] for x in kept.splitlines()}
    assert 2 <= len(done) < 12
    r = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stderr
    now = rollouts.read_text()
    assert now.startswith(kept) and len(now.splitlines()) == 24


@pytest.mark.slow
@pytest.mark.vllm
def test_ctrl_c_during_the_vllm_engine_start_exits_130(tmp_path, tiny_model_dir):
    """Ctrl-C in a terminal reaches the whole process group, vLLM's engine process included; the
    engine dying first used to end the command with exit 2 and a backend error."""
    import psutil

    proc = _start("generate", "--backend", "vllm", "--model", tiny_model_dir, "--enforce-eager", "--kv-cache-gb", "1",
                  "--prompts", _prompts(tmp_path / "p.jsonl", 2), "--out", tmp_path / "out", "--n", "1",
                  "--no-progress", new_session=True)  # fmt: skip
    parent = psutil.Process(proc.pid)

    def engine_started() -> bool:
        names = []
        for child in parent.children(recursive=True):
            try:
                names.append(f"{child.name()} {' '.join(child.cmdline())}")
            except psutil.Error:
                pass
        return any("EngineCore" in n for n in names)

    _wait_for(engine_started, proc, timeout=400)
    children = parent.children(recursive=True)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "selfimprove generate: interrupted" in err and "error:" not in err, err[-3000:]
    assert time.monotonic() - start < 60
    _gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.pid for p in alive]
