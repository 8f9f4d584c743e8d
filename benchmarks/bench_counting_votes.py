"""Can a different label-free vote find counting's answer more often? (pseudo-label accuracy of vote variants)

Counting is the one bundled family where the label-free recipes recover less than 90% of the
ground-truth baseline's gain: its majority vote is right on about 72-81% of the train prompts and
saturates there as the vote grows (``bench_vote_size.py``). This measures, on the same base model
and train prompts, whether another label-free way of picking the pseudo-label does better:

- **vote of n** samples at temperature 1 (TTRL's; n = 8, 16, 32) and of 32 at temperature 0.5;
- **greedy**: the single temperature-0 answer;
- **confidence-weighted vote**: each sample's vote weighted by its sequence probability
  (``exp`` of the summed token log-probabilities), and the single most probable sample;
- **permuted views** (test-time augmentation): the letters of the quoted string are shuffled,
  which keeps every letter's count, so each view asks the same question; votes pooled over 4 views
  x 8 samples, and the original's 8 samples plus 3 views x 8;
- **self-consistent vote**: only samples whose listed matches (``Matches: a, a.``) number as many
  as their final answer vote.

Every variant reads only the question and the model's samples; the gold answers are read here
to score the variants, never to make them. Nothing is trained.

Usage: ``python benchmarks/bench_counting_votes.py [--seeds 0 1 2] [--prompts 128]
[--model builtin:counting] [--out benchmarks/results/counting_votes.md]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import statistics
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WORD = re.compile(r"in '([a-z]+)'\?")
_MATCHES = re.compile(r"Matches: ([^.]*)\.")
VIEWS = 4

VARIANTS = [
    ("vote of 8 (T=1)", "TTRL with n=8"),
    ("vote of 16 (T=1)", ""),
    ("vote of 32 (T=1)", "the shipped TTRL vote"),
    ("vote of 32 (T=0.5)", "sharper samples"),
    ("greedy (T=0)", "one answer"),
    ("vote of 32 weighted by sequence probability", ""),
    ("most probable of 32 samples", ""),
    ("4 permuted views x 8, pooled", "test-time augmentation"),
    ("original 8 + 3 permuted views x 8", ""),
    ("vote of 32, self-consistent samples only", "listed matches = answer"),
]


def permute(text: str, rng: random.Random) -> str:
    """The question with the letters of its quoted string shuffled (every letter's count kept)."""
    m = _WORD.search(text)
    if m is None:
        raise ValueError(f"not a counting question: {text!r}")
    letters = list(m.group(1))
    rng.shuffle(letters)
    return text[: m.start(1)] + "".join(letters) + text[m.end(1) :]


def listed_matches(text: str) -> int | None:
    """How many matches a completion lists before its answer (None when it lists none)."""
    m = _MATCHES.search(text)
    if m is None:
        return None
    items = m.group(1).strip()
    return 0 if items == "none" else len([x for x in items.split(",") if x.strip()])


def weighted_vote(answers: list[str | None], weights: list[float]) -> str | None:
    """The answer with the largest summed weight (None answers never win)."""
    totals: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            totals[a] += w
    return max(totals, key=totals.__getitem__) if totals else None


def measure(model: str, seeds: list[int], prompts: int, max_tokens: int) -> list[dict[str, Any]]:
    from selfimprove.generate import Sampling, build_generator
    from selfimprove.loop.runner import resolve_model
    from selfimprove.score.vote import majority_vote
    from selfimprove.tasks import get_task

    folder = resolve_model(model)
    task = get_task("counting", instruction=not (Path(folder) / "base_model.json").is_file())
    gen = build_generator("vllm", folder, enforce_eager=True, kv_cache_gb=1, seed=0)
    rows = []
    try:
        for seed in seeds:
            ps, gold = task.make_split("train", prompts, seed=seed)
            msgs = [p["prompt"] for p in ps]
            rng = random.Random(f"views|{seed}")
            views = [[{**m[0], "content": permute(m[0]["content"], rng)}] for m in msgs for _ in range(VIEWS)]

            def sample(batch, n, temperature, offset, logprobs=None, seed=seed):
                s = Sampling(
                    n=n, temperature=temperature, max_tokens=max_tokens, seed=seed + offset, logprobs=logprobs
                )
                return gen.generate(batch, s, progress=True)

            t1 = sample(msgs, 32, 1.0, 0, logprobs=0)
            t05 = sample(msgs, 32, 0.5, 1)
            greedy = sample(msgs, 1, 0.0, 2)
            vs = sample(views, 8, 1.0, 3)
            hits: dict[str, list[bool]] = defaultdict(list)
            pass1 = []
            for i, p in enumerate(ps):
                g = gold[p["prompt_id"]]
                a = [task.extract(c.text) for c in t1[i]]
                logp = [sum(c.token_logprobs or [0.0]) for c in t1[i]]
                va = [[task.extract(c.text) for c in vs[i * VIEWS + k]] for k in range(VIEWS)]
                own = [
                    x if x is not None and str(listed_matches(c.text)) == x else None
                    for x, c in zip(a, t1[i], strict=True)
                ]
                pass1.append(statistics.mean(task.check(x, g) for x in a))
                picks = {
                    "vote of 8 (T=1)": majority_vote(a[:8]).pseudo_label,
                    "vote of 16 (T=1)": majority_vote(a[:16]).pseudo_label,
                    "vote of 32 (T=1)": majority_vote(a).pseudo_label,
                    "vote of 32 (T=0.5)": majority_vote([task.extract(c.text) for c in t05[i]]).pseudo_label,
                    "greedy (T=0)": task.extract(greedy[i][0].text),
                    "vote of 32 weighted by sequence probability": weighted_vote(
                        a, [math.exp(x) for x in logp]
                    ),
                    "most probable of 32 samples": a[max(range(len(a)), key=logp.__getitem__)],
                    "4 permuted views x 8, pooled": majority_vote(sum(va, [])).pseudo_label,
                    "original 8 + 3 permuted views x 8": majority_vote(a[:8] + sum(va[:3], [])).pseudo_label,
                    "vote of 32, self-consistent samples only": majority_vote(own).pseudo_label,
                }
                for name, label in picks.items():
                    hits[name].append(label is not None and task.check(label, g))
            for name, _ in VARIANTS:
                rows.append(
                    {
                        "model": folder,
                        "seed": seed,
                        "prompts": len(ps),
                        "variant": name,
                        "pass@1": statistics.mean(pass1),
                        "label_accuracy": statistics.mean(hits[name]),
                    }
                )
    finally:
        gen.close()
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def pct(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{100 * statistics.mean(vals):.1f} ± {100 * sd:.1f}"

    m = meta["machine"]
    seeds = sorted({r["seed"] for r in rows})
    base = [r["label_accuracy"] for r in rows if r["variant"] == "vote of 32 (T=1)"]
    lines = [
        "# Counting: pseudo-label accuracy of label-free vote variants (base model, train split)",
        "",
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['start']} to {meta['end']} (UTC)",
        f"- **Machine:** {m['nproc']} CPUs (`nproc`), {m['cpu']}, GPU: {m['gpus']}; load average "
        f"(1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}",
        f"- Model `{rows[0]['model']}`; seeds {' '.join(map(str, seeds))}, {rows[0]['prompts']} "
        f"train-split prompts each; sampled pass@1 "
        f"{pct([r['pass@1'] for r in rows if r['variant'] == VARIANTS[0][0]])}.",
        "- Label accuracy: share of prompts whose picked answer is the gold one (percent, mean ± sample "
        "sd over seeds); the last column is the difference to the shipped 32-sample vote, per seed.",
        "",
        "| pseudo-label from | label accuracy | vs vote of 32 | note |",
        "|---|---|---|---|",
    ]
    for name, note in VARIANTS:
        acc = [r["label_accuracy"] for r in rows if r["variant"] == name]
        diff = [a - b for a, b in zip(acc, base, strict=True)]
        lines.append(f"| {name} | {pct(acc)} | {100 * statistics.mean(diff):+.1f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="builtin:counting", help="counting base model (folder or builtin:counting)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=128, help="train-split prompts per seed")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/counting_votes.md"))
    args = ap.parse_args(argv)

    start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = measure(args.model, args.seeds, args.prompts, args.max_tokens)
    meta = {
        "command": shlex.join(["python", "benchmarks/bench_counting_votes.py", *sys.argv[1:]]),
        "start": start,
        "end": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, meta))
    raw = args.out.with_name(args.out.stem + "_raw.jsonl")
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
