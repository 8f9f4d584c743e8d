"""CUDA checks: the same code on the GPU and on the CPU, side by side (skipped without a GPU).

CI has no GPU, so these run only where torch sees one (``pytest -m gpu tests/test_gpu.py``); the
session that had one recorded the run in BENCHMARKS.md ("GPU checks"). They need no vLLM: the HF
generator, the three TRL trainers and the loop with the HF backend. Each test compares numbers
with the CPU run of the same code where the two must agree (greedy tokens, log-probabilities, the
loss of deterministic training) and checks that the weights really sat on the GPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfimprove.generate.base import Sampling
from selfimprove.generate.hf_backend import HFGenerator
from selfimprove.score.rewards import get_reward
from selfimprove.train.dpo import train_dpo
from selfimprove.train.grpo import train_grpo
from selfimprove.train.sft import train_sft

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = ["a", "hello world, a longer prompt", [{"role": "user", "content": "what is 2+3?"}]]
SFT_ROWS = [
    {
        "prompt": [{"role": "user", "content": f"what is {i}+{i}?"}],
        "completion": [{"role": "assistant", "content": f"answer {2 * i}"}],
    }
    for i in range(8)
]
PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"what is {i}+{i}?"}],
        "chosen": [{"role": "assistant", "content": f"answer {2 * i}"}],
        "rejected": [{"role": "assistant", "content": f"answer {2 * i + 1}!"}],
    }
    for i in range(8)
]


def test_hf_generator_picks_the_gpu_and_matches_the_cpu(tiny_model_dir):
    gpu = HFGenerator(tiny_model_dir)  # device="auto"
    cpu = HFGenerator(tiny_model_dir, device="cpu")
    try:
        assert gpu.device == "cuda" and next(gpu.base.parameters()).is_cuda
        greedy = Sampling(temperature=0, max_tokens=16, logprobs=0)
        on_gpu, on_cpu = gpu.generate(PROMPTS, greedy), cpu.generate(PROMPTS, greedy)
        for g, c in zip(on_gpu, on_cpu, strict=True):
            assert g[0].token_ids == c[0].token_ids
            assert g[0].token_logprobs == pytest.approx(c[0].token_logprobs, abs=1e-3)
        # Sampling on the GPU: seeded calls repeat, n samples per prompt come back.
        sample = Sampling(n=4, temperature=1.0, max_tokens=8, seed=3)
        first, again = gpu.generate(PROMPTS, sample), gpu.generate(PROMPTS, sample)
        assert [[s.token_ids for s in g] for g in first] == [[s.token_ids for s in g] for g in again]
        assert all(len(g) == 4 for g in first)
    finally:
        gpu.close()
        cpu.close()


def test_sft_on_the_gpu_matches_the_cpu(tiny_model_dir, tmp_path):
    args = {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3}
    on_gpu = train_sft(tiny_model_dir, SFT_ROWS, tmp_path / "gpu", args=args)
    on_cpu = train_sft(tiny_model_dir, SFT_ROWS, tmp_path / "cpu", args={**args, "use_cpu": True})
    assert on_gpu.metrics["device"].startswith("cuda") and on_cpu.metrics["device"] == "cpu"
    assert on_gpu.steps == on_cpu.steps == 4
    # LoRA dropout is 0 and the data order is seeded on the CPU: the same steps, the same losses.
    assert on_gpu.loss_history == pytest.approx(on_cpu.loss_history, rel=1e-3)
    assert on_gpu.loss_history[-1] < on_gpu.loss_history[0]
    saved = json.loads((on_gpu.adapter_path / "train_result.json").read_text())
    assert saved["metrics"]["device"].startswith("cuda")


def test_dpo_on_the_gpu_matches_the_cpu(tiny_model_dir, tmp_path):
    args = {"max_steps": 3, "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3}
    on_gpu = train_dpo(tiny_model_dir, PAIRS, tmp_path / "gpu", args=args)
    on_cpu = train_dpo(tiny_model_dir, PAIRS, tmp_path / "cpu", args={**args, "use_cpu": True})
    assert on_gpu.metrics["device"].startswith("cuda") and on_cpu.metrics["device"] == "cpu"
    assert on_gpu.loss_history[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert on_gpu.loss_history == pytest.approx(on_cpu.loss_history, rel=1e-3)


def _digit_share(completions, **columns):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.mark.parametrize("rollouts", ["trl", "toolkit"])
def test_grpo_on_the_gpu(tiny_model_dir, tmp_path, rollouts):
    """TRL's own generation, and the toolkit's HF generator (adapter synced each step) on the GPU."""
    prompts = [
        {"prompt": [{"role": "user", "content": f"what is {i}+{i}?"}], "prompt_id": str(i)} for i in range(4)
    ]
    generator = "hf" if rollouts == "trl" else HFGenerator(tiny_model_dir)
    args = {"max_steps": 2, "max_completion_length": 12, "learning_rate": 1e-3, "disable_tqdm": True}
    try:
        r = train_grpo(
            tiny_model_dir,
            prompts,
            [get_reward("majority_vote"), _digit_share],
            tmp_path,
            generator=generator,
            num_generations=4,
            args=args,
        )
    finally:
        if not isinstance(generator, str):
            generator.close()
    assert r.metrics["device"].startswith("cuda") and r.steps == 2
    assert all(math.isfinite(x) for x in r.loss_history)
    assert r.metrics["generator"] == "hf"
    assert r.metrics["adapter_syncs"] == (0 if rollouts == "trl" else 2)


def test_loop_on_the_gpu(tmp_path, tiny_model_dir):
    """Two rounds of the loop with the HF backend: generation and training both on the GPU."""
    from test_loop import letter_config, write_letter_task

    from selfimprove.loop.config import load_config
    from selfimprove.loop.runner import run

    write_letter_task(tmp_path / "task.jsonl")
    cfg = load_config(letter_config(tmp_path, tiny_model_dir))
    torch.cuda.reset_peak_memory_stats()
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda _m: None, command=["pytest"])
    assert torch.cuda.max_memory_allocated() > 0
    for r in (1, 2):
        result = json.loads(
            (tmp_path / "run" / f"round_{r:02d}" / "adapter" / "train_result.json").read_text()
        )
        assert result["metrics"]["device"].startswith("cuda") and result["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rows] == [0, 1, 2]
    assert all(0.0 <= x["eval/pass@1"] <= 1.0 for x in rows)
    assert summary["stopped"] is None and len(summary["history"]) == 3


def test_bf16_on_the_gpu_stays_close_to_float32(tiny_model_dir, tmp_path):
    """docs/training.md's advice for GPUs (``bf16=True``), and the HF generator in bfloat16."""
    args = {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3}
    fp32 = train_sft(tiny_model_dir, SFT_ROWS, tmp_path / "fp32", args=args)
    bf16 = train_sft(tiny_model_dir, SFT_ROWS, tmp_path / "bf16", args={**args, "bf16": True})
    assert bf16.metrics["device"].startswith("cuda")
    assert bf16.loss_history == pytest.approx(fp32.loss_history, rel=0.05)
    assert bf16.loss_history[-1] < bf16.loss_history[0]
    half, full = HFGenerator(tiny_model_dir, dtype="bfloat16"), HFGenerator(tiny_model_dir)
    try:
        assert next(half.base.parameters()).dtype == torch.bfloat16
        greedy = Sampling(temperature=0, max_tokens=8, logprobs=0)
        for h, f in zip(half.generate(PROMPTS, greedy), full.generate(PROMPTS, greedy), strict=True):
            same, most = 0, min(len(h[0].token_ids), len(f[0].token_ids))
            while same < most and h[0].token_ids[same] == f[0].token_ids[same]:
                same += 1
            assert same >= 1  # the first token agrees (later ones may part at near-ties)
            assert h[0].token_logprobs[:same] == pytest.approx(f[0].token_logprobs[:same], abs=0.1)
    finally:
        half.close()
        full.close()
