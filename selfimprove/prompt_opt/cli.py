"""Optimize a prompt without reference answers (Self-Supervised Prompt Optimization, SPO).

TASK.yaml is a task file in MetaGPT's SPO format (prompt, requirements, count, qa) with optional
settings (roles, rounds, decision rule, budget, held-out check; see docs/prompt_opt.md).
Overrides (key.sub=value) go right after TASK.yaml, or anywhere as --set key.sub=value.

Examples:
  selfimprove optimize-prompt configs/prompt_opt/short_answer.yaml model=/models/smollm --workspace ws/short
  selfimprove optimize-prompt task.yaml backend=openai model=gpt-4o-mini \\
      options.base_url=https://api.openai.com/v1 rounds=5 --workspace ws/task
  selfimprove optimize-prompt task.yaml rounds=15 --workspace ws/task --resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfimprove.config.cli import add_config_arguments, add_run_arguments, overrides_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``selfimprove optimize-prompt``."""
    add_config_arguments(
        parser,
        "task",
        "task file (MetaGPT's SPO format plus optional settings; see docs/prompt_opt.md)",
        "model=DIR rounds=5 evaluator.mode=logprob",
    )
    parser.add_argument(
        "--workspace", default=None, help="workspace folder (default: runs/prompt_opt/<task name>)"
    )
    add_run_arguments(parser, "continue the run in the workspace (also after kill -9)")


def run(args: argparse.Namespace) -> int:
    """Validate the task, run or resume the optimization, print the best prompt."""
    from selfimprove.prompt_opt.config import load_task
    from selfimprove.prompt_opt.optimizer import optimize_prompt

    if args.force and not args.resume:
        print("selfimprove optimize-prompt: note: --force only matters with --resume", file=sys.stderr)
    cfg = load_task(args.task, overrides_of(args))
    workspace = Path(args.workspace) if args.workspace else Path("runs") / "prompt_opt" / str(cfg.name)
    argv = sys.argv[1:]
    result = optimize_prompt(
        cfg,
        workspace,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
        report=not args.no_report,
        command=["selfimprove", *argv] if argv[:1] == ["optimize-prompt"] else None,
    )
    if result.stopped:
        print(f"stopped: {result.stopped}")
    if result.summary.get("best_round") is None:
        print(f"workspace: {workspace}")
        return 0
    print(f"best prompt (round {result.best_round}):")
    print(result.best_prompt)
    total = result.cost.get("total", {})
    if total:
        money = total.get("money")
        print(
            f"cost: {total['calls']} calls, {total['prompt_tokens']} input + {total['completion_tokens']} "
            "output tokens" + ("" if money is None else f", {money:.4f} in the given prices")
        )
    held = result.heldout
    if held and held.get("questions"):

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        print(
            f"held-out ({held['questions']} questions, {held['scorer']}): initial {pct(held['initial']['pass_rate'])}"
            f" -> best {pct(held['best']['pass_rate'])}"
        )
    if not args.no_report:
        print(f"report: {workspace / 'report.md'} and {workspace / 'report.html'}")
    print(f"workspace: {workspace}")
    return 0
