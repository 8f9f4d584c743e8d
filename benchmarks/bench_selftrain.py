"""Recipe research: label-free self-training rounds vs the ground-truth-reward baseline, same budget.

Each round, for every method:
  1. sample ``n`` completions per "train" prompt (fresh prompts every round) at temperature ``T``
     from the current policy (base model + the LoRA adapter trained so far);
  2. select SFT rows:
     - ``labelfree`` (majority-filtered SFT): majority vote over the extracted answers; keep prompts
       whose majority ratio is >= ``threshold`` and, from them, the samples that agree with the vote.
       No gold label is read on this path;
     - ``gold`` (the supervised baseline, rejection sampling with a verifier): keep the samples whose
       answer is correct according to the gold label. Same prompts, same samples, same trainer;
  3. fine-tune the LoRA adapter on the kept rows (loss on the completion only);
  4. evaluate on held-out "eval" prompts (fixed for all runs): sampled pass@1, maj@n, pass@n at ``T``.

Departures from the product's loop, on purpose, to fit many runs on a loaded 2-core CPU: sampling
uses HF ``generate`` in-process (the loop uses vLLM) and training is a bare torch loop over the
PEFT model (the loop uses TRL's SFTTrainer); the selection rules, LoRA settings, learning rate and
epochs are the ones the demo config uses. Results are appended as JSON lines; ``--summarize``
turns them into the Markdown tables of benchmarks/results/selftrain.md.

    python benchmarks/bench_selftrain.py --task arithmetic --base DIR --seeds 0 1 2 --out raw.jsonl
    python benchmarks/bench_selftrain.py --summarize raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _lora(model: Any, rank: int, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def select_rows(
    method: str,
    prompts: list[dict[str, Any]],
    texts: dict[str, list[str]],
    task: Any,
    threshold: float,
    gold: dict[str, str] | None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """SFT rows for one round and label-free diagnostics (label accuracy needs gold: diagnostics only)."""
    from selfimprove.score.vote import majority_vote

    rows: list[dict[str, Any]] = []
    kept_prompts = 0
    label_hits = 0
    ratios = []
    for p in prompts:
        outs = texts[p["prompt_id"]]
        answers = [task.extract(t) for t in outs]
        if method == "labelfree":
            vote = majority_vote(answers, min_share=threshold)
            ratios.append(vote.majority_ratio)
            if vote.pseudo_label is None:
                continue
            keep = [t for t, a in zip(outs, answers, strict=True) if a == vote.pseudo_label]
            kept_prompts += 1
            # Diagnostics only (never used for selection): was the pseudo-label right?
            label_hits += bool(gold and task.check(vote.pseudo_label, gold[p["prompt_id"]]))
        elif method == "gold":
            assert gold is not None
            keep = [t for t, a in zip(outs, answers, strict=True) if task.check(a, gold[p["prompt_id"]])]
            kept_prompts += bool(keep)
        else:
            raise ValueError(f"unknown method {method!r}")
        rows.extend({"prompt": p["prompt"], "completion": t} for t in keep)
    diag = {
        "rows": float(len(rows)),
        "kept_prompts": float(kept_prompts),
        "label_accuracy": label_hits / kept_prompts
        if (method == "labelfree" and kept_prompts)
        else float("nan"),
        "majority_ratio": statistics.fmean(ratios) if ratios else float("nan"),
    }
    return rows, diag


def run(args: argparse.Namespace) -> None:
    """Run every (seed, method) for ``args.rounds`` rounds and append one JSON line per round."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.models.base_model import measure, sample_completions, train_on_demonstrations
    from selfimprove.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    tok = AutoTokenizer.from_pretrained(args.base)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {
        "task": args.task,
        "level": args.level,
        "base": str(args.base),
        "n": args.n,
        "temperature": args.temperature,
        "threshold": args.threshold,
        "lr": args.lr,
        "epochs": args.epochs,
        "rank": args.rank,
        "prompts": args.prompts,
        "eval_prompts": args.eval_prompts,
        "reset": args.reset,
    }

    def evaluate(model: Any, seed: int) -> dict[str, float]:
        return measure(
            model,
            tok,
            task,
            level=args.level,
            n_prompts=args.eval_prompts,
            n_samples=args.n,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
        )

    def emit(rec: dict[str, Any]) -> None:
        with out.open("a") as fh:
            fh.write(json.dumps({**common, **rec}) + "\n")
        m = rec["metrics"]
        print(
            f"[{rec['method']:>9} seed {rec['seed']} round {rec['round']}] pass@1 {m['pass@1']:.3f} "
            f"maj@{args.n} {m[f'maj@{args.n}']:.3f} pass@{args.n} {m[f'pass@{args.n}']:.3f} "
            f"rows {rec.get('rows', 0):.0f} ({rec.get('seconds', 0):.0f}s)",
            flush=True,
        )

    for seed in args.seeds:
        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
        base.eval()
        t0 = time.time()
        emit(
            {
                "method": "base",
                "seed": seed,
                "round": 0,
                "metrics": evaluate(base, seed),
                "seconds": time.time() - t0,
            }
        )
        for method in args.methods:
            model = _lora(
                AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32), args.rank, seed
            )
            for rnd in range(1, args.rounds + 1):
                t0 = time.time()
                # Fresh label-free prompts every round; the same prompts for every method of a seed.
                prompts, gold = task.make_split(
                    "train", args.prompts, seed=1000 * seed + rnd, level=args.level
                )
                model.eval()
                texts = sample_completions(
                    model,
                    tok,
                    prompts,
                    n=args.n,
                    temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens,
                    seed=1000 * seed + rnd,
                )
                t_gen = time.time() - t0
                rows, diag = select_rows(method, prompts, texts, task, args.threshold, gold)
                if args.reset and rnd > 1:  # ReST-EM: every round restarts from the base model
                    model = _lora(
                        AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32), args.rank, seed
                    )
                t1 = time.time()
                if rows:
                    steps = max(1, math.ceil(len(rows) * args.epochs / args.batch_size))
                    train_on_demonstrations(
                        model,
                        tok,
                        rows,
                        steps=steps,
                        batch_size=args.batch_size,
                        lr=args.lr,
                        warmup_steps=min(5, steps // 5),
                        seed=1000 * seed + rnd,
                        progress=False,
                    )
                t_train = time.time() - t1
                metrics = evaluate(model, seed)
                emit(
                    {
                        "method": method,
                        "seed": seed,
                        "round": rnd,
                        "metrics": metrics,
                        **diag,
                        "gen_seconds": t_gen,
                        "train_seconds": t_train,
                        "seconds": time.time() - t0,
                    }
                )


def summarize(paths: list[str]) -> str:
    """Markdown tables (mean ± spread over seeds per task, method, round) from the raw JSON lines."""
    recs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    if not recs:
        raise SystemExit("no records")
    lines: list[str] = []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
    for task, rs in by_task.items():
        n = rs[0]["n"]
        seeds = sorted({r["seed"] for r in rs})
        lines.append(f"### {task} (level {rs[0]['level']}, seeds {seeds})\n")
        lines.append(
            f"| method | round | pass@1 | maj@{n} | pass@{n} | rows | label acc | majority ratio | s/round |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        keys = sorted({(r["method"], r["round"]) for r in rs}, key=lambda k: (k[0] != "base", k[0], k[1]))

        def stat(vals: list[float], scale: float = 100.0, fmt: str = "{:.1f}") -> str:
            vals = [v for v in vals if v == v]
            if not vals:
                return "-"
            mean = statistics.fmean(vals) * scale
            if len(vals) == 1:
                return fmt.format(mean)
            return f"{fmt.format(mean)} ± {fmt.format(statistics.stdev(vals) * scale)}"

        for method, rnd in keys:
            sel = [r for r in rs if r["method"] == method and r["round"] == rnd]
            lines.append(
                f"| {method} | {rnd} | {stat([r['metrics']['pass@1'] for r in sel])} "
                f"| {stat([r['metrics'][f'maj@{n}'] for r in sel])} "
                f"| {stat([r['metrics'][f'pass@{n}'] for r in sel])} "
                f"| {stat([r.get('rows', float('nan')) for r in sel], 1, '{:.0f}')} "
                f"| {stat([r.get('label_accuracy', float('nan')) for r in sel])} "
                f"| {stat([r.get('majority_ratio', float('nan')) for r in sel])} "
                f"| {stat([r.get('seconds', float('nan')) for r in sel], 1, '{:.0f}')} |"
            )
        # Gain over the base model after the last round, per seed, and the label-free/baseline ratio.
        last = max(r["round"] for r in rs)
        base = {r["seed"]: r["metrics"]["pass@1"] for r in rs if r["method"] == "base"}
        gains: dict[str, dict[int, float]] = {}
        for r in rs:
            if r["round"] == last and r["method"] != "base" and r["seed"] in base:
                gains.setdefault(r["method"], {})[r["seed"]] = r["metrics"]["pass@1"] - base[r["seed"]]
        lines.append("")
        for method, g in sorted(gains.items()):
            vals = list(g.values())
            spread = f" ± {statistics.stdev(vals) * 100:.1f}" if len(vals) > 1 else ""
            lines.append(
                f"- {method}: pass@1 gain after round {last}: {statistics.fmean(vals) * 100:+.1f}{spread} points "
                f"(per seed: {', '.join(f'{v * 100:+.1f}' for v in vals)})"
            )
        if "labelfree" in gains and "gold" in gains:
            common_seeds = sorted(set(gains["labelfree"]) & set(gains["gold"]))
            ratios = [
                gains["labelfree"][s] / gains["gold"][s] for s in common_seeds if abs(gains["gold"][s]) > 1e-9
            ]
            if ratios:
                lf = statistics.fmean(gains["labelfree"][s] for s in common_seeds)
                gd = statistics.fmean(gains["gold"][s] for s in common_seeds)
                lines.append(
                    f"- label-free recovers {lf / gd * 100:.0f}% of the baseline's mean gain "
                    f"(per seed: {', '.join(f'{r * 100:.0f}%' for r in ratios)})"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--summarize", nargs="+", metavar="RAW_JSONL", help="print Markdown tables of raw results")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--base", help="base model folder (selfimprove build-base)")
    p.add_argument("--methods", nargs="+", default=["labelfree", "gold"], choices=["labelfree", "gold"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=96, help="train prompts per round")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (train and eval)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.5, help="minimum majority ratio (label-free)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument(
        "--reset", action="store_true", help="restart the adapter from the base each round (ReST-EM)"
    )
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/selftrain_raw.jsonl")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not args.base:
        p.error("--base is required (build one with `selfimprove build-base`)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.processor() or platform.machine()}"
    )
    print("# " + " ".join(sys.argv), flush=True)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
