"""Command-line arguments every config-driven command shares: the file, overrides, resume flags."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, dest: str, file_help: str, example: str) -> None:
    """The config file (positional ``dest``), ``key.sub=value`` overrides after it, and ``--set``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(dest, help=file_help)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help=f"override keys; values are parsed as YAML (e.g. {example})",
    )
    parser.add_argument(
        "--set",
        dest="more_overrides",
        action="append",
        default=[],
        metavar="key.sub=value",
        help="an override given after other options (repeatable); same as a positional override",
    )


def add_run_arguments(parser: argparse.ArgumentParser, resume_help: str) -> None:
    """``--resume``, ``--force``, ``--no-progress`` and ``--no-report``."""
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument(
        "--force", action="store_true", help="with --resume: continue even though the config changed"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--no-report", action="store_true", help="do not write report.md/report.html at the end"
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The positional overrides, then the ``--set`` ones."""
    return [*args.overrides, *args.more_overrides]


__all__ = ["add_config_arguments", "add_run_arguments", "overrides_of"]
