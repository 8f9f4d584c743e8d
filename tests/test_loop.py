"""A real end-to-end run: tiny model, HF generator, 2 rounds of majority-filtered SFT.

The tiny model is random, so answers come from a permissive extractor (the first letter a-e of a
completion): the point is the plumbing and the numbers, which the tests recompute by hand from
the files the run wrote. A recording reward (loaded by "module:function", as users would plug in
their own) captures every column the rewards were handed, to prove no gold reached them.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from selfimprove.loop.config import load_config
from selfimprove.loop.runner import round_table, run

GOLD_KEYS = {"answer", "gold", "label", "solution", "ground_truth", "target"}
REWARD_CALLS: list[dict] = []


def recording_reward(completions, **columns):
    """A label-free reward that records what it was given (column names and prompt ids)."""
    REWARD_CALLS.append({"columns": sorted(columns), "n": len(completions), "columns_values": columns})
    return [0.0 for _ in completions]


def write_letter_task(path: Path, n: int = 16, seed: int = 0) -> dict[str, str]:
    """A JSONL task whose gold answers are letters; returns the eval gold by id."""
    rng = random.Random(seed)
    gold = {}
    with open(path, "w") as fh:
        for i in range(n):
            split = "eval" if i % 2 else "train"
            answer = rng.choice("abcde")
            fh.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "prompt": [{"role": "user", "content": f"Pick a letter for item {i}."}],
                        "answer": answer,
                        "split": split,
                    }
                )
                + "\n"
            )
            if split == "eval":
                gold[f"q{i}"] = answer
    return gold


def letter_config(tmp: Path, model_dir: Path, extra: str = "") -> Path:
    """A 2-round SFT config on the letter task (HF backend, tiny sizes)."""
    text = f"""
name: tiny-loop
description: plumbing test on a random tiny model
model:
  path: {model_dir}
task:
  name: null
  file: {tmp / "task.jsonl"}
  train_size: null
  eval_size: null
scoring:
  extractor: regex
  extractor_options: {{pattern: "([a-e])", which: first}}
  rewards:
    - name: majority_vote
    - name: test_loop:recording_reward
      weight: 0.0
generation:
  backend: hf
  n: 4
  max_tokens: 10
  batch_size: 4
data:
  sft: {{drop_truncated: false}}
training:
  method: sft
  max_steps: 2
  batch_size: 4
  learning_rate: 0.01
  lora: {{rank: 8, alpha: 16}}
evaluation:
  n: 4
  k: [1, 4]
loop:
  rounds: 2
{extra}
"""
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """Run the 2-round loop once for the whole module."""
    tmp = tmp_path_factory.mktemp("loop")
    gold = write_letter_task(tmp / "task.jsonl")
    cfg = load_config(letter_config(tmp, tiny_model_dir))
    REWARD_CALLS.clear()
    logs: list[str] = []
    summary = run(cfg, tmp / "run", progress=False, log=logs.append, command=["pytest"])
    return {"dir": tmp / "run", "cfg": cfg, "summary": summary, "gold": gold, "logs": logs, "tmp": tmp}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_run_folder_layout(finished_run):
    d = finished_run["dir"]
    for name in ("config.yaml", "manifest.json", "state.json", "metrics.jsonl", "summary.json"):
        assert (d / name).is_file(), name
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["config_hash"] == finished_run["cfg"].fingerprint()
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest["packages"])
    assert manifest["seeds"] == {"loop": 0, "task": 0} and manifest["starts"][0]["command"] == ["pytest"]
    state = json.loads((d / "state.json").read_text())
    assert state["finished"] and state["rounds"]["0"]["done"] == ["evaluate", "metrics"]
    for r in ("1", "2"):
        assert state["rounds"][r]["done"] == ["generate", "score", "build", "train", "evaluate", "metrics"]
    for r in (1, 2):
        rd = d / f"round_{r:02d}"
        for name in (
            "rollouts.jsonl",
            "scores.jsonl",
            "train_data.jsonl",
            "metrics.json",
            "eval/rollouts.jsonl",
        ):
            assert (rd / name).is_file(), f"round {r}: {name}"
        assert (rd / "adapter" / "adapter_model.safetensors").is_file()
        assert not (rd / "adapter.tmp").exists()
        rollouts = _jsonl(rd / "rollouts.jsonl")
        assert len(rollouts) == 8 * 4  # 8 train prompts x n=4
        assert len(_jsonl(rd / "eval" / "rollouts.jsonl")) == 8 * 4
    # Round r generates with the adapter of round r-1 (the base model in round 1).
    assert {x["adapter"] for x in _jsonl(d / "round_01" / "rollouts.jsonl")} == {None}
    r2 = {x["adapter"] for x in _jsonl(d / "round_02" / "rollouts.jsonl")}
    assert r2 == {str((d / "round_01" / "adapter").resolve())}
    assert {x["adapter"] for x in _jsonl(d / "round_02" / "eval" / "rollouts.jsonl")} == {
        str((d / "round_02" / "adapter").resolve())
    }


@pytest.mark.slow
def test_metrics_recomputed_by_hand(finished_run):
    d, gold = finished_run["dir"], finished_run["gold"]
    history = _jsonl(d / "metrics.jsonl")
    assert [m["round"] for m in history] == [0, 1, 2]
    for m in history:
        rd = d / f"round_{m['round']:02d}"
        groups: dict[str, list[str | None]] = {}
        for x in _jsonl(rd / "eval" / "rollouts.jsonl"):
            hit = re.search("([a-e])", x["completion"])
            groups.setdefault(x["prompt_id"], []).append(hit.group(1) if hit else None)
        assert set(groups) == set(gold)
        pass1 = sum(sum(a == gold[p] for a in v) / len(v) for p, v in groups.items()) / len(groups)
        pass4 = sum(any(a == gold[p] for a in v) for p, v in groups.items()) / len(groups)
        assert m["eval/pass@1"] == pytest.approx(pass1)
        assert m["eval/pass@4"] == pytest.approx(pass4)  # n == k: pass@k is "any sample correct"
        assert 0 <= m["eval/pass@1"] <= m["eval/pass@4"] <= 1
        assert 0 <= m["eval/maj@4"] <= m["eval/pass@4"]
        top = [max(v.count(a) for a in v) / len(v) if any(v) else 0 for v in groups.values()]
        ratio = sum(max((v.count(a) for a in v if a), default=0) / len(v) for v in groups.values()) / len(
            groups
        )
        assert m["eval/majority_ratio"] == pytest.approx(ratio), top
        # distinct majority answers across prompts: exact where the vote is clear, bounded by ties
        tops = []
        for v in groups.values():
            counts = {a: v.count(a) for a in v if a is not None}
            best = max(counts.values(), default=0)
            tops.append({a for a, c in counts.items() if c == best})
        clear = {next(iter(t)) for t in tops if len(t) == 1}
        anywhere = set().union(*tops)
        assert len(clear) / len(groups) <= m["eval/answer_diversity"] <= len(anywhere) / len(groups)
        assert 0 < m["eval/mean_length"] <= 10
    for m in history[1:]:
        assert m["data/rows"] > 0 and m["train/steps"] == 2
        assert m["train/loss"] > 0 and m["train/tokens"] > 0
        assert 0 <= m["train/label_accuracy"] <= 1 and 0 <= m["train/reward_accuracy"] <= 1
        assert m["time/generate"] > 0 and m["time/train"] > 0


@pytest.mark.slow
def test_label_and_reward_accuracy_mean_the_same_as_in_compute_diagnostics(finished_run):
    """train/label_accuracy and train/reward_accuracy of a round equal compute_diagnostics' values
    of the same names on that round's scores.jsonl (one definition, selfimprove.eval)."""
    from selfimprove.score.diagnostics import compute_diagnostics

    rows = [json.loads(line) for line in (finished_run["tmp"] / "task.jsonl").read_text().splitlines()]
    train_gold = {r["id"]: r["answer"] for r in rows if r["split"] == "train"}
    history = _jsonl(finished_run["dir"] / "metrics.jsonl")
    for r in (1, 2):
        scored = _jsonl(finished_run["dir"] / f"round_{r:02d}" / "scores.jsonl")
        d = compute_diagnostics(scored, gold=train_gold)
        m = next(x for x in history if x["round"] == r)
        assert d["label_accuracy"] == pytest.approx(m["train/label_accuracy"])
        assert d["reward_accuracy"] == pytest.approx(m["train/reward_accuracy"])


@pytest.mark.slow
def test_training_changed_the_adapter(finished_run):
    from safetensors.torch import load_file

    d = finished_run["dir"]
    a1 = load_file(str(d / "round_01" / "adapter" / "adapter_model.safetensors"))
    a2 = load_file(str(d / "round_02" / "adapter" / "adapter_model.safetensors"))
    b_keys = [k for k in a1 if "lora_B" in k]
    assert b_keys and any(a1[k].abs().max() > 0 for k in b_keys)  # LoRA B starts at zero
    # init: continue -> round 2 trained further on top of round 1's adapter.
    assert any((a1[k] - a2[k]).abs().max() > 0 for k in a1)


@pytest.mark.slow
def test_no_gold_reaches_training(finished_run):
    d, gold = finished_run["dir"], finished_run["gold"]
    for r in (1, 2):
        rows = _jsonl(d / f"round_{r:02d}" / "train_data.jsonl")
        assert rows
        for row in rows:
            assert not GOLD_KEYS & set(row)
            assert set(row) == {"prompt", "completion"}
            # Train prompts only: no eval prompt (whose gold is known) is trained on.
            assert not any(f"item {int(p[1:])}." in json.dumps(row["prompt"]) for p in gold)
        for rec in _jsonl(d / f"round_{r:02d}" / "scores.jsonl"):
            assert not GOLD_KEYS & set(rec) and not GOLD_KEYS & set(rec.get("meta") or {})
    assert REWARD_CALLS, "the recording reward was never called"
    for call in REWARD_CALLS:
        assert not GOLD_KEYS & set(call["columns"]), call["columns"]
        assert not any(c.startswith("gold") for c in call["columns"])
        # Only train prompts were scored.
        assert set(call["columns_values"]["prompt_id"]) <= {f"q{i}" for i in range(0, 16, 2)}


@pytest.mark.slow
def test_summary_and_round_table(finished_run):
    s = finished_run["summary"]
    assert s["completed"] is True and s["rounds_completed"] == 2 and s["stopped"] is None
    hist = s["history"]
    scores = {m["round"]: m["eval/majority_ratio"] for m in hist}
    assert s["best_round"] in scores and s["best_round_score"] == max(scores.values())
    assert s["final_adapter"].endswith("round_02/adapter")
    table = round_table(hist, [1, 4])
    lines = table.splitlines()
    # the untrained tiny model often runs to max_tokens: without an answer (eval), or with one
    # read from a cut completion (votes); then the table says so, one line per warning
    eval_cut = hist[-1]["eval/truncated_no_answer_rate"] >= 0.2
    votes_cut = hist[-1]["train/truncated_vote_share"] >= 0.2
    assert lines[0].split()[:4] == ["round", "pass@1", "maj@4", "pass@4"]
    assert len(lines) == 5 + eval_cut + votes_cut
    assert any("eval samples stopped at the token limit" in line for line in lines[5:]) == eval_cut
    assert any("votes came from samples cut at the token limit" in line for line in lines[5:]) == votes_cut
    # the share is what scores.jsonl says: votes (samples with an answer) that stopped at max_tokens
    scored = _jsonl(finished_run["dir"] / "round_02" / "scores.jsonl")
    voting = [x for x in scored if x["extracted"] is not None]
    assert hist[-1]["train/truncated_vote_share"] == pytest.approx(
        sum(x["finish_reason"] == "length" for x in voting) / len(voting)
    )
    assert hist[-1]["eval/prompts"] == 8
    base = hist[0]["eval/constant_baseline"]
    assert 0 < base <= 1 and f"scores {base:.3f}" in lines[4]
    assert any("round 2: train" in line for line in finished_run["logs"])


def test_round_table_warns_when_samples_stop_at_the_token_limit_without_an_answer():
    from selfimprove.score.diagnostics import group_diagnostics as diagnostics

    cut = {"completion": "12+34: 2+4=6, 1+3", "finish_reason": "length", "completion_tokens": 16}
    done = {"completion": "The answer is 4.", "finish_reason": "stop", "completion_tokens": 16}
    # an answer found before the limit is not counted: only cut-off samples without one
    long_but_answered = {"completion": "The answer is 4. And", "finish_reason": "length"}
    groups = {"p1": [cut, cut, cut, done], "p2": [cut, long_but_answered, done, done]}
    answers = {"p1": [None, None, None, "4"], "p2": [None, "4", "4", "4"]}
    d = diagnostics(groups, answers)
    assert d["truncated_no_answer_rate"] == 0.5 and d["no_answer_rate"] == 0.5
    row = {"round": 2, **{f"eval/{k}": v for k, v in d.items()}}
    table = round_table([row], [1])
    assert "50% of round 2's eval samples stopped at the token limit" in table.splitlines()[-1]
    assert "generation.max_tokens" in table
    fine = diagnostics({"p1": [done, done]}, {"p1": ["4", "4"]})
    assert fine["truncated_no_answer_rate"] == 0.0
    assert "token limit" not in round_table([{"round": 0, **{f"eval/{k}": v for k, v in fine.items()}}], [1])


@pytest.mark.slow
def test_report_of_real_run(finished_run):
    from selfimprove.loop.report import write_report

    paths = write_report(finished_run["dir"])
    md = Path(paths["md"]).read_text()
    assert "tiny-loop" in md and "| round |" in md.replace("|  round", "| round")
    for png in ("accuracy.png", "agreement.png", "length.png"):
        assert (finished_run["dir"] / "report" / png).stat().st_size > 5000


def test_supervised_baseline_is_rewarded_by_the_gold_verifier_alone(tmp_path, tiny_model_dir):
    """The SUPERVISED baseline's reward is the gold verifier only: no label-free majority vote is
    mixed in (the default vote reward stays out when only a gold reward is configured), and SFT
    keeps exactly the samples whose answer is the gold one (`data.sft.select: verifier` finds the gold
    verifier's score without a `verifier_key`)."""
    write_letter_task(tmp_path / "task.jsonl")
    task_rows = [json.loads(line) for line in (tmp_path / "task.jsonl").read_text().splitlines()]
    train_gold = {r["id"]: r["answer"] for r in task_rows if r["split"] == "train"}
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "supervised=true",
            "scoring.rewards=[{name: gold_verifier}]",
            "data.sft.select=verifier",
            "data.sft.min_majority_ratio=0.0",
            "generation.n=8",
            "generation.temperature=1.5",
            "loop.rounds=1",
        ],
    )
    run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    scored = _jsonl(tmp_path / "run" / "round_01" / "scores.jsonl")
    right = [x["extracted"] is not None and x["extracted"] == train_gold[x["prompt_id"]] for x in scored]
    assert 0 < sum(right) < len(scored)  # both kinds of samples occur, so the test can tell them apart
    for rec, ok in zip(scored, right, strict=True):
        assert set(rec["rewards"]) == {"gold_verifier"}
        assert rec["rewards"]["gold_verifier"] == float(ok)
        assert rec["reward"] == float(ok)
        assert rec["pseudo_label"] is not None or rec["majority_ratio"] == 0.0  # the vote is still recorded
    rows = _jsonl(tmp_path / "run" / "round_01" / "train_data.jsonl")
    assert len(rows) == sum(right)
    # The gold reward is positive exactly for the samples evaluation counts correct.
    metrics = [m for m in _jsonl(tmp_path / "run" / "metrics.jsonl") if m.get("round") == 1]
    assert metrics[-1]["train/reward_accuracy"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("on_empty", ["skip", "stop"])
def test_round_without_data(tmp_path, tiny_model_dir, on_empty):
    """An extractor that finds no answers gives no pseudo-labels, so no data: say so, keep the adapter."""
    write_letter_task(tmp_path / "task.jsonl", n=8)
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "scoring.extractor_options.pattern=(QQQQ)",
            "generation.n=2",
            "evaluation.n=2",
            "evaluation.k=[1,2]",
            "evaluation.base=false",
            f"loop.on_empty_data={on_empty}",
        ],
    )
    logs: list[str] = []
    summary = run(cfg, tmp_path / "run", progress=False, log=logs.append)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    rs = state["rounds"]["1"]
    assert rs["rows"] == 0 and rs["skipped_training"] and rs["adapter"] is None
    assert (
        "no_pseudo_label"
        in json.loads((tmp_path / "run" / "round_01" / "build_stats.json").read_text())["dropped"]
    )
    assert any("round 1: no training data" in line for line in logs)
    assert not (tmp_path / "run" / "round_01" / "adapter").exists()
    if on_empty == "stop":
        assert summary["stopped"].startswith("round 1 produced no training data")
        assert not (tmp_path / "run" / "round_02").exists()
    else:
        assert summary["stopped"] is None and state["rounds"]["2"]["skipped_training"]
        assert summary["final_adapter"] is None
        assert [m["note"] for m in summary["history"]] == ["no data: training skipped"] * 2


@pytest.mark.slow
def test_ttrl_grpo_round_with_abstaining_vote(tmp_path, tiny_model_dir):
    """The TTRL path end to end (vote on n, GRPO on n_train, `pseudo_label` reward): prompts whose
    vote share is under `scoring.min_majority_ratio` abstain and give no GRPO row (before, they were
    kept with a None label: every sample scored 0, no signal), the others train on the voted label."""
    write_letter_task(tmp_path / "task.jsonl", n=16)
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "loop.rounds=1",
            "training.method=grpo",
            "training.batch_size=4",
            "training.max_steps=2",
            "training.trl={beta: 0.0}",
            "scoring.rewards=[{name: pseudo_label}]",
            # Any printable character is an answer: the random model then spreads its samples over
            # many answers and the vote's share ranges from 1/8 upward.
            "scoring.extractor_options={pattern: '([!-~])', which: first}",
            "scoring.min_majority_ratio=0.25",
            "generation.n=8",
            "generation.n_train=4",
            "generation.temperature=1.0",
            "evaluation.base=false",
            "data={grpo: {columns: [pseudo_label]}}",
        ],
    )
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    d = tmp_path / "run" / "round_01"
    scored = _jsonl(d / "scores.jsonl")
    by_prompt: dict[str, dict] = {}
    for rec in scored:
        by_prompt.setdefault(rec["prompt_id"], rec)
        assert (rec["pseudo_label"] is None) == (rec["majority_ratio"] < 0.25)
    voted = {pid: r["pseudo_label"] for pid, r in by_prompt.items() if r["pseudo_label"] is not None}
    abstained = len(by_prompt) - len(voted)
    assert 0 < abstained < len(by_prompt)  # both kinds occur, so the test can tell them apart
    rows = _jsonl(d / "train_data.jsonl")
    assert {r["prompt_id"]: r["pseudo_label"] for r in rows} == voted
    stats = json.loads((d / "build_stats.json").read_text())
    assert stats["dropped"] == {"abstained": abstained} and stats["kept"] == len(voted)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["rounds"]["1"]["train_steps"] == 2
    assert summary["rounds_completed"] == 1 and (d / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_guard_rollback_then_stop(tmp_path, tiny_model_dir):
    """A guard rule that always fires: round 1 rolls back to the base, round 2 exhausts the rollbacks and stops."""
    write_letter_task(tmp_path / "task.jsonl", n=8)
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "generation.n=2",
            "evaluation.n=2",
            "evaluation.k=[1,2]",
            "training.max_steps=1",
            "loop.rounds=3",
            "loop.guard.action=rollback",
            "loop.guard.max_rollbacks=1",
            # Lengths cannot reach 1.5x round 0's (max_tokens caps them), so every round is flagged.
            "loop.guard.min_length_ratio=1.5",
        ],
    )
    logs: list[str] = []
    summary = run(cfg, tmp_path / "run", progress=False, log=logs.append)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["rollbacks"] == 1 and state["rounds"]["1"]["rolled_back"]
    assert state["rounds"]["2"]["adapter_in"] is None  # rolled back to the base model
    assert {x["adapter"] for x in _jsonl(tmp_path / "run" / "round_02" / "rollouts.jsonl")} == {None}
    assert summary["collapsed_rounds"] == [1, 2]
    assert summary["stopped"] == "collapse guard stopped the loop after round 2"
    assert not (tmp_path / "run" / "round_03").exists()
    assert summary["best_round"] == 0 and summary["best_adapter"] is None
    assert any("mean completion length fell" in line for line in logs)
    assert any("rolled back to the base model" in line for line in logs)


@pytest.mark.slow
@pytest.mark.vllm
def test_loop_on_vllm_with_adapter_hot_swap(tmp_path, tiny_model_dir, vllm_generator):
    """The product path: the shared vLLM engine samples, the loop trains, vLLM serves the new adapter."""
    write_letter_task(tmp_path / "task.jsonl", n=8)
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "generation.backend=vllm",
            "loop.rounds=1",
            "scoring.rewards=[{name: majority_vote}]",
            # The random model spreads its samples over 256 byte tokens: match any printable ASCII
            # character so that every group has answers and the round surely has training data.
            "scoring.extractor_options={pattern: '([!-~])', which: first}",
        ],
    )
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda m: None, generator=vllm_generator)
    d = tmp_path / "run"
    rollouts = _jsonl(d / "round_01" / "rollouts.jsonl")
    assert len(rollouts) == 4 * 4 and {x["backend"] for x in rollouts} == {"vllm"}
    ev = _jsonl(d / "round_01" / "eval" / "rollouts.jsonl")
    adapter = str((d / "round_01" / "adapter").resolve())
    assert {x["adapter"] for x in ev} == {adapter} and all(x["adapter_version"] for x in ev)
    assert summary["rounds_completed"] == 1 and 0 <= summary["history"][-1]["eval/pass@1"] <= 1
    # The engine is the caller's: still usable after the run.
    from selfimprove.generate.base import Sampling

    out = vllm_generator.generate(["hi"], Sampling(n=1, max_tokens=2, temperature=0.0))
    assert len(out) == 1


@pytest.mark.slow
@pytest.mark.vllm
def test_loop_pairwise_judge_dpo_on_vllm(tmp_path, tiny_model_dir, vllm_generator):
    """kind: pairwise on the shared vLLM engine: the policy judges pairs of its own rollouts, DPO trains.

    The engine serves the trained adapter merged into its weights (``adapter_serving="merged"``,
    what a generator built by the loop does on CPU); the test above covers the LoRA kernels.
    """
    write_letter_task(tmp_path / "task.jsonl", n=8)
    cfg = load_config(
        letter_config(tmp_path, tiny_model_dir),
        [
            "generation.backend=vllm",
            "loop.rounds=1",
            "evaluation.n=2",
            "evaluation.k=[1,2]",
            "evaluation.base=false",
            "scoring.rewards=[{name: majority_vote, weight: 0.0}]",
            "scoring.extractor_options={pattern: '([!-~])', which: first}",
            "scoring.judge={kind: pairwise, options: {mode: logprob, opponents: 2}}",
            "data.dpo={strategy: best_vs_worst, score_key: judge_score, drop_truncated: false}",
            "training.method=dpo",
            "training.max_steps=1",
        ],
    )
    vllm_generator.adapter_serving = "merged"
    try:
        summary = run(cfg, tmp_path / "run", progress=False, log=lambda m: None, generator=vllm_generator)
        # The round's eval ran on the merged adapter: its one merged copy is the engine's weights.
        adapter = (tmp_path / "run" / "round_01" / "adapter").resolve()
        assert vllm_generator._served[0] == str(adapter)
        assert len(list(vllm_generator._merge_root.iterdir())) == 1
    finally:
        vllm_generator.adapter_serving = "lora"
    d = tmp_path / "run" / "round_01"
    ev = _jsonl(d / "eval" / "rollouts.jsonl")
    assert {x["adapter"] for x in ev} == {str(adapter)} and all(x["adapter_version"] for x in ev)
    scored = _jsonl(d / "scores.jsonl")
    assert len(scored) == 4 * 4
    for x in scored:
        js = x["judge_score"]
        assert js is None or 0.0 <= js <= 1.0
        assert x["rewards"]["judge"] == js
        assert x["reward"] == (None if js is None else pytest.approx(js))  # majority_vote weighs 0
    # 2 opponents per rollout: 4 pairs per prompt of 4, each judged in both orders
    report = json.loads((d / "judge_report.json").read_text())
    assert report["kind"] == "pairwise" and report["pairs"] == 4 * 4 and report["calls"] == 4 * 4 * 2
    # the letters' probabilities are read on vLLM: every call parses, every rollout is scored
    assert report["logprob"] == report["calls"] and report["failure_rate"] == 0.0
    assert all(x["judge_score"] is not None for x in scored) and report["scored_rate"] == 1.0
    m = summary["history"][-1]
    assert m["judge/failure_rate"] == report["failure_rate"]
    assert m["judge/position_consistency"] == report["position_consistency"]
    assert 0 <= m["judge/first_position_preference"] <= 1
    # mean soft win rate within a prompt is exactly 1/2 (every comparison gives p and 1 - p)
    by_prompt: dict[str, list[float]] = {}
    for x in scored:
        by_prompt.setdefault(x["prompt_id"], []).append(x["judge_score"])
    for values in by_prompt.values():
        assert sum(values) / len(values) == pytest.approx(0.5)
    assert json.loads((d / "build_stats.json").read_text())["kept"] > 0  # DPO pairs were built
    assert summary["rounds_completed"] == 1


@pytest.mark.parametrize("resample", [False, True])
def test_train_prompts_per_round(resample):
    """A fixed self-training set, or fresh prompts every round; never a gold field, eval split untouched."""
    from selfimprove.loop.config import validate_config
    from selfimprove.loop.inputs import eval_split, load_task, train_prompts

    cfg = validate_config({"task": {"train_size": 12, "eval_size": 6, "resample_each_round": resample}})
    task = load_task(cfg)
    r1, r2 = train_prompts(cfg, task, 1), train_prompts(cfg, task, 2)
    ids1, ids2 = [p["prompt_id"] for p in r1], [p["prompt_id"] for p in r2]
    assert len(ids1) == len(ids2) == 12
    assert (ids1 != ids2) is resample
    for p in r1 + r2:
        assert not GOLD_KEYS & set(p) and not GOLD_KEYS & set(p.get("meta") or {})
    eval_ids = set(eval_split(cfg, task)[0][i]["prompt_id"] for i in range(6))
    assert not eval_ids & (set(ids1) | set(ids2))


@pytest.mark.slow
def test_a_recipe_with_vllm_only_options_runs_on_the_hf_backend(tmp_path, tiny_model_dir):
    """The README's own example: configs/rejection_sft.yaml with generation.backend=hf (it used to
    stop at round 0 on `enforce_eager`, after the run folder was written). A short real run."""
    recipe = Path(__file__).resolve().parent.parent / "configs" / "rejection_sft.yaml"
    assert "enforce_eager" in recipe.read_text()
    cfg = load_config(
        recipe,
        [
            "generation.backend=hf",
            f"model.path={tiny_model_dir}",
            "task.train_size=4",
            "task.eval_size=4",
            "generation.n=2",
            "generation.max_tokens=6",
            "evaluation.n=2",
            "evaluation.k=[1,2]",
            "training.max_steps=1",
            "training.batch_size=2",
            "loop.rounds=1",
        ],
    )
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert summary["completed"] and summary["rounds_completed"] == 1
    rollouts = _jsonl(tmp_path / "run" / "round_01" / "rollouts.jsonl")
    assert len(rollouts) == 4 * 2 and {x["backend"] for x in rollouts} == {"hf"}
    assert len(_jsonl(tmp_path / "run" / "round_01" / "eval" / "rollouts.jsonl")) == 4 * 2


def test_engines_give_other_models_the_backend_options_but_not_the_policys_lora(monkeypatch):
    import selfimprove.generate as generate
    from selfimprove.loop.engines import Engines

    built = []

    class Engine:
        def close(self):
            built.append("closed")

    def fake_build(backend, model, **options):
        built.append((backend, model, options))
        return Engine()

    monkeypatch.setattr(generate, "build_generator", fake_build)
    cfg = load_config(
        {
            "generation": {"backend": "vllm", "vllm": {"kv_cache_gb": 2, "enforce_eager": True}},
            "scoring": {"judge": {"kind": "pointwise", "model": "/models/judge"}},
        }
    )
    engines = Engines(cfg, "/models/policy", log=lambda _m: None)
    assert engines.policy is not None
    engines.other("/models/judge")
    (_, policy_model, policy_opts), (_, judge_model, judge_opts) = built
    assert policy_model == "/models/policy" and policy_opts["enable_lora"] is True
    assert judge_model == "/models/judge"
    assert judge_opts == {"kv_cache_gb": 2, "enforce_eager": True}  # the user's vllm section, no LoRA or seed
    engines.close()
    assert built.count("closed") == 2
