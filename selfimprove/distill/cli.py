"""Distil a teacher into a smaller student on unlabeled inputs (LLKD-style selection, LoRA SFT).

CONFIG.yaml names the teacher (any backend, optional adapter), the student (a local model
folder), the task (bundled or a user JSONL file; gold answers are used for evaluation and the
report only), the teacher's k samples per input, the selection strategies and sizes, training,
evaluation and a teacher budget (see docs/distill.md). Overrides (key.sub=value) go right after
CONFIG.yaml, or anywhere as --set key.sub=value.

Examples:
  selfimprove distill configs/distill/string_ops.yaml --run-dir runs/distill/string_ops
  selfimprove distill configs/distill/string_ops.yaml selection.strategies=[random,llkd] \\
      selection.sizes=[16,32,64] --run-dir runs/distill/curve
  selfimprove distill configs/distill/string_ops.yaml budget.teacher_calls=2048 \\
      --run-dir runs/distill/string_ops --resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfimprove.config.cli import add_config_arguments, add_run_arguments, overrides_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``selfimprove distill``."""
    add_config_arguments(
        parser,
        "config",
        "distillation config (YAML; see docs/distill.md)",
        "teacher.k=16 selection.strategies=[random,llkd] budget.teacher_calls=1024",
    )
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/distill/<config name>)")
    add_run_arguments(
        parser,
        "continue the run in --run-dir (also after kill -9); stages whose settings changed are redone, "
        "the teacher's samples are kept",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the config, run or resume the distillation, print the results."""
    from selfimprove.distill.config import load_config
    from selfimprove.distill.report import eval_rows
    from selfimprove.distill.runner import distill

    if args.force and not args.resume:
        print("selfimprove distill: note: --force only matters with --resume", file=sys.stderr)
    cfg = load_config(args.config, overrides_of(args))
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / "distill" / str(cfg.name)
    argv = sys.argv[1:]
    result = distill(
        cfg,
        run_dir,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
        report=not args.no_report,
        command=["selfimprove", *argv] if argv[:1] == ["distill"] else None,
    )
    rows = eval_rows(result.summary)
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    empty = [v["key"] for v in result.summary["variants"] if (v.get("select") or {}).get("selected") == 0]
    if empty:
        print(f"selections that kept nothing (no student trained): {', '.join(empty)}", file=sys.stderr)
    if not args.no_report:
        print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    print(f"run folder: {run_dir}")
    return 0
