"""Generation throughput: the toolkit's generators vs bare vLLM / bare HF, in one run.

For a small (1.3M) and a ~50M-parameter Qwen2 built locally (random weights, char tokenizer), with
the same prompts and the same sampling (n=4, temperature 1, top_p 1, 32 new tokens, seeded):

- vLLM: bare ``vllm.LLM.generate`` vs ``VLLMGenerator.generate`` on the same engine (interleaved),
  plus engine start-up time;
- HF: a bare batched, left-padded ``model.generate`` loop vs ``HFGenerator.generate``;
- LoRA (50M model): a LoRA adapter (r=8, all linear layers) served by vLLM vs the same adapter merged
  into the weights and served as a plain model.

Each vLLM engine runs in its own child process (clean start-up timing, no leftover engine).
Usage: ``python benchmarks/bench_generate.py [--out benchmarks/results/generate.md] [--repeats 3]``
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

N, MAX_TOKENS, SEED = 4, 32, 1234
WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()


def make_prompts(count: int) -> list[str]:
    """Deterministic plain-text prompts of varied length."""
    return [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(4 + i % 9)) for i in range(count)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# -- child phases ------------------------------------------------------------------------------
def phase_vllm(model: str, adapter: str | None, repeats: int, prompts: int) -> dict:
    """Start an engine, then alternate bare LLM.generate and VLLMGenerator.generate."""
    from vllm import SamplingParams

    from selfimprove.generate.base import Sampling
    from selfimprove.generate.vllm_backend import VLLMGenerator

    ps = make_prompts(prompts)
    gen, startup = timed(lambda: VLLMGenerator(model, enable_lora=adapter is not None, enforce_eager=True))
    sampling = Sampling(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=SEED)
    params = SamplingParams(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=SEED)
    lora = gen.lora_request(adapter) if adapter else None

    def bare():
        outs = gen._llm.generate(ps, params, use_tqdm=False, lora_request=lora)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    def toolkit():
        groups = gen.generate(ps, sampling, adapter=adapter)
        return sum(c.completion_tokens for g in groups for c in g)

    bare()  # warm-up (first batch pays one-off allocations and, with LoRA, the adapter load)
    rates: dict[str, list[float]] = {"bare": [], "toolkit": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("toolkit", toolkit)):
            tokens, secs = timed(fn)
            rates[name].append(tokens / secs)
    gen.close()
    return {"startup_s": startup, **rates}


def phase_hf(model: str, repeats: int, prompts: int, batch_size: int = 16) -> dict:
    """Alternate a bare batched HF generate loop and HFGenerator.generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.generate.base import Sampling
    from selfimprove.generate.hf_backend import HFGenerator

    ps = make_prompts(prompts)
    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    bare_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    gen = HFGenerator(model, batch_size=batch_size)
    sampling = Sampling(n=N, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=SEED)
    per_batch = max(1, batch_size // N)
    eos = tok.eos_token_id

    def bare():
        total = 0
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(ps), per_batch)):
                torch.manual_seed(SEED + b)
                enc = tok(ps[start : start + per_batch], return_tensors="pt", padding=True)
                out = bare_model.generate(
                    **enc, max_new_tokens=MAX_TOKENS, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    num_return_sequences=N, pad_token_id=tok.pad_token_id,
                )  # fmt: skip
                for row in out[:, enc["input_ids"].shape[1] :].tolist():
                    total += row.index(eos) + 1 if eos in row else len(row)
        return total

    def toolkit():
        groups = gen.generate(ps, sampling)
        return sum(c.completion_tokens for g in groups for c in g)

    bare()
    rates: dict[str, list[float]] = {"bare": [], "toolkit": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("toolkit", toolkit)):
            tokens, secs = timed(fn)
            rates[name].append(tokens / secs)
    return rates


# -- orchestration -------------------------------------------------------------------------------
def child(args: list[str]) -> dict:
    """Run one phase in a fresh interpreter; return its JSON result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", *args], capture_output=True, text=True, timeout=900
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"phase {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def build_models(root: Path) -> dict[str, Path]:
    """The small and ~50M models, a LoRA adapter on the 50M one, and that adapter merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selfimprove.models.tiny import build_tiny_model

    small = build_tiny_model(root / "small", hidden_size=128, num_layers=2, num_heads=2, seed=0)
    mid = build_tiny_model(root / "mid", hidden_size=512, num_layers=12, num_heads=8, seed=0)
    base = AutoModelForCausalLM.from_pretrained(str(mid), dtype=torch.float32)
    cfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # fmt: skip
    peft_model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    peft_model.save_pretrained(str(root / "adapter"))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(root / "merged"), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (mid / f).exists():
            (root / "merged" / f).write_bytes((mid / f).read_bytes())
    n_small = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(small)).parameters())
    return {"small": small, "mid": mid, "adapter": root / "adapter", "merged": root / "merged",
            "params": {"small": n_small, "mid": sum(p.numel() for p in base.parameters())}}  # fmt: skip


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    """Run every phase and write the Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generate.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        m = build_models(Path(tmp))
        r, p = str(args.repeats), str(args.prompts)
        res: dict = {}
        phases = [
            ("small_vllm", ["vllm", str(m["small"]), "-", r, p]),
            ("small_hf", ["hf", str(m["small"]), "-", r, p]),
            ("mid_vllm", ["vllm", str(m["mid"]), "-", r, p]),
            ("mid_hf", ["hf", str(m["mid"]), "-", r, p]),
            ("mid_lora", ["vllm", str(m["mid"]), str(m["adapter"]), r, p]),
            ("mid_merged", ["vllm", str(m["merged"]), "-", r, p]),
        ]
        for name, phase_args in phases:
            print(f"[{name}] ...", flush=True)
            res[name] = child(phase_args)
            # Partial results survive an interrupted run.
            write_report(args, m["params"], res, time.time() - t0)
    wall = time.time() - t0
    write_report(args, m["params"], res, wall)
    print(args.out.read_text())


def write_report(args, params: dict, res: dict, wall: float) -> None:
    """Markdown with the command, machine, and medians/ratios of the measured tokens/s."""
    cpu = machine_info()["cpu"]
    rows = []
    for key, label in (("small", "small"), ("mid", "~50M")):
        if f"{key}_vllm" not in res or f"{key}_hf" not in res:
            continue
        v, h = res[f"{key}_vllm"], res[f"{key}_hf"]
        rows.append(
            f"| {label} ({params[key] / 1e6:.1f}M) | {med(v['bare']):.0f} | {med(v['toolkit']):.0f} | "
            f"{med(v['toolkit']) / med(v['bare']):.3f} | {med(h['bare']):.0f} | {med(h['toolkit']):.0f} | "
            f"{med(h['toolkit']) / med(h['bare']):.3f} | {med(v['toolkit']) / med(h['toolkit']):.2f} | "
            f"{v['startup_s']:.1f} |"
        )
    lora_table = "(not measured: run interrupted)"
    if "mid_lora" in res and "mid_merged" in res:
        lora, merged = res["mid_lora"], res["mid_merged"]
        lora_table = f"""| served as | tok/s (toolkit) | start-up s |
|---|---|---|
| merged weights (plain model) | {med(merged["toolkit"]):.0f} | {merged["startup_s"]:.1f} |
| base + LoRA adapter (r=8, all linear layers, `enable_lora=True`) | {med(lora["toolkit"]):.0f} | {lora["startup_s"]:.1f} |
| ratio adapter / merged | {med(lora["toolkit"]) / med(merged["toolkit"]):.2f} | |"""
    text = f"""# Generation throughput: toolkit vs bare engines

- Command: `python benchmarks/bench_generate.py --repeats {args.repeats} --prompts {args.prompts}`
- Date: {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}; whole run {wall / 60:.1f} min
- Machine: {cpu}, {os.cpu_count()} cores, shared with other work (load varies during the run, so
  only ratios measured side by side — interleaved, same engine — are meaningful)
- Stack: vllm-cpu 0.32.0 (float32, `enforce_eager=True`, KV cache 1 GiB, `VLLM_CPU_OMP_THREADS_BIND=nobind`),
  transformers (HF) float32
- Workload: {args.prompts} plain-text prompts x n={N} samples x {MAX_TOKENS} new tokens, temperature 1, top_p 1,
  seed {SEED}; random-weight Qwen2 models (head_dim 64, char tokenizer) built by the script.
- tokens/s = generated tokens / wall time of the generate call; medians of {args.repeats} interleaved repeats
  after one warm-up. Start-up = constructing `VLLMGenerator` (engine processes, weights, KV cache).

## Toolkit vs bare engines (target: toolkit/bare >= 0.97)

| model | bare vLLM tok/s | toolkit vLLM tok/s | toolkit/bare | bare HF tok/s | toolkit HF tok/s | toolkit/bare | vLLM/HF | vLLM start-up s |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## LoRA adapter vs merged weights (vLLM, ~50M model)

{lora_table}

Note: the adapter and merged rows come from two engines run one after the other, not interleaved,
so machine load can shift this ratio more than the toolkit/bare ratios.

## Raw measurements (tokens/s per repeat)

```json
{json.dumps(res, indent=1)}
```
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        kind, model, adapter, repeats, prompts = sys.argv[2:7]
        if kind == "vllm":
            out = phase_vllm(model, None if adapter == "-" else adapter, int(repeats), int(prompts))
        else:
            out = phase_hf(model, int(repeats), int(prompts))
        print("RESULT " + json.dumps(out), flush=True)
    else:
        main()
