"""``selfimprove generate`` through a subprocess: bad input gives a clear error, a non-zero exit,
and never damages rollouts already written; a good run on the HF backend writes and resumes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "selfimprove")


def run(*args, timeout=180):
    return subprocess.run([EXE, "generate", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def done_run(tiny_model_dir, tmp_path_factory):
    """A finished HF-backend run: (model, prompts file, out dir, bytes of rollouts.jsonl)."""
    d = tmp_path_factory.mktemp("cli")
    prompts = d / "p.jsonl"
    prompts.write_text(
        '{"prompt": "abc", "id": "q1", "level": 2}\n{"prompt": [{"role": "user", "content": "hi"}]}\n'
    )
    out = d / "out"
    r = run("--backend", "hf", "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--n", "2",
            "--max-tokens", "5", "--seed", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "rollouts" in r.stderr  # the progress bar
    return tiny_model_dir, prompts, out, (out / "rollouts.jsonl").read_bytes()


def test_hf_run_writes_schema(done_run):
    _, _, out, data = done_run
    rows = [json.loads(x) for x in data.decode().splitlines()]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [("q1", 0), ("q1", 1), ("2", 0), ("2", 1)]
    assert set(rows[0]) == {
        "prompt_id", "prompt", "sample_index", "completion", "finish_reason", "prompt_tokens",
        "completion_tokens", "model", "adapter", "adapter_version", "backend", "meta",
    }  # fmt: skip
    assert rows[0]["meta"] == {"level": 2} and rows[0]["backend"] == "hf"
    assert all(r["completion_tokens"] <= 5 for r in rows)
    manifest = json.loads((out / "generate.json").read_text())
    assert manifest["sampling"]["n"] == 2 and manifest["sampling"]["seed"] == 0


def test_rerun_resumes_and_keeps_earlier_rollouts(done_run, tmp_path):
    model, prompts, out, data = done_run
    r = run("--backend", "hf", "--model", model, "--prompts", prompts, "--out", out, "--n", "2")
    assert r.returncode == 0 and "already have 2 samples" in r.stdout
    more = tmp_path / "more.jsonl"
    more.write_text(prompts.read_text() + '{"prompt": "new one", "id": "q3"}\n')
    r = run(
        "--backend", "hf", "--model", model, "--prompts", more, "--out", out, "--n", "2", "--max-tokens", "5"
    )
    assert r.returncode == 0, r.stderr
    new = (out / "rollouts.jsonl").read_bytes()
    assert new.startswith(data)
    assert [json.loads(x)["prompt_id"] for x in new[len(data) :].decode().splitlines()] == ["q3", "q3"]
    (out / "rollouts.jsonl").write_bytes(data)  # restore for the other tests


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_model", "model folder not found"),
        ("model_without_weights", "no *.safetensors weights"),
        ("bad_json", "bad.jsonl:2: invalid JSON"),
        ("no_prompt_field", "bad.jsonl:1: missing field 'prompt'"),
        ("empty", "holds no prompts"),
        ("missing_prompts", "prompt file not found"),
        ("n_zero", "--n must be >= 1, got 0"),
        ("unknown_backend", "unknown backend 'tgi'; allowed: vllm, hf, openai"),
        ("openai_no_url", "--base-url is required with --backend openai"),
        ("unreachable", "cannot connect"),
        ("missing_adapter", "--adapter folder not found"),
    ],
)
def test_bad_input_clear_error_and_nothing_lost(done_run, tmp_path, case, message):
    model, prompts, out, data = done_run
    args = {"--backend": "hf", "--model": model, "--prompts": prompts, "--out": out, "--n": "2"}
    bad = tmp_path / "bad.jsonl"
    if case == "missing_model":
        args["--model"] = tmp_path / "nope"
    elif case == "model_without_weights":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text("{}")
        args["--model"] = tmp_path / "m"
    elif case == "bad_json":
        bad.write_text('{"prompt": "a"}\n{"prompt": "b",\n')
        args["--prompts"] = bad
    elif case == "no_prompt_field":
        bad.write_text('{"question": "a"}\n')
        args["--prompts"] = bad
    elif case == "empty":
        bad.write_text("")
        args["--prompts"] = bad
    elif case == "missing_prompts":
        args["--prompts"] = tmp_path / "none.jsonl"
    elif case == "n_zero":
        args["--n"] = "0"
    elif case == "unknown_backend":
        args["--backend"] = "tgi"
    elif case == "openai_no_url":
        args["--backend"] = "openai"
    elif case == "unreachable":
        args.update({"--backend": "openai", "--base-url": f"http://127.0.0.1:{closed_port()}/v1"})
        args["--prompts"] = bad
        bad.write_text('{"prompt": "fresh prompt", "id": "z"}\n')  # not yet generated: must hit the server
        args["--max-retries"] = "1"
    elif case == "missing_adapter":
        args["--adapter"] = tmp_path / "no_adapter"
    r = run(*[x for kv in args.items() for x in kv])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    assert (out / "rollouts.jsonl").read_bytes() == data


def test_help_lists_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--model", "--prompts", "--n", "--backend", "--out", "--adapter", "--temperature", "--top-p",
                "--max-tokens", "--stop", "--seed", "--base-url", "--api-key-env"):  # fmt: skip
        assert opt in r.stdout
