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
            "max_tokens": 64,
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
    result = distill(cfg, run_dir, resume=(run_dir / "state.json").exists(), progress=False, report=True)
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


def render(task: str, runs: Sequence[Mapping[str, Any]], sizes: Sequence[int], k: int) -> list[str]:
    """The table of one family: teacher, student before, and each strategy x size after (mean ± sd)."""
    maj = f"maj@{k}"
    out = [f"### {task}", ""]
    teacher = [r["teacher"]["pass@1"] for r in runs]
    before = [r["student_before"]["pass@1"] for r in runs]
    out.append(
        f"Teacher pass@1 {mean_sd(teacher)}, {maj} {mean_sd([r['teacher'][maj] for r in runs])}; student before "
        f"pass@1 {mean_sd(before)}, {maj} {mean_sd([r['student_before'][maj] for r in runs])}; "
        f"{runs[0]['label']['inputs']} unlabeled inputs, {runs[0]['label']['teacher_samples']} teacher samples per "
        f"seed; teacher label accuracy is in each run's report.md."
    )
    out += ["", "| strategy | " + " | ".join(f"pass@1 at {s}" for s in sizes) + f" | {maj} at {sizes[-1]} |"]
    out.append("|---|" + "---|" * (len(sizes) + 1))
    for strategy in STRATEGIES:
        cells = []
        for s in sizes:
            vals = [
                v["evaluate"]["pass@1"]
                for r in runs
                for v in r["variants"]
                if v["key"] == f"{strategy}-{s}" and v.get("evaluate") and "pass@1" in v["evaluate"]
            ]
            cells.append(mean_sd(vals))
        last = [
            v["evaluate"][maj]
            for r in runs
            for v in r["variants"]
            if v["key"] == f"{strategy}-{sizes[-1]}" and v.get("evaluate") and maj in v["evaluate"]
        ]
        out.append(f"| {strategy} | " + " | ".join(cells) + f" | {mean_sd(last)} |")
    out.append("")
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
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--root", default="runs/bench_distill")
    parser.add_argument("--out", default="benchmarks/results/distill/RESULTS.md")
    args = parser.parse_args()
    root = Path(args.root)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    raw: dict[str, list[dict[str, Any]]] = {}
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
        f"{args.student_slip}; LoRA SFT on the teacher's "
        f"completion, {args.epochs} epochs, lr {args.lr}; held-out: {args.eval_size} prompts x 8 samples.",
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
