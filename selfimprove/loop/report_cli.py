"""Write report.md and report.html (with plots) for a run folder.

Example:
  selfimprove report runs/demo
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``selfimprove report``."""
    parser.add_argument("run_dir", help="run folder written by `selfimprove run` or `selfimprove demo`")


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it went."""
    from selfimprove.loop.report import write_report

    paths = write_report(args.run_dir)
    print(f"wrote {paths['md']} and {paths['html']}")
    return 0
