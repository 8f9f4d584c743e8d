"""GRPO on a LoRA adapter with the toolkit's rewards; group rollouts from the toolkit's generator.

``generator="vllm"`` (or any ``Generator`` instance) produces the ``num_generations`` completions
of each prompt through TRL's ``rollout_func`` hook: the current adapter is saved to
``<out_dir>/rollout_adapter`` every ``sync_every`` optimizer steps and passed to the generator by
path; the vLLM backend sees new file contents and serves the new version without restarting
the engine (a new LoRA id, or on CPU the adapter merged into the engine's weights). Saving a
LoRA adapter takes milliseconds and swapping it into vLLM well under a second, against seconds
of generation per step, so the default ``sync_every=1``
keeps rollouts exactly on-policy (what GRPO's ratio assumes, and what TRL's own vLLM mode does).
``sync_every=k`` makes rollouts up to k-1 steps stale in exchange for fewer reloads.
``generator=None`` / ``"hf"`` keeps TRL's own transformers generation (the fallback).

Departures from TRL's defaults: LoRA, CPU-safe settings, and timing of generation / scoring /
update per step in ``TrainResult.metrics`` (``time/*``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from selfimprove.errors import ConfigError
from selfimprove.generate.base import Generator, Sampling
from selfimprove.gold import check_no_gold
from selfimprove.train.common import (
    LoraSettings,
    TrainResult,
    check_rows,
    load_model_and_tokenizer,
    make_config,
    run_and_save,
    write_result,
)

GRPO_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "num_train_epochs": 1,
    "learning_rate": 5e-5,
    "max_completion_length": 64,
    "temperature": 1.0,
}


def train_grpo(
    model: Any,
    prompts: Sequence[Mapping[str, Any]],
    reward_funcs: Sequence[str | Callable[..., list[float | None]]],
    out_dir: str | Path,
    *,
    generator: str | Generator | None = None,
    num_generations: int = 4,
    sync_every: int = 1,
    generator_options: Mapping[str, Any] | None = None,
    adapter_init: str | Path | None = None,
    lora: LoraSettings = LoraSettings(),
    args: Mapping[str, Any] | None = None,
    allow_gold_columns: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Train a LoRA adapter with GRPO on ``prompt`` rows (other columns reach the rewards).

    ``reward_funcs``: callables with TRL's call shape or registry names (``selfimprove.score``).
    ``generator``: None/"hf" (TRL's transformers generation), "vllm" (a VLLMGenerator built and
    closed here) or a ``Generator`` to reuse. Gold-named columns are refused unless
    ``allow_gold_columns`` (supervised baselines only).
    """
    from transformers import set_seed

    check_rows(prompts, ("prompt",), "train_grpo")
    if not allow_gold_columns:
        check_no_gold(prompts[0].keys(), "train_grpo prompts")
    if sync_every < 1:
        raise ConfigError(f"train.sync_every must be >= 1, got {sync_every!r}")
    rewards = _resolve_rewards(reward_funcs)
    defaults = {
        **GRPO_DEFAULTS,
        "seed": seed,
        "num_generations": num_generations,
        # Two prompts per step: the group size times two.
        "per_device_train_batch_size": 2 * num_generations,
    }
    config = make_config(GRPOConfig, out_dir, defaults, args)
    set_seed(seed)
    policy, tokenizer, base_name = load_model_and_tokenizer(model, adapter_init)
    rollout, owned = _rollout(
        generator, model, tokenizer, Path(out_dir), config, lora, sync_every, generator_options
    )
    try:
        trainer = TimedGRPOTrainer(
            model=policy,
            reward_funcs=rewards,
            args=config,
            train_dataset=_dataset(prompts),
            processing_class=tokenizer,
            peft_config=None if adapter_init is not None else lora.to_peft(),
            rollout_func=rollout,
        )
        meta = {
            "lora": lora.__dict__,
            "num_generations": num_generations,
            "generator": _generator_name(generator),
            "sync_every": sync_every,
            "rewards": [getattr(f, "__name__", str(f)) for f in rewards],
            "args": dict(args or {}),
            "adapter_init": str(adapter_init or ""),
        }
        result = run_and_save(
            trainer,
            Path(out_dir),
            method="grpo",
            base_name=base_name,
            rows_in=len(prompts),
            dropped={},
            meta=meta,
        )
    finally:
        if owned is not None:
            owned.close()
        if rollout is not None and rollout.adapter_dir.exists():
            # A scratch copy for the generator; the trained adapter is out_dir itself.
            shutil.rmtree(rollout.adapter_dir, ignore_errors=True)
    step_seconds = result.history.get("time/step_s", [])
    steps = max(len(step_seconds), 1)
    gen, score = trainer.si_seconds["generation"], trainer.si_seconds["scoring"]
    result.metrics.update(
        {
            "time/generation_s": gen / steps,
            "time/scoring_s": score / steps,
            "time/update_s": (sum(step_seconds) - gen - score) / steps,
            "generator": _generator_name(generator),
            "adapter_syncs": rollout.syncs if rollout is not None else 0,
        }
    )
    if trainer.is_world_process_zero():
        write_result(result, out_dir)
    return result


class TimedGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer, timing generation and reward scoring (the update is the rest of the step)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.si_seconds = {"generation": 0.0, "scoring": 0.0}
        super().__init__(*args, **kwargs)

    def _generate(self, prompts: list):
        start = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self.si_seconds["generation"] += time.perf_counter() - start

    def _calculate_rewards(self, *args: Any, **kwargs: Any):
        start = time.perf_counter()
        try:
            return super()._calculate_rewards(*args, **kwargs)
        finally:
            self.si_seconds["scoring"] += time.perf_counter() - start


class GeneratorRollout:
    """A TRL ``rollout_func``: GRPO groups from a selfimprove ``Generator`` with the current adapter."""

    def __init__(
        self, generator: Generator, tokenizer: Any, adapter_dir: Path, sampling: Sampling, sync_every: int = 1
    ) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.adapter_dir = adapter_dir
        self.sampling = sampling
        self.sync_every = sync_every
        self.synced_step: int | None = None
        self.syncs = 0

    def _sync(self, trainer: Any) -> None:
        """Save the policy's adapter where the generator reads it, every ``sync_every`` steps."""
        step = trainer.state.global_step
        if self.synced_step is not None and step - self.synced_step < self.sync_every:
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not hasattr(model, "peft_config"):
            raise ConfigError("train_grpo with a toolkit generator needs a LoRA (PEFT) policy")
        model.save_pretrained(str(self.adapter_dir), safe_serialization=True)
        self.synced_step = step
        self.syncs += 1

    def __call__(self, prompts: list, trainer: Any) -> dict[str, Any]:
        """Completions for each row (rows of one group are adjacent copies of its prompt)."""
        from selfimprove.generate._common import render_prompt

        self._sync(trainer)
        # TRL repeats each prompt num_generations times, adjacently: one request with n = run length.
        runs = [
            (key, len(list(items)))
            for key, items in groupby(range(len(prompts)), key=lambda i: repr(prompts[i]))
        ]
        starts, pos = [], 0
        for _, count in runs:
            starts.append(pos)
            pos += count
        prompt_ids: list[list[int]] = []
        completion_ids: list[list[int]] = []
        by_n: dict[int, list[int]] = {}
        for r, (_, count) in enumerate(runs):
            by_n.setdefault(count, []).append(r)
        results: dict[int, list] = {}
        for n, run_indexes in by_n.items():
            sampling = Sampling(
                n=n,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                max_tokens=self.sampling.max_tokens,
            )
            outs = self.generator.generate(
                [prompts[starts[r]] for r in run_indexes], sampling, adapter=str(self.adapter_dir)
            )
            results.update(zip(run_indexes, outs, strict=True))
        for r, (_, count) in enumerate(runs):
            ids = render_prompt(self.tokenizer, prompts[starts[r]], starts[r])[1]
            for completion in results[r][:count]:
                if completion.token_ids is None:
                    raise ConfigError(f"generator {self.generator.backend!r} returned no token ids for GRPO")
                prompt_ids.append(ids)
                completion_ids.append(list(completion.token_ids))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def _rollout(generator, model, tokenizer, out_dir: Path, config, lora, sync_every, options):
    """(rollout_func or None, generator to close or None) for the ``generator`` argument."""
    if generator is None or generator == "hf":
        return None, None
    # The Generator protocol's Sampling has temperature / top_p / max_tokens only: refuse the rest
    # rather than sample from a different distribution than the one configured.
    unsupported = {
        "top_k": (config.top_k, (0, None)),
        "min_p": (config.min_p, (None,)),
        "repetition_penalty": (config.repetition_penalty, (1.0,)),
        "generation_kwargs": (config.generation_kwargs, (None, {})),
    }
    for name, (value, neutral) in unsupported.items():
        if value not in neutral:
            raise ConfigError(
                f"train.args.{name}={value!r} is not supported with a toolkit generator "
                f"(Sampling has temperature, top_p, max_tokens); use generator='hf' or drop it"
            )
    sampling = Sampling(
        n=1, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_completion_length
    )
    owned = None
    if generator == "vllm":
        from selfimprove.generate.vllm_backend import VLLMGenerator

        if not isinstance(model, (str, Path)):
            raise ConfigError("train_grpo(generator='vllm') needs the base model as a folder path")
        rank = 8
        while rank < lora.r:  # vLLM accepts power-of-two max ranks
            rank *= 2
        opts = {"enable_lora": True, "max_lora_rank": rank, "enforce_eager": True, **dict(options or {})}
        owned = generator = VLLMGenerator(model, **opts)
    elif isinstance(generator, str):
        raise ConfigError(f"train.generator must be 'vllm', 'hf', None or a Generator, got {generator!r}")
    rank_suffix = f"-rank{config.process_index}" if config.world_size > 1 else ""
    adapter_dir = out_dir / f"rollout_adapter{rank_suffix}"
    return GeneratorRollout(generator, tokenizer, adapter_dir, sampling, sync_every), owned


def _generator_name(generator: Any) -> str:
    if generator is None or isinstance(generator, str):
        return generator or "hf"
    return getattr(generator, "backend", type(generator).__name__)


def _resolve_rewards(reward_funcs: Sequence[Any]) -> list[Callable[..., list[float | None]]]:
    """Callables for TRL; names are looked up in the scoring registry."""
    if not reward_funcs:
        raise ConfigError("train_grpo: at least one reward function is needed")
    out = []
    for f in reward_funcs:
        if isinstance(f, str):
            from selfimprove.score.rewards import get_reward

            f = get_reward(f)
        if not callable(f):
            raise ConfigError(f"train_grpo: reward {f!r} is not callable")
        out.append(f)
    return out


def _dataset(rows: Sequence[Mapping[str, Any]]):
    """A ``datasets.Dataset`` of the prompt rows (every column reaches the rewards)."""
    from datasets import Dataset

    return Dataset.from_list([dict(r) for r in rows])
