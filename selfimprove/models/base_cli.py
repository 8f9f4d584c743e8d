"""Build (or reuse from the cache) the embedded demo base model: a small Qwen2 pre-trained on a task.

The model is cached under $SELFIMPROVE_CACHE (default ~/.cache/selfimprove) in
base-<task>-<settings hash>/ unless --out is given; a second call with the same settings reuses it.
"""

from __future__ import annotations

import argparse
import json

from selfimprove.models.base_model import PRECISIONS, BaseModelSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``selfimprove build-base``."""
    d = BaseModelSettings()
    parser.add_argument("--task", default=d.task, help=f"bundled task to pre-train on (default {d.task})")
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
    m = info.get("metrics") or {}
    k = settings.eval_samples
    print(path)
    if m:
        print(
            f"pass@1 {m['pass@1']:.3f}  maj@{k} {m[f'maj@{k}']:.3f}  pass@{k} {m[f'pass@{k}']:.3f}  "
            f"(T={settings.eval_temperature}, {int(m['n_prompts'])} held-out prompts)"
        )
    keys = ("parameters", "train_seconds", "steps_done", "clean_steps", "competent")
    print(json.dumps({key: info.get(key) for key in keys}))
    if info.get("competent") is False:
        print(
            f"warning: greedy accuracy on the probes stayed below --clean-target {settings.clean_target} "
            f"after {settings.max_clean_steps} clean steps (raise --max-clean-steps or --layers)"
        )
    return 0
