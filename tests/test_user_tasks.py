"""A user's own task: prompts checked with the model's tokenizer before the run starts, the chat
template on request (a warning when plain text meets a model that has one), too-long prompts as an
error or skipped and counted, truncated samples' share of the votes warned about (and optionally
left out), and a loud warning when the eval split is empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.errors import InputError
from selfimprove.loop.config import load_config, validate_config
from selfimprove.loop.inputs import check_inputs, eval_split, load_task, train_prompts
from selfimprove.loop.runner import round_table, run
from selfimprove.score.diagnostics import truncated_vote_share
from selfimprove.score.rollouts import score_rollouts

LONG = "x" * 1100  # the tiny model's context is 1024 tokens (one per character)


def _task(path: Path, *, gold: bool = True, long_line: int | None = None, n: int = 8) -> Path:
    """Plain-text prompts; every other row is an eval row when ``gold`` (none otherwise)."""
    rows = []
    for i in range(n):
        row = {"id": f"q{i}", "prompt": f"Pick a letter for item {i}."}
        if gold:
            row.update(answer="abcde"[i % 5], split="eval" if i % 2 else "train")
        if long_line is not None and i == long_line - 1:
            row["prompt"] = LONG
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(task: Path, model: Path, **task_keys):
    data = {
        "model": {"path": str(model)},
        "task": {"name": None, "file": str(task), "train_size": None, "eval_size": None, **task_keys},
        "generation": {"backend": "hf"},
    }
    return validate_config(data)


def test_plain_text_to_a_chat_model_warns_and_chat_template_renders_it(tmp_path, tiny_model_dir):
    task = _task(tmp_path / "t.jsonl")
    cfg = _cfg(task, tiny_model_dir)
    skipped, warnings = check_inputs(cfg, load_task(cfg), str(tiny_model_dir))
    assert not skipped
    assert len(warnings) == 1 and "plain text, but the model has a chat template" in warnings[0]
    assert "task.chat_template: true" in warnings[0]
    on = _cfg(task, tiny_model_dir, chat_template=True)
    assert check_inputs(on, load_task(on), str(tiny_model_dir)) == (set(), [])
    prompts = train_prompts(on, load_task(on), 1)
    assert prompts[0]["prompt"] == [{"role": "user", "content": "Pick a letter for item 0."}]
    assert eval_split(on, load_task(on))[0][0]["prompt"][0]["role"] == "user"
    off = _cfg(task, tiny_model_dir, chat_template=False)
    assert check_inputs(off, load_task(off), str(tiny_model_dir)) == (set(), [])
    assert train_prompts(off, load_task(off), 1)[0]["prompt"] == "Pick a letter for item 0."


def test_a_too_long_prompt_is_an_error_naming_its_line_or_skipped_and_counted(tmp_path, tiny_model_dir):
    task = _task(tmp_path / "t.jsonl", long_line=4)
    cfg = _cfg(task, tiny_model_dir, chat_template=False)
    with pytest.raises(InputError) as info:
        check_inputs(cfg, load_task(cfg), str(tiny_model_dir))
    msg = str(info.value)
    assert msg.startswith(f"{task}:4: the prompt has 1100 tokens, the model's context is 1024 tokens"), msg
    assert "task.long_prompts=skip" in msg
    skip = _cfg(task, tiny_model_dir, chat_template=False, long_prompts="skip")
    t = load_task(skip)
    skipped, warnings = check_inputs(skip, t, str(tiny_model_dir))
    assert skipped == {"q3"}
    assert warnings == [
        "1 prompt(s) longer than the model's context of 1024 tokens were left out (the longest has 1100 "
        "tokens) (task.long_prompts: skip)"
    ]
    prompts, gold = eval_split(skip, t, skipped)
    assert "q3" not in {p["prompt_id"] for p in prompts} | set(gold) and len(prompts) == 3


def test_a_task_file_without_gold_answers_warns_that_nothing_can_be_measured(tmp_path, tiny_model_dir):
    task = _task(tmp_path / "t.jsonl", gold=False)
    cfg = _cfg(task, tiny_model_dir, chat_template=False)
    _skipped, warnings = check_inputs(cfg, load_task(cfg), str(tiny_model_dir))
    assert warnings == [
        f"the eval split is empty: no row of {task} has a gold answer in 'answer': no accuracy can be "
        "measured (every eval metric stays '-') and the collapse guard has no evaluation metrics to judge"
    ]
    table = round_table([{"round": 0, "eval/prompts": 0}], [1])
    assert table.splitlines()[-1].startswith("(warning: the eval split is empty")


def test_a_task_file_that_is_not_utf8_names_its_line(tmp_path):
    task = _task(tmp_path / "t.jsonl")
    data = task.read_bytes().split(b"\n")
    data[4] = data[4].replace(b"Pick", b"Pick \xff")
    task.write_bytes(b"\n".join(data))
    with pytest.raises(InputError) as info:
        load_task(validate_config({"task": {"name": None, "file": str(task)}}))
    assert str(info.value).startswith(f"{task}:5: not UTF-8 text (byte 0xff at column ")


def _rollout(pid: str, text: str, reason: str, k: int) -> dict:
    return {"prompt_id": pid, "prompt": "q", "sample_index": k, "completion": text, "finish_reason": reason}


@pytest.mark.parametrize(
    "vote_truncated, label, votes_from_cut",
    [(True, "1", 0.75), (False, "2", 0.0)],
)
def test_truncated_samples_can_be_left_out_of_the_vote(vote_truncated, label, votes_from_cut):
    """Three samples cut at max_tokens read "1" from an unfinished reasoning; one finished sample
    says 2. Left out of the vote, they neither vote nor earn a reward."""
    group = [
        _rollout("p", "3 + 4 = 7, 7 - 6 = 1. The answer is 1", "length", 0),
        _rollout("p", "The answer is 1", "length", 1),
        _rollout("p", "4 - 3 = 1. The answer is 1", "length", 2),
        _rollout("p", "The answer is 2.", "stop", 3),
    ]
    scored = score_rollouts(group, "answer_is", vote_truncated=vote_truncated)
    assert {r["pseudo_label"] for r in scored} == {label}
    assert truncated_vote_share(scored) == votes_from_cut
    for r in scored[:3]:
        if vote_truncated:
            assert r["extracted"] == "1" and r["reward"] == 1.0
        else:
            assert r["extracted"] is None and r["reward"] is None and r["truncated_excluded"]
    assert scored[3]["reward"] == (0.0 if vote_truncated else 1.0)


def test_the_round_table_warns_when_the_votes_come_from_truncated_samples():
    lines = round_table([{"round": 1, "train/truncated_vote_share": 0.8}], [1]).splitlines()
    assert lines[-1] == (
        "(warning: 80% of round 1's votes came from samples cut at the token limit (their answers were read "
        "from unfinished completions): raise generation.max_tokens, or set scoring.vote_truncated: false to "
        "leave them out of the vote)"
    )
    assert "warning" not in round_table([{"round": 1, "train/truncated_vote_share": 0.1}], [1])


@pytest.mark.slow
@pytest.mark.parametrize("vote_truncated", [True, False])
def test_a_run_on_a_task_without_gold_says_so_loudly(tmp_path, tiny_model_dir, vote_truncated):
    """A real run on a user task without gold answers, with a too-long prompt skipped and the chat
    template on: the warnings reach the log, summary.json, the round table and the report; the
    truncated samples' share of the votes is what scores.jsonl says."""
    from selfimprove.loop.report import write_report

    task = _task(tmp_path / "t.jsonl", gold=False, long_line=3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"""
name: no-gold
model: {{path: "{tiny_model_dir}"}}
task: {{name: null, file: "{task}", train_size: null, eval_size: null, chat_template: true, long_prompts: skip}}
scoring:
  extractor: regex
  extractor_options: {{pattern: "([a-z])", which: first}}
  vote_truncated: {str(vote_truncated).lower()}
generation: {{backend: hf, n: 4, max_tokens: 6, batch_size: 8}}
training: {{method: sft, max_steps: 1, batch_size: 2}}
data: {{sft: {{drop_truncated: false, min_majority_ratio: 0.0}}}}
evaluation: {{n: 2, k: [1, 2]}}
loop: {{rounds: 1}}
"""
    )
    logs: list[str] = []
    run_dir = tmp_path / "run"
    summary = run(load_config(cfg_path), run_dir, progress=False, log=logs.append)
    assert any(m.startswith("WARNING: the eval split is empty: no row of") for m in logs), logs
    assert any("were left out" in m for m in logs)
    assert summary["skipped_prompts"] == ["q2"] and len(summary["warnings"]) == 2
    rollouts = [json.loads(x) for x in (run_dir / "round_01" / "rollouts.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in rollouts} == {f"q{i}" for i in range(8)} - {"q2"}
    assert all(r["prompt"][0]["role"] == "user" for r in rollouts)  # task.chat_template: true
    scored = [json.loads(x) for x in (run_dir / "round_01" / "scores.jsonl").read_text().splitlines()]
    voting = [r for r in scored if r["extracted"] is not None]
    share = sum(r["finish_reason"] == "length" for r in voting) / len(voting) if voting else 0.0
    m = summary["history"][-1]
    assert m["eval/prompts"] == 0 and "eval/pass@1" not in m
    assert m["train/truncated_vote_share"] == pytest.approx(share)
    if vote_truncated:
        assert share >= 0.5  # a random model rarely stops by itself within 6 tokens
    else:
        assert share == 0.0 and all(r["truncated_excluded"] for r in scored if r["finish_reason"] == "length")
    table = round_table(summary["history"], [1, 2])
    assert "(warning: the eval split is empty" in table
    assert ("votes came from samples cut at the token limit" in table) == vote_truncated
    md = Path(write_report(run_dir)["md"]).read_text()
    warnings_section = md.split("## Warnings")[1].split("## Rounds")[0]
    assert "the eval split is empty: no row of" in warnings_section and "were left out" in warnings_section
    assert ("votes came from samples cut" in warnings_section) == vote_truncated
