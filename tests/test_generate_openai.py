"""OpenAI-compatible backend: retries, back-off, time-outs, key handling and concurrency against
a scripted stdlib HTTP server on loopback, then real samples from a ``vllm serve`` started here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from selfimprove.errors import BackendError
from selfimprove.generate.base import Sampling
from selfimprove.generate.openai_backend import OpenAIGenerator


class Scripted:
    """Server state: a queue of (status, headers, delay) answers, then 200s; records requests."""

    def __init__(self, script=(), delay=0.0):
        self.script = list(script)
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


def make_handler(state: Scripted):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(
                    {
                        "path": self.path,
                        "body": body,
                        "auth": self.headers.get("Authorization"),
                        "t": time.monotonic(),
                    }
                )
                step = state.script.pop(0) if state.script else (200, {}, state.delay)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            status, headers, delay = step
            try:
                time.sleep(delay)
                if status == 200:
                    text = f"echo:{body.get('prompt', body.get('messages'))}:{body.get('seed')}"
                    if self.path.endswith("/chat/completions"):
                        choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    else:
                        choice = {"text": text, "finish_reason": "length"}
                    payload = {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
                else:
                    payload = {"error": f"scripted {status}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (time-out test)
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


@pytest.fixture
def server():
    """Start a scripted server; yields a function ``start(state) -> base_url``."""
    servers = []

    def start(state: Scripted) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_retries_on_429_and_500_with_exponential_backoff(server):
    state = Scripted([(429, {}, 0), (500, {}, 0)])
    gen = OpenAIGenerator("m", base_url=server(state), backoff=0.1, max_retries=3)
    out = gen.generate(["p"], Sampling(max_tokens=4, seed=5))
    assert out[0][0].text == "echo:p:5"
    assert (out[0][0].finish_reason, out[0][0].prompt_tokens, out[0][0].completion_tokens) == ("length", 3, 4)
    assert gen.stats == {"requests": 3, "retries": 2}
    t = [r["t"] for r in state.requests]
    assert t[1] - t[0] >= 0.1 and t[2] - t[1] >= 0.2  # backoff * 2**attempt
    assert state.requests[0]["body"] == {
        "model": "m",
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 4,
        "seed": 5,
        "prompt": "p",
    }


def test_retry_after_header_is_honoured(server):
    state = Scripted([(429, {"Retry-After": "0.4"}, 0)])
    gen = OpenAIGenerator("m", base_url=server(state), backoff=0.01)
    gen.generate(["p"], Sampling())
    assert state.requests[1]["t"] - state.requests[0]["t"] >= 0.4


def test_gives_up_after_max_retries_naming_url_and_status(server):
    state = Scripted([(503, {}, 0)] * 10)
    url = server(state)
    gen = OpenAIGenerator("m", base_url=url, backoff=0.01, max_retries=2)
    with pytest.raises(BackendError) as exc:
        gen.generate(["p"], Sampling())
    msg = str(exc.value)
    assert f"{url}/completions" in msg and "3 attempts" in msg and "HTTP 503" in msg
    assert len(state.requests) == 3


def test_client_error_is_not_retried(server):
    state = Scripted([(400, {}, 0)])
    gen = OpenAIGenerator("m", base_url=server(state), backoff=0.01)
    with pytest.raises(BackendError, match="HTTP 400"):
        gen.generate([[{"role": "user", "content": "x"}]], Sampling())
    assert len(state.requests) == 1


def test_missing_completions_endpoint_says_use_chat(server):
    state = Scripted([(404, {}, 0)])
    gen = OpenAIGenerator("m", base_url=server(state))
    with pytest.raises(BackendError, match="no text-completions endpoint; pass chat-message prompts"):
        gen.generate(["p"], Sampling())


def test_stalled_server_times_out_then_fails(server):
    state = Scripted([(200, {}, 3.0)] * 5)
    gen = OpenAIGenerator("m", base_url=server(state), timeout=0.3, max_retries=1, backoff=0.05)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as exc:
        gen.generate(["p"], Sampling())
    elapsed = time.monotonic() - t0
    assert "timed out after 0.3 s" in str(exc.value) and "2 attempts" in str(exc.value)
    assert 0.6 <= elapsed < 2.5  # two 0.3 s attempts, not the server's 3 s stall
    assert len(state.requests) == 2


def test_unreachable_server_names_url():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01)
    with pytest.raises(BackendError) as exc:
        gen.generate(["p"], Sampling())
    assert f"http://127.0.0.1:{port}/v1/completions" in str(exc.value)
    assert "cannot connect" in str(exc.value)


def test_api_key_read_at_call_time_and_never_in_errors(server, monkeypatch):
    state = Scripted()
    gen = OpenAIGenerator("m", base_url=server(state), api_key_env="SI_TEST_KEY")
    monkeypatch.delenv("SI_TEST_KEY", raising=False)
    gen.generate(["p"], Sampling())
    monkeypatch.setenv("SI_TEST_KEY", "sk-first")
    gen.generate(["p"], Sampling())
    monkeypatch.setenv("SI_TEST_KEY", "sk-second")
    gen.generate(["p"], Sampling())
    assert [r["auth"] for r in state.requests] == [None, "Bearer sk-first", "Bearer sk-second"]
    assert "sk-second" not in repr(vars(gen))
    state.script = [(401, {}, 0)]
    with pytest.raises(BackendError) as exc:
        gen.generate(["p"], Sampling())
    assert "sk-second" not in str(exc.value)


def test_concurrency_bounded_order_kept_seeds_and_routes(server, tmp_path):
    state = Scripted(delay=0.1)
    gen = OpenAIGenerator("m", base_url=server(state), max_concurrency=3)
    chat = [{"role": "user", "content": "c"}]
    adapter = tmp_path / "my-lora"
    adapter.mkdir()
    out = gen.generate(["a", chat, "b", "d"], Sampling(n=3, seed=10), adapter=str(adapter))
    assert state.max_in_flight == 3
    assert [[c.text for c in g] for g in out] == [
        [f"echo:{p}:{10 + k}" for k in range(3)] for p in ("a", str(chat), "b", "d")
    ]
    paths = {r["path"] for r in state.requests}
    assert paths == {"/v1/completions", "/v1/chat/completions"}
    assert {r["body"]["model"] for r in state.requests} == {"my-lora"}  # adapter folder -> served name


# -- a real OpenAI-compatible server: vllm serve --------------------------------------------------


PROMPTS = ["hello world", [{"role": "user", "content": "hi there"}]]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_serve_matches_local_engines(vllm_server, vllm_generator, tiny_model_dir):
    from selfimprove.generate.hf_backend import HFGenerator

    wait_ready, adapter = vllm_server
    base = wait_ready()
    gen = OpenAIGenerator("tiny", base_url=base, max_concurrency=4)
    hf = HFGenerator(tiny_model_dir)
    greedy = Sampling(temperature=0, max_tokens=12)
    served = gen.generate(PROMPTS, greedy)
    local = hf.generate(PROMPTS, greedy)
    assert [g[0].text for g in served] == [g[0].text for g in local]
    assert [(g[0].prompt_tokens, g[0].completion_tokens) for g in served] == [
        (g[0].prompt_tokens, g[0].completion_tokens) for g in local
    ]
    # Served LoRA (by name, or by the adapter's folder) == the local engine with the same adapter
    # (texts: both use vLLM's detokenizer) and == HF+PEFT in token counts.
    by_name = gen.generate(PROMPTS, greedy, adapter="ad1")
    local_lora = vllm_generator.generate(PROMPTS, greedy, adapter=str(adapter))
    assert [g[0].text for g in by_name] == [g[0].text for g in local_lora]
    hf_lora = hf.generate(PROMPTS, greedy, adapter=str(adapter))
    assert [g[0].completion_tokens for g in by_name] == [g[0].completion_tokens for g in hf_lora]
    assert [g[0].token_ids for g in local_lora] == [g[0].token_ids for g in hf_lora]
    assert [g[0].text for g in gen.generate(PROMPTS, greedy, adapter=str(adapter))] == [
        g[0].text for g in by_name
    ]
    assert [g[0].text for g in by_name] != [g[0].text for g in served]
    # Seeded sampling: sample k uses seed + k, which is how vLLM seeds its n children locally.
    s = Sampling(n=3, temperature=1.0, max_tokens=10, seed=21, logprobs=2)
    remote = gen.generate(PROMPTS, s)
    engine = vllm_generator.generate(PROMPTS, s)
    assert [[c.text for c in g] for g in remote] == [[c.text for c in g] for g in engine]
    for r, e in zip(remote[0], engine[0], strict=True):
        assert r.token_logprobs == pytest.approx(e.token_logprobs, abs=1e-4)
        # Partial UTF-8 byte tokens all render as the same key, so the server's JSON top-k
        # object collapses them; compare the steps whose top-k tokens all decode to distinct text.
        clean = [
            i for i, d in enumerate(e.logprobs) if len(d) == 2 and "" not in d and "\ufffd" not in "".join(d)
        ]
        assert [r.logprobs[i] for i in clean] == [pytest.approx(e.logprobs[i], abs=1e-4) for i in clean]
    hf.close()
    gen.close()


@pytest.mark.slow
@pytest.mark.vllm
def test_cli_openai_backend_against_vllm_serve(vllm_server, tmp_path):
    base = vllm_server[0]()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "abc", "topic": "t"}\n{"prompt": [{"role": "user", "content": "x"}]}\n')
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "selfimprove"), "generate", "--backend", "openai"]
    cmd += ["--model", "tiny", "--base-url", base, "--prompts", str(prompts), "--out", str(out)]
    cmd += ["--n", "2", "--max-tokens", "6", "--seed", "0", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [("1", 0), ("1", 1), ("2", 0), ("2", 1)]
    assert rows[0]["meta"] == {"topic": "t"} and rows[0]["backend"] == "openai" and rows[0]["model"] == "tiny"
    assert all(1 <= r["completion_tokens"] <= 6 for r in rows)
