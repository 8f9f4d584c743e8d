"""Every metric of a finished round, computed from the files of its folder (gold is read here only)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from selfimprove.loop.components import task_extractor
from selfimprove.loop.config import RunConfig
from selfimprove.loop.inputs import eval_split, train_gold
from selfimprove.runs.io import read_json, read_jsonl


def round_metrics(
    config: RunConfig,
    task: Any,
    r: int,
    rdir: Path,
    round_state: Mapping[str, Any],
    skip: Set[str] = frozenset(),
) -> dict[str, Any]:
    """The metrics of round ``r`` (``eval/*``, ``train/*``, ``judge/*``, ``data/rows``, ``time/*``).

    ``round_state``: the round's entry of state.json (losses, token counts, stage times); ``skip``:
    prompt ids left out as too long.
    """
    from selfimprove.eval import eval_metrics, group_by_prompt, label_accuracy, reward_accuracy
    from selfimprove.score.diagnostics import group_diagnostics, truncated_vote_share

    rs = round_state
    m: dict[str, Any] = {"round": r}
    extract = task_extractor(config, task)
    prompts, gold = eval_split(config, task, skip)
    # The size of the eval split: 0 means every eval metric is missing (round_table warns).
    m["eval/prompts"] = len(prompts)
    ev_recs = read_jsonl(rdir / "eval" / "rollouts.jsonl")
    acc = eval_metrics(ev_recs, gold, extract, task.check, ks=config.evaluation.k)
    m.update({f"eval/{k}": v for k, v in acc.items()})
    scores_path = rdir / "scores.jsonl"
    if scores_path.exists():
        scored = read_jsonl(scores_path)
        groups = group_by_prompt(scored)
        answers = {pid: [x.get("extracted") for x in recs] for pid, recs in groups.items()}
        m.update({f"train/{k}": v for k, v in group_diagnostics(groups, answers).items()})
        rewards = [x["reward"] for x in scored if x.get("reward") is not None]
        if rewards:
            mean = sum(rewards) / len(rewards)
            m["train/reward_mean"] = mean
            m["train/reward_std"] = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards))
        m["train/abstain_rate"] = sum(recs[0].get("pseudo_label") is None for recs in groups.values()) / max(
            1, len(groups)
        )
        m["train/truncated_vote_share"] = truncated_vote_share(scored)
        # Diagnostics of the pseudo-labels against gold: evaluation only, computed after the
        # round's data was built and trained on, never fed back.
        gold_train = {pid: g for pid, g in train_gold(config, task, r).items() if g is not None}
        pseudo = {pid: recs[0].get("pseudo_label") for pid, recs in groups.items()}
        accuracy = {
            "train/label_accuracy": label_accuracy(pseudo, gold_train, task.check),
            "train/reward_accuracy": reward_accuracy(
                ((str(x["prompt_id"]), x.get("reward"), x.get("extracted")) for x in scored),
                gold_train,
                task.check,
            ),
        }
        m.update({k: v for k, v in accuracy.items() if v is not None})
    judge_path = rdir / "judge_report.json"
    if judge_path.exists():
        # The judge's own counts: parse-failure rate, position consistency (pairwise), ...
        for key, value in read_json(judge_path).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                m[f"judge/{key}"] = value
    if "rows" in rs:
        m["data/rows"] = rs["rows"]
    for key, name in (
        ("train_loss", "train/loss"),
        ("train_steps", "train/steps"),
        ("train_tokens", "train/tokens"),
        ("tokens", "generate/tokens"),
        ("tokens_eval", "evaluate/tokens"),
    ):
        if rs.get(key) is not None:
            m[name] = rs[key]
    result_path = rdir / "adapter" / "train_result.json"
    if result_path.is_file():
        # Processes that trained this round's adapter together (training.accelerate_config); a
        # round trained in one process leaves the key out, as rounds did before the key existed.
        world = read_json(result_path).get("world_size", 1)
        if isinstance(world, int) and world > 1:
            m["train/world_size"] = world
    for stage, secs in rs.get("seconds", {}).items():
        m[f"time/{stage}"] = secs
    if rs.get("skipped_training"):
        m["note"] = "no data: training skipped"
    return m
