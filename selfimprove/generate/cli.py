"""Sample n completions per prompt of a JSONL file into OUT/rollouts.jsonl (resumable).

Prompt file: one JSON object per line with a "prompt" field (a string, or a list of chat messages
{"role", "content"}), an optional "id", and any other fields (kept in the rollouts' "meta").
Re-running with the same --out skips prompts whose samples are already stored.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from selfimprove.errors import InputError
from selfimprove.generate.vllm_backend import ADAPTER_SERVING

BACKENDS = ("vllm", "hf", "openai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``selfimprove generate``."""
    parser.add_argument(
        "--model", required=True, help="local HF model folder (openai: the served model name)"
    )
    parser.add_argument("--prompts", required=True, type=Path, help="JSONL prompt file")
    parser.add_argument("--out", required=True, type=Path, help="output folder (rollouts.jsonl goes there)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    parser.add_argument("--backend", default="vllm", help="vllm | hf | openai (default vllm)")
    parser.add_argument("--adapter", help="PEFT LoRA adapter folder (openai: the served LoRA name)")
    parser.add_argument("--adapter-version", help="label recorded with the adapter in each rollout")
    g = parser.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    g.add_argument("--max-tokens", type=int, default=256, help="max new tokens per sample (default 256)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="seed: same seed, same samples (per backend)")
    g.add_argument("--batch-size", type=int, default=64, help="prompts per stored batch (default 64)")
    e = parser.add_argument_group("engine (vllm / hf)")
    e.add_argument("--dtype", default="float32", help="weights dtype (default float32; CPU needs float32)")
    e.add_argument("--max-model-len", type=int, default=None, help="vllm: context length")
    e.add_argument("--kv-cache-gb", type=float, default=None, help="vllm on CPU: KV cache GiB (default 2)")
    e.add_argument(
        "--max-lora-rank", type=int, default=16, help="vllm: largest adapter rank served (default 16)"
    )
    e.add_argument(
        "--adapter-serving",
        choices=ADAPTER_SERVING,
        default="auto",
        help="vllm: serve --adapter with LoRA kernels or merged into the weights "
        "(default auto: merged on CPU, lora on CUDA)",
    )
    e.add_argument("--enforce-eager", action="store_true", help="vllm: skip torch.compile (faster start)")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder")
    o = parser.add_argument_group("openai-compatible server")
    o.add_argument("--base-url", help="e.g. http://127.0.0.1:8000/v1")
    o.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    o.add_argument("--max-concurrency", type=int, default=8, help="parallel requests (default 8)")
    o.add_argument("--timeout", type=float, default=60.0, help="per-request time-out in s (default 60)")
    o.add_argument("--max-retries", type=int, default=4, help="retries on 429/5xx/time-outs (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check(args: argparse.Namespace) -> None:
    if args.backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend {args.backend!r}; allowed: {', '.join(BACKENDS)}")
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    if args.max_tokens < 1:
        raise InputError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.backend == "openai":
        if not args.base_url:
            raise InputError("--base-url is required with --backend openai")
    else:
        from selfimprove.models.loading import resolve_model_dir

        resolve_model_dir(args.model)
        if args.base_url:
            raise InputError(f"--base-url only applies to --backend openai (got --backend {args.backend})")
    if args.adapter and args.backend != "openai" and not Path(args.adapter).is_dir():
        raise InputError(f"--adapter folder not found: {args.adapter}")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out exists and is not a folder: {args.out}")


def _options(args: argparse.Namespace) -> dict:
    if args.backend == "openai":
        return dict(
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            max_concurrency=args.max_concurrency,
            timeout=args.timeout,
            max_retries=args.max_retries,
        )
    opts: dict = dict(dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    if args.backend == "vllm":
        opts.update(
            enable_lora=bool(args.adapter),
            adapter_serving=args.adapter_serving,
            max_lora_rank=args.max_lora_rank,
            max_model_len=args.max_model_len,
            kv_cache_gb=args.kv_cache_gb,
            enforce_eager=args.enforce_eager,
        )
        if args.seed is not None:
            opts["seed"] = args.seed
    return opts


def _write_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Validate the inputs, build the generator, sample into OUT/rollouts.jsonl."""
    from selfimprove.generate import build_generator
    from selfimprove.generate.base import Sampling
    from selfimprove.generate.store import RolloutStore, generate_rollouts, load_prompts

    _check(args)
    records = load_prompts(args.prompts)  # before the (slow) engine start: bad files fail fast
    sampling = Sampling(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    store = RolloutStore(args.out)
    done = store.completed(args.n)
    todo = sum(1 for r in records if r["prompt_id"] not in done)
    if todo == 0:
        print(f"all {len(records)} prompts already have {args.n} samples in {store.path}")
        return 0
    generator = build_generator(args.backend, args.model, **_options(args))
    try:
        rows = generate_rollouts(
            generator,
            records,
            sampling,
            store,
            adapter=args.adapter,
            adapter_version=args.adapter_version,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    finally:
        generator.close()
    _write_json(
        args.out / "generate.json",
        {
            "model": args.model,
            "backend": args.backend,
            "adapter": args.adapter,
            "adapter_version": args.adapter_version,
            "prompts": str(args.prompts),
            "sampling": sampling.to_dict(),
        },
    )
    print(f"wrote {len(rows)} rollouts for {len(records)} prompts to {store.path}")
    return 0
