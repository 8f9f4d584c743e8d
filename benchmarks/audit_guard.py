"""Which collapse-guard rules fire on rounds that improved? (an audit of the recorded benchmark runs)

Re-applies :func:`selfimprove.loop.guard.check_collapse` to every round of every run recorded in
``benchmarks/results/*_raw.jsonl`` (the per-round metrics that ``bench_selftrain.py`` writes), with
each rule switched on at a given threshold, and counts how the round's held-out pass@1 moved against
the round before: ``rose`` (more than ``--tol`` points up), ``flat`` or ``fell``. A rule that
mostly fires on rounds that rose stops runs that work. Gold pass@1 is read here only to judge the
rules; the guard itself never reads it. Nothing is run: this reads recorded metrics only.

Usage: ``python benchmarks/audit_guard.py [--tol 1.0] [--out benchmarks/results/guard_audit.md]``
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfimprove.loop.config import GuardConfig  # noqa: E402
from selfimprove.loop.guard import check_collapse, guard_settings  # noqa: E402
from selfimprove.runs.io import read_jsonl  # noqa: E402

# Each rule alone, at the threshold the guard used until 2026-12-05 (entropy, distinct) or uses now.
RULES: dict[str, dict[str, float]] = {
    "min_entropy_ratio=0.3": {"min_entropy_ratio": 0.3},
    "min_entropy_ratio=0.1": {"min_entropy_ratio": 0.1},
    "min_distinct_ratio=0.3": {"min_distinct_ratio": 0.3},
    "max_majority_ratio=0.99": {"max_majority_ratio": 0.99},
    "min_length_ratio=0.5": {"min_length_ratio": 0.5},
    "max_length_ratio=3.0": {"max_length_ratio": 3.0},
    "min_diversity_ratio=0.5": {"min_diversity_ratio": 0.5},
    "max_no_answer_increase=0.15": {"max_no_answer_increase": 0.15},
}
OFF = dict.fromkeys(guard_settings(GuardConfig()))  # every threshold of check_collapse, off


def load_runs(results: Path) -> dict[tuple[str, str, str, int], dict[int, dict[str, Any]]]:
    """(file, task, arm, seed) -> round -> metrics, for runs whose rounds carry eval diagnostics."""
    runs: dict[tuple[str, str, str, int], dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for path in sorted(results.glob("*_raw.jsonl")):
        for rec in read_jsonl(path):  # a corrupt line raises, naming file:line
            m = rec.get("metrics") or {}
            if "round" not in rec or "eval/answer_entropy" not in m or "eval/pass@1" not in m:
                continue
            key = (path.name, str(rec.get("task")), str(rec.get("arm")), int(rec.get("seed", 0)))
            runs[key][int(rec["round"])] = m
    # The same run is often recorded in several files (a shared baseline arm, a 3-seed table
    # extended to 5 seeds): count it once.
    unique: dict[tuple[str, str, str, int], dict[int, dict[str, Any]]] = {}
    seen: set[tuple] = set()
    for key, rounds in runs.items():
        fingerprint = (key[1], key[2], key[3], tuple((r, rounds[r]["eval/pass@1"]) for r in sorted(rounds)))
        if fingerprint not in seen:
            seen.add(fingerprint)
            unique[key] = rounds
    return unique


def audit(runs: dict, tol: float) -> tuple[dict[str, collections.Counter], dict[str, list[str]]]:
    """Per rule: counts of rose/flat/fell among the rounds it flags, and the non-rising ones."""
    counts: dict[str, collections.Counter] = {r: collections.Counter() for r in RULES}
    misses: dict[str, list[str]] = {r: [] for r in RULES}
    for (fname, task, arm, seed), rounds in sorted(runs.items()):
        if 0 not in rounds:
            continue
        for r in sorted(rounds):
            if r == 0 or r - 1 not in rounds:
                continue
            cur, prev = rounds[r], rounds[r - 1]
            delta = 100 * (cur["eval/pass@1"] - prev["eval/pass@1"])
            kind = "rose" if delta > tol else ("fell" if delta < -tol else "flat")
            for rule, setting in RULES.items():
                if check_collapse(rounds[0], cur, round=r, **{**OFF, **setting}).collapsed:
                    counts[rule][kind] += 1
                    if kind != "rose":
                        base = 100 * (cur["eval/pass@1"] - rounds[0]["eval/pass@1"])
                        misses[rule].append(
                            f"{fname} {task} {arm} seed {seed} round {r}: {delta:+.1f} vs round {r - 1}, "
                            f"{base:+.1f} vs base"
                        )
    return counts, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--tol", type=float, default=1.0, help="points of pass@1 that count as a move")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = ap.parse_args(argv)
    runs = load_runs(args.results)
    counts, misses = audit(runs, args.tol)
    n_rounds = sum(len([r for r in rs if r > 0 and r - 1 in rs]) for rs in runs.values() if 0 in rs)
    lines = [
        "# Collapse-guard rules on the recorded benchmark runs",
        "",
        f"- **Command:** `python benchmarks/audit_guard.py --tol {args.tol:g}"
        + (
            f" --out {args.out.relative_to(REPO) if args.out.is_absolute() else args.out}`"
            if args.out
            else "`"
        ),
        f"- **Input:** {len(runs)} distinct runs ({n_rounds} trained rounds) in `benchmarks/results/*_raw.jsonl`",
        f"- Each rule alone; a flagged round counts as `rose` when held-out pass@1 rose more than {args.tol:g} "
        "points over the round before, `fell` when it fell more, else `flat`.",
        "",
        "| rule | rounds flagged | rose | flat | fell |",
        "|---|---|---|---|---|",
    ]
    for rule, c in counts.items():
        lines.append(f"| `{rule}` | {sum(c.values())} | {c['rose']} | {c['flat']} | {c['fell']} |")
    lines.append("")
    for rule, items in misses.items():
        if items:
            lines.append(f"Flagged by `{rule}` without a rise:")
            lines += [f"- {x}" for x in items]
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
