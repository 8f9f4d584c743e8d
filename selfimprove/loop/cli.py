"""Run rounds of label-free self-training from a YAML config.

Overrides (key.sub=value) go right after CONFIG, or anywhere as --set key.sub=value.

Examples:
  selfimprove run configs/rejection_sft.yaml
  selfimprove run configs/ttrl_grpo.yaml loop.rounds=5 training.lora.rank=8 --run-dir runs/ttrl
  selfimprove run configs/ttrl_grpo.yaml --run-dir runs/ttrl --resume
"""

from __future__ import annotations

import argparse
import sys

from selfimprove.config.cli import add_config_arguments, add_run_arguments, overrides_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``selfimprove run``."""
    add_config_arguments(
        parser,
        "config",
        "YAML run config (see docs/loop.md for every key)",
        "loop.rounds=5 generation.stop='[\"\\n\"]'",
    )
    parser.add_argument("--run-dir", default=None, help="run folder (default: output.run_dir or runs/<name>)")
    add_run_arguments(parser, "continue an interrupted run in the run folder from its last stage")


def run(args: argparse.Namespace) -> int:
    """Validate the config, run or resume the rounds, print the round table and write the report."""
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import resolve_run_dir, round_table
    from selfimprove.loop.runner import run as run_loop

    if args.force and not args.resume:
        print("selfimprove run: note: --force only matters with --resume", file=sys.stderr)
    cfg = load_config(args.config, overrides_of(args))
    run_dir = resolve_run_dir(cfg, args.run_dir)
    summary = run_loop(
        cfg,
        run_dir,
        resume=args.resume,
        force=args.force,
        command=["selfimprove", "run", *sys.argv[2:]] if sys.argv[1:2] == ["run"] else None,
        progress=not args.no_progress,
    )
    print(round_table(summary["history"], cfg.evaluation.k))
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    if summary.get("stopped"):
        print(f"stopped: {summary['stopped']}")
    if summary.get("best_round") is not None:
        print(
            f"best round (label-free: {summary['best_round_rule']}): {summary['best_round']}"
            f" (score {summary['best_round_score']:.3f})"
        )
    if not args.no_report:
        from selfimprove.loop.report import write_report

        paths = write_report(run_dir)
        print(f"report: {paths['md']} and {paths['html']}")
    print(f"run folder: {run_dir}")
    return 0
