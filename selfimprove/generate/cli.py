"""Sample n completions per prompt of a JSONL file into OUT/rollouts.jsonl (resumable).

Prompt file: one JSON object per line with a "prompt" field (a string, or a list of chat messages
{"role", "content"}), an optional "id", and any other fields (kept in the rollouts' "meta").
Re-running with the same --out skips prompts whose samples are already stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfimprove.errors import InputError
from selfimprove.generate.store import ROLLOUTS_FILE
from selfimprove.generate.vllm_backend import ADAPTER_SERVING
from selfimprove.runs.io import write_json_atomic

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
    e.add_argument(
        "--kv-cache-gb", type=int, default=None, help="vllm on CPU: KV cache in whole GiB (default 2)"
    )
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
    i = parser.add_argument_group("prompts")
    i.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="render plain-text prompts with the model's chat template (each becomes one user message); "
        "default: send them raw, with a warning when the model has a chat template; "
        "--no-chat-template: raw, no warning",
    )
    i.add_argument(
        "--skip-long-prompts",
        action="store_true",
        help="leave out (and count) prompts longer than the model's context instead of stopping",
    )
    i.add_argument(
        "--tokenizer",
        type=Path,
        help="openai: a local folder with the served model's tokenizer, to check prompts before sending "
        "(default: --model when it is a local folder; otherwise the server checks them)",
    )
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
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        raise InputError(f"--tokenizer folder not found: {args.tokenizer}")
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


def _tokenizer_folder(args: argparse.Namespace) -> Path | None:
    """The folder whose tokenizer checks the prompts (None: an openai model known only by name)."""
    if args.backend != "openai":
        return Path(args.model)
    if args.tokenizer is not None:
        return args.tokenizer
    folder = Path(args.model).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _check_prompts(
    args: argparse.Namespace, records: list[dict], lines: dict[str, int]
) -> tuple[list[dict], list[str], list[str]]:
    """(records to generate for, notes for the user, ids of prompts left out as too long).

    The chat template is applied when asked (``--chat-template``); an empty prompt, or one too
    long for the model's context (unless ``--skip-long-prompts``), raises InputError naming
    file:line. An openai model known only by name is checked by its server instead.
    """
    from selfimprove.generate.inputs import (
        as_chat,
        check_prompts,
        context_length,
        has_chat_template,
        load_tokenizer,
    )

    if args.chat_template:
        records = [{**r, "prompt": as_chat(r["prompt"])} for r in records]
    folder = _tokenizer_folder(args)
    if folder is None:
        if args.skip_long_prompts:
            raise InputError(
                "--skip-long-prompts needs the served model's tokenizer to count tokens: give --tokenizer DIR"
            )
        return records, [], []
    tokenizer = load_tokenizer(folder, trust_remote_code=args.trust_remote_code)
    if args.chat_template and not has_chat_template(tokenizer):
        raise InputError(f"--chat-template: the tokenizer of {folder} has no chat template")
    max_model_len = args.max_model_len if args.backend == "vllm" else None
    check = check_prompts(
        tokenizer,
        [r["prompt"] for r in records],
        [f"{args.prompts}:{lines[r['prompt_id']]}" for r in records],
        context=context_length(folder, max_model_len),
        skip_long=args.skip_long_prompts,
        skip_hint="--skip-long-prompts",
    )
    notes = []
    skipped = sorted(records[i]["prompt_id"] for i in check.too_long)
    if skipped:
        records = [r for r in records if r["prompt_id"] not in set(skipped)]
        notes.append(f"{check.summary()} (--skip-long-prompts): ids {', '.join(skipped)}")
        if not records:
            raise InputError(f"{args.prompts}: every prompt is longer than the model's context")
    plain = any(isinstance(r["prompt"], str) for r in records)
    if plain and args.chat_template is None and has_chat_template(tokenizer):
        notes.append(
            f"the prompts of {args.prompts} are plain text, but the model has a chat template: they are sent "
            "as raw text, which an instruct model may answer poorly; pass --chat-template to render them "
            "with it (--no-chat-template silences this warning)"
        )
    return records, notes, skipped


def _remove_if_empty(out: Path) -> None:
    """Remove an output folder this command created when it holds no rollout (a failed start)."""
    rollouts = out / ROLLOUTS_FILE
    if rollouts.exists() and rollouts.stat().st_size > 0:
        return  # samples already written: kept, a rerun resumes from them
    if all(p.name == ROLLOUTS_FILE for p in out.iterdir()):
        rollouts.unlink(missing_ok=True)
        out.rmdir()


def run(args: argparse.Namespace) -> int:
    """Validate the inputs, build the generator, sample into OUT/rollouts.jsonl."""
    from selfimprove.generate import build_generator
    from selfimprove.generate.base import Sampling
    from selfimprove.generate.store import RolloutStore, generate_rollouts, load_prompts

    _check(args)
    # Every input is checked before the (slow) engine start and before OUT is created.
    lines: dict[str, int] = {}
    records = load_prompts(args.prompts, lines)
    records, notes, skipped = _check_prompts(args, records, lines)
    for note in notes:
        print(f"selfimprove generate: warning: {note}", file=sys.stderr)
    sampling = Sampling(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    created = not args.out.exists()
    done = set() if created else RolloutStore(args.out).completed(args.n)
    todo = sum(1 for r in records if r["prompt_id"] not in done)
    if todo == 0:
        print(f"all {len(records)} prompts already have {args.n} samples in {args.out / ROLLOUTS_FILE}")
        return 0
    try:
        generator = build_generator(args.backend, args.model, **_options(args))
        try:
            store = RolloutStore(args.out)
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
    except BaseException:
        if created and args.out.is_dir():
            _remove_if_empty(args.out)
        raise
    write_json_atomic(
        args.out / "generate.json",
        {
            "model": args.model,
            "backend": args.backend,
            "adapter": args.adapter,
            "adapter_version": args.adapter_version,
            "prompts": str(args.prompts),
            "chat_template": bool(args.chat_template),
            "skipped_too_long": skipped,
            "sampling": sampling.to_dict(),
        },
    )
    print(f"wrote {len(rows)} rollouts for {len(records)} prompts to {store.path}")
    return 0
