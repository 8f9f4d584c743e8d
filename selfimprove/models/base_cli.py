"""Build (or reuse from the cache) the embedded demo base model: a small Qwen2 pre-trained on a task.

The model is cached under $SELFIMPROVE_CACHE (default ~/.cache/selfimprove) in
base-<task>-<settings hash>/ unless --out is given; a second call with the same settings reuses it.
"""

from __future__ import annotations

import argparse
import json
import sys

from selfimprove.models.base_model import PRECISIONS, BaseModelSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``selfimprove build-base``."""
    d = BaseModelSettings()
    parser.add_argument(
        "--task",
        default=d.task,
        help=f"bundled task to pre-train on (default {d.task}), or a JSONL task file: its rows with "
        '"split": "base" (prompt, answer, optional worked solution in "completion") are the training data',
    )
    parser.add_argument("--level", type=int, default=d.level, help=f"task difficulty 1-3 (default {d.level})")
    parser.add_argument(
        "--out", default=None, help="model folder (default: the cache folder for these settings)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached model exists")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the task's recommended count)"
    )
    parser.add_argument(
        "--slip-rate",
        type=float,
        default=None,
        help="share of pre-training solutions that show a plausible slip (default: the task's recommended rate)",
    )
    parser.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help=f"model width, a multiple of 64 (default: the task's recommended width, else {d.hidden_size})",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help=f"number of layers (default: the task's recommended depth, else {d.num_layers})",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate (default: the task's, else {d.lr})"
    )
    parser.add_argument(
        "--slip-from",
        type=float,
        default=None,
        help="share of the steps before the slipped corpus starts (default: the task's recommended share)",
    )
    parser.add_argument(
        "--clean-target",
        type=float,
        default=None,
        help="train on clean solutions until greedy accuracy on held-out base-split problems reaches "
        "this (0: a fixed number of clean steps; default: the task's recommended target)",
    )
    parser.add_argument(
        "--max-clean-steps",
        type=int,
        default=None,
        help=f"cap on the clean steps when --clean-target is set (default: the task's, else {d.max_clean_steps})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of data, weights and order (default: the task's recommended seed, else {d.seed})",
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=d.eval_prompts, help="held-out prompts to measure on (0: skip)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the build; part of the settings, since the thread count changes "
        "the weights (default: the task's recommended count, else torch's choice)",
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="(maintainers) copy the finished, competent build into the package's shipped models "
        "(selfimprove/models/base_models/<task>/) and record its content digest",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="fp32, bf16 autocast (float32 weights; faster on CPUs with AMX) or auto (bf16 where the "
        "CPU has AMX); part of the settings (default: the task's recommended precision, else fp32)",
    )


def run(args: argparse.Namespace) -> int:
    """Build or reuse the base model and print its folder and measured accuracy."""
    from selfimprove.errors import InputError
    from selfimprove.models.base_model import build_base_model, read_info, recommended_settings

    if args.hidden_size is not None and (args.hidden_size < 64 or args.hidden_size % 64):
        raise InputError(f"--hidden-size must be a multiple of 64 (head_dim 64), got {args.hidden_size}")
    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers must be >= 1, got {args.layers}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.level not in (1, 2, 3):
        raise InputError(f"--level must be 1, 2 or 3, got {args.level}")
    if args.slip_rate is not None and not 0.0 <= args.slip_rate < 1.0:
        raise InputError(f"--slip-rate must be in [0, 1), got {args.slip_rate}")
    overrides: dict[str, object] = {"level": args.level, "eval_prompts": args.eval_prompts}
    # Options not given keep the task's recommended value (so the folder is the one `builtin:<task>` uses).
    given = {
        "hidden_size": args.hidden_size,
        "num_heads": None if args.hidden_size is None else args.hidden_size // 64,
        "num_layers": args.layers,
        "lr": args.lr,
        "steps": args.steps,
        "slip_rate": args.slip_rate,
        "slip_from": args.slip_from,
        "clean_target": args.clean_target,
        "max_clean_steps": args.max_clean_steps,
        "threads": args.threads,
        "precision": args.precision,
        "seed": args.seed,
    }
    overrides.update({k: v for k, v in given.items() if v is not None})
    settings = recommended_settings(args.task, **overrides)
    path = build_base_model(settings, args.out, force=args.force)
    info = read_info(path) or {}
    print(path)
    print(_metrics_line(info, settings.eval_samples, settings.eval_temperature, "this build"))
    keys = ("parameters", "train_seconds", "steps_done", "clean_steps", "competent")
    print(json.dumps({key: info.get(key) for key in keys}))
    _compare_with_shipped(path, info, settings)
    if info.get("competent") is False:
        probes = info.get("probes") or [{}]
        print(
            f"selfimprove build-base: NOT a usable base model: greedy accuracy on the probes stayed at "
            f"{probes[-1].get('greedy')}, below --clean-target {settings.clean_target}, after "
            f"{info.get('clean_steps')} clean steps (the task never clicked); raise --max-clean-steps "
            "or --layers, or try another --seed. `builtin:` and the demo refuse this folder.",
            file=sys.stderr,
        )
        return 1
    if args.ship:
        from selfimprove.models.base_model import ship_base_model

        print(f"shipped: {ship_base_model(path)}")
    return 0


def _metrics_line(info: dict, k: int, temperature: float, label: str) -> str:
    m = info.get("metrics") or {}
    if not m:
        return f"{label}: not measured (--eval-prompts 0)"
    return (
        f"{label}: pass@1 {m['pass@1']:.3f}  maj@{k} {m[f'maj@{k}']:.3f}  pass@{k} {m[f'pass@{k}']:.3f}  "
        f"(T={temperature}, {int(m['n_prompts'])} held-out prompts)"
    )


def _compare_with_shipped(path, info: dict, settings) -> None:
    """Say how this build compares with the model the package ships for the same task."""
    from selfimprove.models.base_model import content_digest, read_info, shipped_base_model

    shipped = shipped_base_model(settings.task)
    if shipped is None or shipped.resolve() == path.resolve():
        return
    ref = read_info(shipped) or {}
    same_recipe = ref.get("digest") == info.get("digest")
    print(
        f"shipped model ({shipped}): built on {ref.get('cpu')} "
        f"({(ref.get('environment') or {}).get('cpu_capability')}, {ref.get('precision_used')})"
    )
    print(_metrics_line(ref, settings.eval_samples, settings.eval_temperature, "shipped model"))
    if content_digest(path) == content_digest(shipped):
        print("this build's weights are identical to the shipped model's")
    elif same_recipe:
        print(
            "this build follows the shipped model's recipe but its weights differ (another CPU's "
            "arithmetic: kernels, precision or thread count); `builtin:` keeps using the shipped one"
        )
    else:
        print("this build uses other settings than the shipped model's recipe")
