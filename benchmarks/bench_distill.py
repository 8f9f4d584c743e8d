"""Teacher -> student distillation: student accuracy per selection strategy at equal numbers of samples.

For each bundled family: the teacher is the family's shipped model (``builtin:<task>``, four
layers), the student a smaller, weaker model the toolkit builds with the family's own recipe
(``build_base_model``: two layers, and a larger share of slipped solutions in the late
pre-training, so it knows the format but answers right less often; cached). One ``selfimprove distill`` run per seed labels the same unlabeled inputs, then
trains one student adapter per strategy (random, confidence, need, llkd) and size, and evaluates
each on the held-out split. The table gives the mean and spread over seeds of the student's
pass@1 and maj@k after training, next to the teacher and the student before training, and the
share of the teacher's lead the student recovered.

Usage: ``python benchmarks/bench_distill.py [--tasks string_ops sorting] [--seeds 0 1 2]
[--sizes 16 32 64] [--unlabeled 192] [--backend hf|vllm] [--out benchmarks/results/distill/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
STRATEGIES = ("random", "confidence", "need", "llkd")


def build_student(task: str, layers: int, slip: float, progress: bool) -> Path:
    """The family's recommended base-model recipe with ``layers`` layers and slip rate ``slip`` (cached)."""
    from selfimprove.models.base_model import build_base_model, recommended_settings

    settings = recommended_settings(task, num_layers=layers, slip_rate=slip, eval_prompts=100)
    return build_base_model(settings, progress=progress)


def run_config(task: str, student: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The distill config of one run."""
    teacher_opts = {"enforce_eager": True, "max_model_len": 512} if args.backend == "vllm" else {}
    return {
        "name": f"{task}-seed{seed}",
        "seed": seed,
        "teacher": {
            "model": f"builtin:{task}",
            "backend": args.backend,
            "options": teacher_opts,
            "k": args.k,
            "max_tokens": args.max_tokens,
        },
        "student": {"model": str(student), "backend": "hf", "options": {"batch_size": 64}},
        "task": {"name": task, "unlabeled_size": args.unlabeled, "eval_size": args.eval_size},
        "selection": {"strategies": list(STRATEGIES), "sizes": list(args.sizes)},
        "training": {
            "epochs": args.epochs,
            "batch_size": 8,
            "learning_rate": args.lr,
            "target": "completion",
        },
        "evaluation": {"n": 8, "k": [8]},
    }


def run_one(task: str, student: Path, seed: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) one distillation; return its results.json."""
    from selfimprove.distill import distill

    run_dir = root / f"{task}-seed{seed}"
    cfg = run_config(task, student, seed, args)
    start = time.perf_counter()
    result = distill(
        cfg,
        run_dir,
        overrides=args.set,
        resume=(run_dir / "state.json").exists(),
        progress=False,
        report=True,
    )
    summary = dict(result.summary)
    summary["seconds"] = time.perf_counter() - start
    summary["run_dir"] = str(run_dir)
    return summary


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f}% ± {100 * sd:.1f}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    except OSError:
        return "?"


def variant_values(runs: Sequence[Mapping[str, Any]], key: str, metric: str) -> list[float | None]:
    """``metric`` of variant ``key`` in each run (None where the run has no such evaluation)."""
    out: list[float | None] = []
    for r in runs:
        ev = next((v.get("evaluate") for v in r["variants"] if v["key"] == key), None)
        out.append(ev.get(metric) if ev else None)
    return out


def present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def render(task: str, runs: Sequence[Mapping[str, Any]], sizes: Sequence[int], k: int) -> list[str]:
    """One family: teacher, student before, each strategy x size after (mean ± sd over seeds), the
    share of the teacher's lead recovered, llkd - random per size, and the teacher samples spent."""
    maj = f"maj@{k}"
    out = [f"### {task}", ""]
    teacher = [r["teacher"]["pass@1"] for r in runs]
    before = [r["student_before"]["pass@1"] for r in runs]
    n_inputs = runs[0]["label"]["inputs"]
    k_teacher = runs[0]["label"]["teacher_samples"] // max(1, n_inputs)
    out.append(
        f"Teacher pass@1 {mean_sd(teacher)}, {maj} {mean_sd([r['teacher'][maj] for r in runs])}; student before "
        f"pass@1 {mean_sd(before)}, {maj} {mean_sd([r['student_before'][maj] for r in runs])}; "
        f"{n_inputs} unlabeled inputs x {k_teacher} teacher samples per seed; {len(runs)} seed(s)."
    )
    out += ["", "Student pass@1 after training (mean ± sd over seeds):", ""]
    out += ["| strategy | " + " | ".join(f"{s} inputs" for s in sizes) + f" | {maj} at {sizes[-1]} |"]
    out.append("|---|" + "---|" * (len(sizes) + 1))
    for strategy in STRATEGIES:
        cells = [mean_sd(present(variant_values(runs, f"{strategy}-{s}", "pass@1"))) for s in sizes]
        last = present(variant_values(runs, f"{strategy}-{sizes[-1]}", maj))
        out.append(f"| {strategy} | " + " | ".join(cells) + f" | {mean_sd(last)} |")
    # Share of the teacher's pass@1 lead the student recovered, per seed, at the largest size.
    out += [
        "",
        f"Share of the teacher's pass@1 lead over the student recovered at {sizes[-1]} inputs, "
        "(after - before) / (teacher - before), mean ± sd over seeds:",
        "",
    ]
    shares = []
    for strategy in STRATEGIES:
        vals = variant_values(runs, f"{strategy}-{sizes[-1]}", "pass@1")
        per = [
            (v - b) / (t - b)
            for v, b, t in zip(vals, before, teacher, strict=True)
            if v is not None and t > b
        ]
        shares.append(f"{strategy} {mean_sd(per)}")
    out.append("; ".join(shares) + ".")
    # llkd and confidence against random at equal numbers of inputs: per-seed differences.
    out += [
        "",
        "Against random selection at equal numbers of inputs (pass@1 points, per-seed difference "
        "mean ± sd; 'beats' = the mean difference is above both strategies' seed spread):",
        "",
    ]
    out += ["| strategy | " + " | ".join(f"{s} inputs" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for strategy in ("confidence", "llkd"):
        cells = []
        for s in sizes:
            a = variant_values(runs, f"{strategy}-{s}", "pass@1")
            b = variant_values(runs, f"random-{s}", "pass@1")
            diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
            if not diffs:
                cells.append("n/a")
                continue
            spread = max(
                statistics.stdev(present(a)) if len(present(a)) > 1 else 0.0,
                statistics.stdev(present(b)) if len(present(b)) > 1 else 0.0,
            )
            m = statistics.mean(diffs)
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            verdict = (
                "beats"
                if len(diffs) > 1 and m > spread
                else ("loses" if len(diffs) > 1 and -m > spread else "within spread")
                if len(diffs) > 1
                else "one seed"
            )
            cells.append(f"{100 * m:+.1f} ± {100 * sd:.1f} ({verdict})")
        out.append(f"| {strategy} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Teacher samples spent per point of the curve: random selection needs only the inputs it trains on "
        f"labelled ({', '.join(f'{s * k_teacher:,}' for s in sizes)} samples at {', '.join(map(str, sizes))} "
        f"inputs); confidence, need and llkd rank all {n_inputs} labelled inputs ({n_inputs * k_teacher:,} samples "
        "at every size).",
        "",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["string_ops"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--unlabeled", type=int, default=192)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-slip", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=64, help="teacher and evaluation max new tokens")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="distill config overrides for every run (e.g. training.target=rationale training.method=gkd)",
    )
    parser.add_argument("--root", default="runs/bench_distill")
    parser.add_argument("--out", default="benchmarks/results/distill/RESULTS.md")
    parser.add_argument(
        "--render",
        nargs="+",
        metavar="RAW_JSON",
        help="only write the Markdown again from these raw JSON files (several: merged, e.g. one per family); "
        "the other arguments must match the runs' (sizes)",
    )
    args = parser.parse_args()
    root = Path(args.root)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    raw: dict[str, list[dict[str, Any]]] = {}
    if args.render:
        for f in args.render:
            for task, runs in json.loads(Path(f).read_text()).items():
                raw.setdefault(task, []).extend(runs)
    else:
        for task in args.tasks:
            student = build_student(task, args.student_layers, args.student_slip, progress=False)
            for seed in args.seeds:
                print(f"{task} seed {seed} ...", file=sys.stderr, flush=True)
                raw.setdefault(task, []).append(run_one(task, student, seed, root, args))
    info = machine_info()
    lines = [
        "# Distillation: student accuracy per selection strategy at equal numbers of selected samples",
        "",
        f"- command: `{shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}`",
        f"- date: {started}; commit {git_commit()}; machine: {info['cpu']}, {info['nproc']} cores, GPUs: {info['gpus']}",
        f"- teacher: the family's shipped model (`builtin:<task>`, backend {args.backend}, k={args.k}); student: a "
        f"{args.student_layers}-layer model built by `build_base_model` with the family's recipe and slip rate "
        f"{args.student_slip}; LoRA SFT on the teacher's completion, {args.epochs} epochs, lr {args.lr}, batch 8; "
        f"held-out: {args.eval_size} prompts x 8 samples; overrides: {' '.join(args.set) or 'none'}.",
        f"- seeds: {', '.join(map(str, args.seeds))} (mean ± standard deviation over seeds; ± 0.0 with one seed)",
        "",
    ]
    for task, runs in raw.items():
        lines += render(task, runs, args.sizes, 8)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    (out.parent / (out.stem + "_raw.json")).write_text(json.dumps(raw, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
