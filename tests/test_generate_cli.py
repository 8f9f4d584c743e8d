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


# -- inputs checked with the model's tokenizer, before the engine starts ---------------------------

LONG = "x" * 1100  # the tiny model's context is 1024 tokens (one per character)


@pytest.mark.parametrize(
    "backend, lines, message",
    [
        (
            "hf",
            [b'{"prompt": "ok"}', b'{"prompt": "caf\xe9"}'],
            "p.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)",
        ),
        ("hf", [b'{"prompt": "ok"}', b'{"prompt": ""}'], "p.jsonl:2: prompt 2 is empty"),
        ("vllm", [b'{"prompt": "  "}'], "p.jsonl:1: prompt 1 is empty"),
        (
            "hf",
            [b'{"prompt": "ok"}', b'{"prompt": "' + LONG.encode() + b'"}'],
            "p.jsonl:2: the prompt has 1100 tokens",
        ),
        (
            "vllm",
            [b'{"prompt": [{"role": "user", "content": "' + LONG.encode() + b'"}]}'],
            "p.jsonl:1: the prompt has 11",
        ),
        ("openai", [b'{"prompt": "' + LONG.encode() + b'"}'], "p.jsonl:1: the prompt has 1100 tokens"),
    ],
)
def test_bad_prompts_fail_before_the_engine_in_one_line(tiny_model_dir, tmp_path, backend, lines, message):
    """Empty, not-UTF-8 and too-long prompts: exit 2, one line naming file:line, no engine start
    (vLLM used to fail only after its 20-90 s start), no output folder left behind."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    args = ["--backend", backend, "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--n", "1"]
    if backend == "openai":  # a served model by name, its tokenizer from the local folder
        args[3] = "tiny"
        args += ["--base-url", f"http://127.0.0.1:{closed_port()}/v1", "--tokenizer", tiny_model_dir]
    r = run(*args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines_out = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines_out) == 1 and message in lines_out[0], r.stderr
    if "the prompt has" in message:
        assert "the model's context is 1024 tokens (no room to generate)" in r.stderr
        assert "--skip-long-prompts" in r.stderr
    assert not out.exists()


def test_too_long_prompts_skipped_on_request_counted_and_reported(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(f'{{"prompt": "ab", "id": "short"}}\n{{"prompt": "{LONG}", "id": "long"}}\n')
    out = tmp_path / "out"
    r = run("--backend", "hf", "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--n", "1",
            "--max-tokens", "2", "--skip-long-prompts", "--no-chat-template")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1 prompt(s) longer than the model's context of 1024 tokens were left out" in r.stderr
    assert "ids long" in r.stderr
    assert [json.loads(x)["prompt_id"] for x in (out / "rollouts.jsonl").read_text().splitlines()] == [
        "short"
    ]
    assert json.loads((out / "generate.json").read_text())["skipped_too_long"] == ["long"]


def test_a_failed_generate_leaves_no_output_folder(tiny_model_dir, tmp_path):
    """The server is unreachable: the command fails after the engine (client) was built; before,
    the empty output folder stayed behind."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    out = tmp_path / "fresh" / "out"
    r = run("--backend", "openai", "--model", "m", "--base-url", f"http://127.0.0.1:{closed_port()}/v1",
            "--prompts", prompts, "--out", out, "--max-retries", "0")  # fmt: skip
    assert r.returncode == 2 and "cannot connect" in r.stderr, r.stderr
    assert not out.exists()


def test_chat_template_option_and_raw_text_warning(tiny_model_dir, tmp_path):
    """Plain-text prompts to a model with a chat template: a warning, or the template on request."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello", "id": "a"}\n')
    base = ["--backend", "hf", "--model", tiny_model_dir, "--prompts", prompts, "--n", "1", "--max-tokens", "2",
            "--temperature", "0"]  # fmt: skip
    raw = run(*base, "--out", tmp_path / "raw")
    assert raw.returncode == 0, raw.stderr
    assert "plain text, but the model has a chat template" in raw.stderr and "--chat-template" in raw.stderr
    chat = run(*base, "--out", tmp_path / "chat", "--chat-template")
    assert chat.returncode == 0, chat.stderr
    assert "plain text" not in chat.stderr
    quiet = run(*base, "--out", tmp_path / "quiet", "--no-chat-template")
    assert "plain text" not in quiet.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    (raw_row,) = [json.loads(x) for x in (tmp_path / "raw" / "rollouts.jsonl").read_text().splitlines()]
    (chat_row,) = [json.loads(x) for x in (tmp_path / "chat" / "rollouts.jsonl").read_text().splitlines()]
    assert raw_row["prompt"] == "hello" and raw_row["prompt_tokens"] == len(tok("hello")["input_ids"])
    assert chat_row["prompt"] == [{"role": "user", "content": "hello"}]
    assert (
        chat_row["prompt_tokens"]
        == len(tok(rendered, add_special_tokens=False)["input_ids"])
        > raw_row["prompt_tokens"]
    )
    assert json.loads((tmp_path / "chat" / "generate.json").read_text())["chat_template"] is True
