"""How good is the majority vote's pseudo-label as the vote grows? (label accuracy vs samples per vote)

The label-free recipes train on the majority answer of ``generation.n`` samples (TTRL's vote,
majority-filtered SFT, self-consistency DPO); their ceiling is how often that answer is right. For
each task this samples ``--max-n`` completions of every train-split prompt once (vLLM, seeded, the
base model) and splits them into disjoint groups of each vote size, so every size is measured on
the same samples:

- **label accuracy**: share of votes whose pseudo-label equals the gold answer (prompts whose vote
  has no answer count as wrong);
- **reward accuracy** (TTRL's measure): share of samples whose 0/1 agreement with their group's
  pseudo-label equals their true correctness;
- **unanimous**: share of groups whose samples all agree (no GRPO advantage).

Gold answers are read here to measure the vote only; nothing is trained.

Usage: ``python benchmarks/bench_vote_size.py --tasks arithmetic counting [--model T=DIR]
[--prompts 128] [--seeds 0 1 2] [--max-n 64] [--out benchmarks/results/vote_size.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def vote_sizes(max_n: int) -> list[int]:
    """Powers of two from 1 up to ``max_n`` (``max_n`` itself included)."""
    sizes, n = [], 1
    while n < max_n:
        sizes.append(n)
        n *= 2
    return [*sizes, max_n]


def group_scores(answers: list[str | None], correct: list[bool], n: int, right) -> dict[str, float]:
    """Label accuracy, reward accuracy and unanimity over the disjoint groups of ``n`` samples.

    ``right(answer)`` is the gold check (used here to score the vote, never to make it).
    """
    from selfimprove.score.vote import majority_vote

    labels = rewards = unanimous = 0.0
    groups = len(answers) // n
    for g in range(groups):
        ans, ok = answers[g * n : (g + 1) * n], correct[g * n : (g + 1) * n]
        vote = majority_vote(ans)
        label = vote.pseudo_label
        labels += label is not None and right(label)
        agree = [label is not None and a == label for a in ans]
        rewards += sum(ag == c for ag, c in zip(agree, ok, strict=True)) / n
        unanimous += len(set(ans)) == 1 and ans[0] is not None
    return {"label": labels / groups, "reward": rewards / groups, "unanimous": unanimous / groups}


def measure(
    task_name: str, model: str, prompts: int, seeds: list[int], max_n: int, max_tokens: int
) -> list[dict]:
    """One engine per task; every seed's train prompts sampled ``max_n`` times."""
    from selfimprove.generate import Sampling, build_generator
    from selfimprove.loop.runner import resolve_model
    from selfimprove.tasks import get_task

    folder = resolve_model(model)
    # the embedded base models are trained without the answer-format instruction
    task = get_task(task_name, instruction=not (Path(folder) / "base_model.json").is_file())
    gen = build_generator("vllm", folder, enforce_eager=True, kv_cache_gb=1, seed=0)
    rows = []
    try:
        for seed in seeds:
            ps, gold = task.make_split("train", prompts, seed=seed)
            outs = gen.generate(
                [p["prompt"] for p in ps],
                Sampling(n=max_n, temperature=1.0, max_tokens=max_tokens, seed=seed),
                progress=True,
            )
            per_size: dict[int, list[dict[str, float]]] = {n: [] for n in vote_sizes(max_n)}
            pass1 = []
            for p, completions in zip(ps, outs, strict=True):
                answers = [task.extract(c.text) for c in completions]
                g = gold[p["prompt_id"]]
                correct = [task.check(a, g) for a in answers]
                pass1.append(sum(correct) / len(correct))
                for n in per_size:
                    per_size[n].append(group_scores(answers, correct, n, lambda a, g=g: task.check(a, g)))
            for n, scores in per_size.items():
                rows.append(
                    {
                        "task": task_name,
                        "model": folder,
                        "seed": seed,
                        "prompts": len(ps),
                        "n": n,
                        "pass@1": statistics.mean(pass1),
                        "label_accuracy": statistics.mean(s["label"] for s in scores),
                        "reward_accuracy": statistics.mean(s["reward"] for s in scores),
                        "unanimous": statistics.mean(s["unanimous"] for s in scores),
                    }
                )
    finally:
        gen.close()
    return rows


def render(rows: list[dict], meta: dict[str, Any]) -> str:
    pct = lambda vals: f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.pstdev(vals):.1f}"  # noqa: E731
    m = meta["machine"]
    lines = [
        "# Majority-vote pseudo-label accuracy vs vote size (base models, train split)",
        "",
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['start']} to {meta['end']} (UTC)",
        f"- **Machine:** {m['nproc']} CPUs (`nproc`), {m['cpu']}, GPU: {m['gpus']}; load average "
        f"(1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}",
        f"- Each seed: {meta['prompts']} train-split prompts, {meta['max_n']} samples each (temperature 1, "
        "vLLM, seeded), cut into disjoint groups of n; values are percent, mean ± sd over seeds.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        lines += [
            f"## {task}",
            "",
            f"Model: `{rs[0]['model']}`; sampled pass@1 {pct([r['pass@1'] for r in rs if r['n'] == 1])}.",
            "",
            "| samples per vote (n) | label accuracy | reward accuracy | unanimous groups |",
            "|---|---|---|---|",
        ]
        for n in dict.fromkeys(r["n"] for r in rs):
            sel = [r for r in rs if r["n"] == n]
            lines.append(
                f"| {n} | {pct([r['label_accuracy'] for r in sel])} | "
                f"{pct([r['reward_accuracy'] for r in sel])} | {pct([r['unanimous'] for r in sel])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "counting"])
    ap.add_argument("--model", action="append", default=[], metavar="TASK=DIR", help="default builtin:TASK")
    ap.add_argument("--prompts", type=int, default=128, help="train-split prompts per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-n", type=int, default=64, help="samples per prompt (the largest vote)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="Markdown file (default: print)")
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for task in args.tasks:
        rows += measure(
            task, models.get(task, f"builtin:{task}"), args.prompts, args.seeds, args.max_n, args.max_tokens
        )
    meta = {
        "command": "python benchmarks/bench_vote_size.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "start": start,
        "end": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "prompts": args.prompts,
        "max_n": args.max_n,
    }
    text = render(rows, meta)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_name(args.out.stem + "_raw.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
