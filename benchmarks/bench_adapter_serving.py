"""Serving a trained adapter on vLLM: LoRA kernels vs merged weights, side by side on one engine.

One engine is built on the base model with LoRA support (``adapter_serving="lora"``); the script
then alternates, ``--repeats`` times, sampling the bundled task's eval prompts

- with the adapter on vLLM's LoRA kernels (``adapter_serving="lora"``), and
- with the adapter merged into the engine's weights (``adapter_serving="merged"``: PEFT merge,
  ``reload_weights`` in place; the swap is timed separately),

and reports seconds per call, the ratio, the swap cost and the held-out accuracy of each (the
same seed, so the two should agree). Both modes run on the same engine, so the ratio is free of
start-up differences; the loop's own generator (``auto`` on CPU) is built without LoRA support
and samples the base model a little faster still.

Usage (a demo run folder gives the adapter; the base model is the demo's cached one)::

    python benchmarks/bench_adapter_serving.py --model ~/.cache/selfimprove/base-string_ops-<hash> \
        --adapter runs/demo/round_03/adapter [--task string_ops] [--prompts 200] [--n 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--adapter", required=True, help="PEFT LoRA adapter trained on it")
    ap.add_argument("--task", default="string_ops", help="bundled task whose eval split is sampled")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapter_serving.md")
    args = ap.parse_args()

    from selfimprove.generate.base import Sampling
    from selfimprove.generate.vllm_backend import VLLMGenerator
    from selfimprove.tasks import get_task

    task = get_task(args.task, instruction=False)
    prompts, gold = task.make_split("eval", args.prompts, seed=0, level=args.level)
    sampling = Sampling(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=1)

    def accuracy(groups) -> float:
        ok = [
            task.check(task.extract(c.text), gold[p["prompt_id"]])
            for p, g in zip(prompts, groups, strict=True)
            for c in g
        ]
        return sum(ok) / len(ok)

    load_before = round(os.getloadavg()[0], 1)
    t0 = time.time()
    gen = VLLMGenerator(args.model, enable_lora=True, adapter_serving="lora", max_lora_rank=64)
    startup = time.time() - t0
    texts = [p["prompt"] for p in prompts]
    seconds: dict[str, list[float]] = {"base": [], "lora": [], "merged": []}
    swaps: list[float] = []
    acc: dict[str, float] = {}
    try:
        gen.generate(texts[:8], sampling)  # warm-up
        for _ in range(args.repeats):
            for mode in ("base", "lora", "merged"):
                gen.adapter_serving = "merged" if mode == "merged" else "lora"
                adapter = None if mode == "base" else args.adapter
                if mode == "merged":
                    t = time.time()
                    gen._serve_weights(adapter)  # the merge and the in-place reload, timed apart
                    swaps.append(time.time() - t)
                t = time.time()
                out = gen.generate(texts, sampling, adapter=adapter)
                seconds[mode].append(time.time() - t)
                acc[mode] = accuracy(out)
                if mode == "merged":
                    gen._serve_weights(None)  # back to the base weights for the next repeat
    finally:
        gen.close()
    med = {k: statistics.median(v) for k, v in seconds.items()}
    res = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_before": load_before,
        "model": str(args.model),
        "adapter": str(args.adapter),
        "samples": args.prompts * args.n,
        "startup_s": round(startup, 1),
        "seconds": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "lora_over_merged": round(med["lora"] / med["merged"], 2),
        "swap_s": [round(x, 2) for x in swaps],
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
    }
    print(json.dumps(res, indent=1))
    lines = [
        "# Adapter serving on vLLM: LoRA kernels vs merged weights",
        "",
        f"`python benchmarks/bench_adapter_serving.py --model {args.model} --adapter {args.adapter} "
        f"--prompts {args.prompts} --n {args.n} --repeats {args.repeats}` — {res['when']}, "
        f"{res['machine']['cpu']}, {res['machine']['nproc']} cores, load average "
        f"{res['load_before']} before.",
        "",
        f"One engine (LoRA support on, start-up {res['startup_s']} s); {res['samples']} samples of the "
        f"{args.task} eval split per call (T=1.0, seed 1), calls interleaved base / LoRA / merged.",
        "",
        "| serving | seconds per call (each repeat) | median | held-out accuracy |",
        "|---|---|---|---|",
    ]
    for k in ("base", "lora", "merged"):
        lines.append(
            f"| {k} | {', '.join(map(str, res['seconds'][k]))} | {res['median_s'][k]} | {res['accuracy'][k]} |"
        )
    lines += [
        "",
        f"LoRA kernels / merged: **{res['lora_over_merged']}x** the time. Merge + reload of the "
        f"adapter (each repeat): {', '.join(map(str, res['swap_s']))} s.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
