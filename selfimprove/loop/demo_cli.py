"""Build (or reuse) the embedded base model and run the demo recipe end to end.

Runs configs/demo.yaml (majority-filtered SFT on string_ops capitals, label-free), prints the round table
and writes report.md / report.html in the run folder. A second call with the same --out resumes
or, when finished, just re-prints the table and report.

Examples:
  selfimprove demo
  selfimprove demo --out runs/demo2 --rounds 5
  selfimprove demo --set generation.backend=hf
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The recipes ship inside the package (selfimprove/configs links to configs/ at the repository root).
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``selfimprove demo``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of self-training (default: the config's 2)"
    )
    parser.add_argument(
        "--config", default=str(DEMO_CONFIG), help="recipe to run (default configs/demo.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key.sub=value",
        help="override a config key (repeatable), e.g. --set generation.backend=hf",
    )
    parser.add_argument("--fresh", action="store_true", help="refuse to reuse an existing run folder")
    parser.add_argument(
        "--force", action="store_true", help="resume the run folder even though the demo config changed"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the engines' own output (vLLM's log, TRL's per-step metrics, library warnings) on the "
        "terminal; by default it goes to OUT/run.log",
    )


def run(args: argparse.Namespace) -> int:
    """Build/reuse the base model, run or resume the demo, print the table, write the report."""
    from selfimprove.console import quiet_output
    from selfimprove.errors import InputError
    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import round_table

    if args.rounds is not None and args.rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {args.rounds}")
    overrides = list(args.overrides)
    if args.rounds is not None:
        overrides.append(f"loop.rounds={args.rounds}")
    cfg = load_config(args.config, overrides)
    with quiet_output(args.verbose) as out:
        paths, summary, start = _run_demo(args, cfg, out)
        log = out.keep_log(Path(args.out))
        out.echo()
        out.echo(round_table(summary["history"], cfg.evaluation.k))
        hist = summary["history"]
        base = next((m for m in hist if m["round"] == 0), None)
        if base is not None and len(hist) > 1 and "eval/pass@1" in base:
            last = hist[-1]
            out.echo(
                f"\nheld-out pass@1: {100 * base['eval/pass@1']:.1f}% (base) -> {100 * last['eval/pass@1']:.1f}% "
                f"after round {last['round']} ({100 * (last['eval/pass@1'] - base['eval/pass@1']):+.1f} points), "
                "no label used in training"
            )
        if summary.get("stopped"):
            out.echo(f"stopped: {summary['stopped']}")
        out.echo(f"best round (label-free pick): {summary.get('best_round')}")
        out.echo(
            f"report: {paths['md']} (and {Path(paths['html']).name}); total {time.perf_counter() - start:.0f} s"
            + (f"; engine log: {log}" if log else "")
        )
        out.keep_log(Path(args.out))
    return 0


def _run_demo(args: argparse.Namespace, cfg, out):
    """Resolve the base model, run or resume the rounds, write the report."""
    from selfimprove.errors import InputError
    from selfimprove.loop.report import write_report
    from selfimprove.loop.runner import run as run_loop
    from selfimprove.models.loading import resolve_model

    start = time.perf_counter()
    out.echo(f"base model: {cfg.model.path}")
    model_dir = resolve_model(cfg.model.path, progress=not args.no_progress)
    out.echo(f"base model folder: {model_dir} ({time.perf_counter() - start:.0f} s)")
    run_dir = Path(args.out)
    resume = (run_dir / "state.json").exists()
    if resume and args.fresh:
        raise InputError(f"{run_dir} already holds a run; drop --fresh to resume it, or choose another --out")
    if resume:
        out.echo(f"resuming the run in {run_dir}")
    summary = run_loop(
        cfg,
        run_dir,
        resume=resume,
        force=args.force,
        command=["selfimprove", "demo", *sys.argv[2:]],
        progress=not args.no_progress,
    )
    return write_report(run_dir), summary, start
