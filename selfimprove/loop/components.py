"""A run config turned into the parts the stages call: extractor, rewards, sampling, generator and trainer options.

Components receive plain arguments built here; they never read the config object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.gold import reads_gold
from selfimprove.loop.config import RunConfig

# vLLM accepts these LoRA ranks as max_lora_rank.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256)


def task_extractor(config: RunConfig, task) -> Callable[[str], str | None]:
    if config.scoring.extractor is not None:
        from selfimprove.score.extract import get_extractor

        return get_extractor(config.scoring.extractor, **config.scoring.extractor_options)
    return task.extract


def build_rewards(config: RunConfig, task) -> list[tuple[str, Callable[..., list], float, bool]]:
    """(name, reward function, weight, reads_gold) for every configured reward term."""
    import inspect

    from selfimprove.score.rewards import REWARDS, get_reward

    ex_name, ex_options = extractor_spec(config, task)
    terms = []
    for i, term in enumerate(config.scoring.rewards):
        options = dict(term.options)
        factory = REWARDS.get(term.name)
        if factory is not None:
            params = inspect.signature(factory).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            # Rewards read answers the way the task does unless the config says otherwise.
            if "extractor" not in options and ("extractor" in params or takes_any):
                options["extractor"] = ex_name
                if ex_options:
                    options.setdefault("extractor_options", dict(ex_options))
        supervised = reads_gold(REWARDS.get(term.name))
        if supervised and "math" not in options:
            # The supervised baseline rewards exactly what evaluation counts as correct (the
            # task's checker), not math-verify's looser equality (it reads "23, 10, 45" as the
            # set {10, 23, 45} and "ACB" as the product A*B*C, so it rewarded unsorted lists).
            options["check"] = task.check
        label = reward_label(config, i)
        try:
            fn = get_reward(term.name, **options)
        except ConfigError as exc:
            raise ConfigError(f"scoring.rewards[{i}]: {exc}") from None
        terms.append((label, fn, term.weight, supervised or reads_gold(fn)))
    return terms


def reward_label(config: RunConfig, i: int) -> str:
    """The key of reward term ``i`` in a scored record's ``rewards`` (its name; ``name_i`` when repeated)."""
    name = config.scoring.rewards[i].name
    return name if all(t.name != name for t in config.scoring.rewards[:i]) else f"{name}_{i}"


def gold_reward_labels(config: RunConfig) -> list[str]:
    """The ``rewards`` keys of the terms that read gold (registered as supervised, or a marked user reward)."""
    from selfimprove.score.extract import load_callable
    from selfimprove.score.rewards import is_supervised_reward

    out = []
    for i, term in enumerate(config.scoring.rewards):
        if is_supervised_reward(term.name) or (":" in term.name and reads_gold(load_callable(term.name))):
            if not config.supervised:
                # A user's reward ("module:function") marked with selfimprove.gold.supervised_reward.
                raise ConfigError(
                    f"scoring.rewards[{i}].name: {term.name!r} reads gold labels; a run that uses it must "
                    "say `supervised: true` (it is a supervised baseline, not label-free)"
                )
            out.append(reward_label(config, i))
    return out


def extractor_spec(config: RunConfig, task) -> tuple[str, dict[str, Any]]:
    """(extractor name, options): ``scoring.extractor`` if set, else the task's own."""
    if config.scoring.extractor is not None:
        return config.scoring.extractor, dict(config.scoring.extractor_options)
    return task.extractor, dict(getattr(task, "extractor_options", None) or {})


def mark_train_subset(scored: list[dict[str, Any]], n_train: int | None, seed: int) -> None:
    """Mark a seeded ``n_train`` subset of each prompt's samples ``in_train`` (vote on all, train on a few)."""
    import random

    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in scored:
        groups.setdefault(str(rec["prompt_id"]), []).append(rec)
    for pid, recs in groups.items():
        keep = set(range(len(recs)))
        if n_train is not None and n_train < len(recs):
            keep = set(random.Random(f"{seed}|{pid}").sample(range(len(recs)), n_train))
        for j, rec in enumerate(sorted(recs, key=lambda x: x.get("sample_index", 0))):
            rec["in_train"] = j in keep


def round_sampling(config: RunConfig, purpose: str, r: int):
    """The sampling of round ``r``'s ``"train"`` rollouts, ``"eval"`` rollouts or ``"paraphrase"`` votes.

    Each purpose and round has its own seed (``loop.seed * 1000 + r``, plus 250 for the
    paraphrase votes and 500 for evaluation), so a resumed round samples as the first try did.
    """
    from selfimprove.generate.base import Sampling

    g, ev = config.generation, config.evaluation
    n, temperature, max_tokens, offset = {
        "train": (g.n, g.temperature, g.max_tokens, 0),
        "paraphrase": (config.scoring.paraphrase.n or g.n, g.temperature, g.max_tokens, 250),
        "eval": (ev.n, ev.temperature, ev.max_tokens or g.max_tokens, 500),
    }[purpose]
    return Sampling(
        n=n,
        temperature=temperature,
        top_p=g.top_p,
        max_tokens=max_tokens,
        stop=tuple(g.stop),
        seed=config.loop.seed * 1000 + offset + r,
    )


def generator_options(config: RunConfig) -> dict[str, Any]:
    options = config.generation.backend_options()
    if config.generation.backend == "vllm":
        need = config.training.lora.rank
        options.setdefault("enable_lora", True)
        options.setdefault("max_lora_rank", next((r for r in _VLLM_LORA_RANKS if r >= need), need))
        options.setdefault("seed", config.loop.seed)
    if config.model.trust_remote_code and config.generation.backend in ("vllm", "hf"):
        options.setdefault("trust_remote_code", True)
    return options


def train_args(config: RunConfig) -> dict[str, Any]:
    tr = config.training
    args: dict[str, Any] = {
        "num_train_epochs": tr.epochs,
        "per_device_train_batch_size": tr.batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
    }
    if tr.learning_rate is not None:
        args["learning_rate"] = tr.learning_rate
    if tr.max_steps is not None:
        args["max_steps"] = tr.max_steps
    if tr.max_length is not None:
        args["max_length"] = tr.max_length
    if tr.method == "grpo":
        args["num_generations"] = config.generation.n_train or config.generation.n
        args["max_completion_length"] = config.generation.max_tokens
        args["temperature"] = config.generation.temperature
        args.pop("max_length", None)
    args.update(tr.trl)
    return args


def split_trainer_options(trainer: Callable[..., Any], options: Mapping[str, Any]) -> tuple[dict, dict]:
    """Options the trainer function takes as keywords (e.g. DPO ``beta``) vs. TRL config fields."""
    import inspect

    params = inspect.signature(trainer).parameters
    reserved = {
        "model",
        "rows",
        "pairs",
        "prompts",
        "out_dir",
        "adapter_init",
        "lora",
        "args",
        "seed",
        "reward_funcs",
        "allow_gold_columns",
    }
    kwargs = {k: v for k, v in options.items() if k in params and k not in reserved}
    args = {k: v for k, v in options.items() if k not in kwargs}
    return kwargs, args


def lora_settings(config: RunConfig):
    from selfimprove.train.common import LoraSettings

    lo = config.training.lora
    targets = lo.target_modules if isinstance(lo.target_modules, str) else tuple(lo.target_modules)
    alpha = int(lo.alpha) if float(lo.alpha).is_integer() else lo.alpha
    return LoraSettings(r=lo.rank, alpha=alpha, dropout=lo.dropout, target_modules=targets)


def user_reward_terms(
    config: RunConfig, rewards: Sequence[Callable[..., Any] | tuple[Callable[..., Any], float]]
) -> list[tuple[str, Callable[..., list], float, bool]]:
    """(name, reward function, weight, reads_gold) for reward functions given from Python.

    Each item is a function in TRL's call shape (``f(completions, **columns) -> list[float | None]``)
    or ``(function, weight)``. A function marked with :func:`selfimprove.gold.supervised_reward`
    needs ``supervised: true``.
    """
    if rewards and config.training.accelerate_config is not None and config.training.method == "grpo":
        raise ConfigError(
            "run(rewards=...): GRPO trains with the reward functions, and under training.accelerate_config "
            f"({config.training.accelerate_config}) they would have to reach other processes, which Python "
            "functions cannot; name them in scoring.rewards (a registered reward or 'module:function'), or "
            "set training.accelerate_config: null"
        )
    terms = []
    for i, item in enumerate(rewards):
        fn, weight = item if isinstance(item, tuple) else (item, 1.0)
        if not callable(fn):
            raise ConfigError(f"rewards[{i}]: not a function ({type(fn).__name__})")
        gold = reads_gold(fn)
        if gold and not config.supervised:
            raise ConfigError(
                f"rewards[{i}]: {getattr(fn, '__name__', 'reward')!r} reads gold labels; the run must say "
                "`supervised: true` (it is a supervised baseline, not label-free)"
            )
        name = getattr(fn, "__name__", f"reward_{i}")
        terms.append((name if all(t[0] != name for t in terms) else f"{name}_{i}", fn, float(weight), gold))
    return terms
