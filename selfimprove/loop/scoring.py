"""The score, build and train stages of a self-training round as plain functions (config and records in).

``score_round``: vote, label-free reward terms, the optional judge and Co-Reward columns, and (in a
``supervised: true`` run only) the gold reward terms. ``build_round_data``: SFT rows, DPO pairs or
GRPO prompts from the scored records, checked for gold fields. ``train_round``: the configured
trainer on those rows, into a LoRA adapter folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.gold import check_no_gold
from selfimprove.loop.components import (
    build_rewards,
    extractor_spec,
    lora_settings,
    mark_train_subset,
    split_trainer_options,
    train_args,
)
from selfimprove.loop.config import RunConfig
from selfimprove.loop.inputs import train_gold

# judge(rollouts) -> (a score per rollout or None, the judge's report)
RolloutJudge = Callable[[Sequence[Mapping[str, Any]]], tuple[list[float | None], dict[str, Any]]]


def score_round(
    config: RunConfig,
    task: Any,
    r: int,
    rollouts: Sequence[Mapping[str, Any]],
    *,
    paraphrase_labels: Mapping[str, str | None] | None = None,
    judge: RolloutJudge | None = None,
    terms: Sequence[tuple[str, Callable[..., list], float, bool]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Scored records of round ``r``'s rollouts and the judge's report (None without a judge).

    ``paraphrase_labels`` (Co-Reward: prompt id -> the vote on its paraphrase) reach the rewards as
    the ``paraphrase_label`` meta column. No gold reaches a label-free term; gold terms (a
    SUPERVISED run) are computed after the label-free scoring, from the train split's gold.
    ``terms``: (name, function, weight, reads_gold) instead of the config's ``scoring.rewards``.
    """
    from selfimprove.score.rollouts import score_rollouts

    terms = build_rewards(config, task) if terms is None else list(terms)
    label_free = {name: (fn, w) for name, fn, w, gold in terms if not gold}
    supervised = [(name, fn, w) for name, fn, w, gold in terms if gold]
    if paraphrase_labels is not None:
        # Per-prompt columns travel in ``meta``: score_rollouts hands meta fields to the rewards.
        rollouts = [
            {
                **x,
                "meta": {
                    **(x.get("meta") or {}),
                    "paraphrase_label": paraphrase_labels.get(str(x["prompt_id"])),
                },
            }
            for x in rollouts
        ]
    judge_scores, judge_report = judge(rollouts) if judge is not None else (None, None)
    ex_name, ex_options = extractor_spec(config, task)
    scored = score_rollouts(
        rollouts,
        ex_name,
        # The default (majority-vote agreement) only when no reward is configured at all: a
        # SUPERVISED run with only gold terms is rewarded by them alone, not vote + gold.
        label_free if terms else None,
        extractor_options=ex_options,
        min_share=config.scoring.min_majority_ratio,
        judge_scores=judge_scores,
        vote_truncated=config.scoring.vote_truncated,
    )
    if judge_scores is not None:
        w = config.scoring.judge.weight
        for rec in scored:
            js = rec.get("judge_score")
            rec["rewards"]["judge"] = js
            if js is not None:
                rec["reward"] = (rec["reward"] or 0.0) + w * js
    if supervised:
        # SUPERVISED baseline only (`supervised: true` was required to get here): the gold
        # column reaches the verifier reward and nothing else.
        gold = train_gold(config, task, r)
        column = [gold.get(str(x["prompt_id"])) for x in scored]
        completions = [x["completion"] for x in scored]
        for name, fn, w in supervised:
            values = fn(completions, answer=column, prompt_id=[x["prompt_id"] for x in scored])
            for rec, v in zip(scored, values, strict=True):
                rec["rewards"][name] = v
                if v is not None:
                    rec["reward"] = (rec["reward"] or 0.0) + w * float(v)
    mark_train_subset(scored, config.generation.n_train, seed=config.loop.seed + r)
    return scored, judge_report


def build_round_data(
    config: RunConfig, scored: Sequence[Mapping[str, Any]], r: int, *, gold_rewards: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], Any]:
    """(training rows, BuildStats) of round ``r`` for ``training.method`` from its scored records.

    ``gold_rewards``: the ``rewards`` keys of the gold terms (a SUPERVISED run); ``data.sft.select:
    verifier`` reads the first one unless ``data.sft.verifier_key`` is set. Rows of a label-free
    run are checked for gold-named fields.
    """
    from selfimprove.data import build

    method = config.training.method
    if method == "sft":
        options = dict(config.data.sft)
        if options.get("select") == "verifier" and "verifier_key" not in options and gold_rewards:
            # A supervised run's verifier is its gold reward: found under its own name.
            options["verifier_key"] = gold_rewards[0]
        rows, stats = build.build_sft_rows(scored, **options)
    elif method == "dpo":
        rows, stats = build.build_dpo_pairs(scored, **config.data.dpo)
    else:
        rows, stats = build.build_grpo_prompts(scored, **config.data.grpo)
    if not config.supervised:
        for i, row in enumerate(rows):
            check_no_gold(row.keys(), f"training row {i} of round {r}")
    return rows, stats


def train_round(
    config: RunConfig,
    model_path: str,
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    r: int,
    *,
    adapter_init: str | None = None,
    terms: Sequence[tuple[str, Callable[..., list], float, bool]] = (),
    gold: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Any:
    """Train ``training.method``'s LoRA adapter of round ``r`` on ``rows`` into ``out_dir``; return the TrainResult.

    GRPO gets the reward ``terms`` (name, function, weight, reads_gold); when one reads gold (a
    SUPERVISED run only), ``gold`` (the train split's) is added to the rows as the ``answer`` column.
    With ``training.accelerate_config`` the training runs under ``accelerate launch``
    (:func:`train_round_launched`): the processes rebuild the reward terms and the gold from the
    config, so ``terms`` must be the config's own.
    """
    if config.training.accelerate_config is not None:
        from selfimprove.train.launch import launch_training

        payload = {
            "config": config.to_dict(),
            "model": model_path,
            "round": r,
            "adapter_init": adapter_init,
            "progress": progress,
        }
        return launch_training(
            "selfimprove.loop.scoring:train_round_launched",
            payload,
            rows,
            out_dir,
            accelerate_config=config.training.accelerate_config,
            progress=progress,
        )
    method = config.training.method
    if method == "sft":
        from selfimprove.train.sft import train_sft as trainer
    elif method == "dpo":
        from selfimprove.train.dpo import train_dpo as trainer
    else:
        from selfimprove.train.grpo import train_grpo as trainer
    kwargs, args = split_trainer_options(trainer, train_args(config))
    if not progress:
        args.setdefault("disable_tqdm", True)  # --no-progress also quiets TRL's bars
    if method == "grpo":
        uses_gold = any(g for *_x, g in terms)
        if uses_gold and not config.supervised:
            raise ConfigError("a gold-reading reward needs `supervised: true`")
        if uses_gold:
            # SUPERVISED baseline: the verifier reward reads the gold column during training.
            rows = [{**row, "answer": (gold or {}).get(str(row["prompt_id"]))} for row in rows]
            kwargs["allow_gold_columns"] = True
        kwargs["reward_funcs"] = [fn for _n, fn, _w, _g in terms]
        args.setdefault("reward_weights", [w for _n, _f, w, _g in terms])
    common = {"adapter_init": adapter_init, "lora": lora_settings(config), "seed": config.loop.seed + r}
    return trainer(model_path, rows, out_dir=out_dir, args=args, **common, **kwargs)


def train_round_launched(payload: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path) -> Any:
    """:func:`train_round` in one of the processes of ``accelerate launch`` (see selfimprove.train.launch).

    The config, the task, the GRPO reward terms (from the registry) and, in a SUPERVISED run, the
    train split's gold are rebuilt here from the config, as the in-process path builds them.
    """
    from selfimprove.loop.config import load_config
    from selfimprove.loop.inputs import load_task

    config = load_config(payload["config"], cross_check=False)
    config.training.accelerate_config = None  # this process trains
    r = int(payload["round"])
    terms: list[tuple[str, Callable[..., list], float, bool]] = []
    gold = None
    if config.training.method == "grpo":
        task = load_task(config)
        terms = build_rewards(config, task)
        if any(reads for *_x, reads in terms):
            gold = train_gold(config, task, r)
    return train_round(
        config,
        payload["model"],
        rows,
        out_dir,
        r,
        adapter_init=payload["adapter_init"],
        terms=terms,
        gold=gold,
        progress=bool(payload["progress"]),
    )
