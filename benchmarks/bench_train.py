"""Step time of the toolkit's trainers vs the bare TRL trainers with the same settings, side by side.

    .venv/bin/python benchmarks/bench_train.py --out /tmp/bench_train.json [--vllm] [--cases sft dpo ...]

Cases (each run alternately toolkit / bare, ``--repeats`` times, on one small local Qwen2):
- sft: ``train_sft`` vs ``trl.SFTTrainer``;
- dpo: ``train_dpo`` (TRL's DPOTrainer underneath) vs ``trl.DPOTrainer``;
- dpo+degree+nll: ``train_dpo(degree_weight, nll_weight)`` (the toolkit's PreferenceTrainer) vs
  ``trl.DPOTrainer`` with loss_type [sigmoid, sft] (DPO + NLL, TRL's nearest equivalent);
- grpo: ``train_grpo(generator="hf")`` vs ``trl.GRPOTrainer``;
- with ``--vllm``: ``train_grpo`` with the toolkit's vLLM generator (engine built once, outside
  the timed steps), for the generation / scoring / update split.
Step time = median wall time of optimizer steps 2..N of a run (step 1 warms up); the CPU time of
the process per step is reported beside it (less sensitive to other work on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def digit_share(completions, **columns):
    """A dense reward that varies within a group (the tiny model writes noise)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def data(n: int):
    """Chat SFT rows, DPO pairs (with degree) and GRPO prompts."""
    chat = [
        [{"role": "user", "content": f"Compute {i} + {2 * i} and explain the steps briefly."}]
        for i in range(n)
    ]
    sft = [
        {"prompt": p, "completion": [{"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}."}]}
        for i, p in enumerate(chat)
    ]
    dpo = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}."}],
            "rejected": [{"role": "assistant", "content": f"{i} + {2 * i} = {3 * i + 1}, I think."}],
            "degree": (i % 4) / 4,
        }
        for i, p in enumerate(chat)
    ]
    grpo = [{"prompt": p, "prompt_id": str(i)} for i, p in enumerate(chat)]
    return sft, dpo, grpo


def bare_run(kind: str, model_dir: Path, rows, out_dir: Path, values: dict, loss_type=None) -> list[float]:
    """The bare TRL trainer with the same config values and LoRA; returns its step times."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from selfimprove.train.common import LoraSettings, StepTimer

    set_seed(values["seed"])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    peft = LoraSettings().to_peft()
    values = {**values, "output_dir": str(out_dir)}
    if kind == "sft":
        ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        trainer = SFTTrainer(
            model=model, args=SFTConfig(**values), train_dataset=ds, processing_class=tok, peft_config=peft
        )
    elif kind == "dpo":
        ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        if loss_type:
            values = {**values, "loss_type": loss_type[0], "loss_weights": loss_type[1]}
        trainer = DPOTrainer(
            model=model, args=DPOConfig(**values), train_dataset=ds, processing_class=tok, peft_config=peft
        )
    else:
        ds = Dataset.from_list(rows)
        from selfimprove.score.rewards import get_reward

        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[get_reward("majority_vote"), digit_share],
            args=GRPOConfig(**values),
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft,
        )
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return {"time/step_s": timer.step_seconds, "time/step_cpu_s": timer.step_cpu_seconds}


def config_values(kind: str, args: dict, seed: int, **extra) -> dict:
    """The TRL config values the toolkit uses for ``kind`` (so the bare run matches exactly)."""
    from selfimprove.train.common import cpu_safe_defaults
    from selfimprove.train.dpo import DPO_DEFAULTS
    from selfimprove.train.grpo import GRPO_DEFAULTS
    from selfimprove.train.sft import SFT_DEFAULTS

    defaults = {"sft": SFT_DEFAULTS, "dpo": DPO_DEFAULTS, "grpo": GRPO_DEFAULTS}[kind]
    return {**cpu_safe_defaults(), **defaults, "seed": seed, **extra, **args}


def median_step(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_train.json", help="JSON with every measurement")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--grpo-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vllm", action="store_true", help="also run GRPO with the toolkit's vLLM generator")
    parser.add_argument("--cases", nargs="*", default=None, help="only these cases (default: all)")
    opts = parser.parse_args()

    from selfimprove.models.tiny import build_tiny_model
    from selfimprove.train.dpo import train_dpo
    from selfimprove.train.grpo import train_grpo
    from selfimprove.train.sft import train_sft

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    # 4 layers, hidden 256 (4 heads of 64): about 3.7M parameters, a char tokenizer.
    model_dir = build_tiny_model(work / "model", hidden_size=256, num_layers=4, num_heads=4, seed=0)
    sft_rows, dpo_rows, grpo_rows = data(64)
    common = {"max_steps": opts.steps, "per_device_train_batch_size": 8, "disable_tqdm": True}
    grpo_args = {"max_steps": opts.grpo_steps, "max_completion_length": 32, "disable_tqdm": True}
    seed = 0
    cases = {
        "sft": (
            lambda out: train_sft(model_dir, sft_rows, out, args=common, seed=seed),
            lambda out: bare_run("sft", model_dir, sft_rows, out, config_values("sft", common, seed)),
        ),
        "dpo": (
            lambda out: train_dpo(model_dir, dpo_rows, out, args=common, seed=seed),
            lambda out: bare_run(
                "dpo", model_dir, dpo_rows, out, config_values("dpo", common, seed, beta=0.1)
            ),
        ),
        "dpo+degree+nll": (
            lambda out: train_dpo(
                model_dir, dpo_rows, out, degree_weight=0.5, nll_weight=0.5, args=common, seed=seed
            ),
            lambda out: bare_run(
                "dpo",
                model_dir,
                dpo_rows,
                out,
                config_values("dpo", common, seed, beta=0.1),
                loss_type=(["sigmoid", "sft"], [1.0, 0.5]),
            ),
        ),
        "grpo (hf generation)": (
            lambda out: train_grpo(
                model_dir,
                grpo_rows,
                ["majority_vote", digit_share],
                out,
                generator="hf",
                args=grpo_args,
                seed=seed,
            ),
            lambda out: bare_run(
                "grpo",
                model_dir,
                grpo_rows,
                out,
                config_values("grpo", grpo_args, seed, num_generations=4, per_device_train_batch_size=8),
            ),
        ),
    }
    if opts.cases is not None:
        cases = {k: v for k, v in cases.items() if k.split()[0] in opts.cases}
    results: dict = {"cases": {}, "grpo_split": {}}
    for name, (toolkit, bare) in cases.items():
        tk_times, bare_times, tk_wall, bare_wall, tk_cpu, bare_cpu = [], [], [], [], [], []
        for rep in range(opts.repeats):
            # Alternate which goes first, so drift in the machine's load hits both alike.
            order = (
                [("toolkit", toolkit), ("bare", bare)]
                if rep % 2 == 0
                else [("bare", bare), ("toolkit", toolkit)]
            )
            for label, fn in order:
                out = work / f"{name.split()[0]}-{label}-{rep}"
                t0 = time.perf_counter()
                res = fn(out)
                wall = time.perf_counter() - t0
                if label == "toolkit":
                    tk_times.append(median_step(res.history["time/step_s"]))
                    tk_cpu.append(median_step(res.history["time/step_cpu_s"]))
                    tk_wall.append(wall)
                    if name.startswith("grpo"):
                        results["grpo_split"].setdefault("hf", []).append(
                            {k: v for k, v in res.metrics.items() if k.startswith("time/")}
                        )
                else:
                    bare_times.append(median_step(res["time/step_s"]))
                    bare_cpu.append(median_step(res["time/step_cpu_s"]))
                    bare_wall.append(wall)
        tk, br = statistics.median(tk_times), statistics.median(bare_times)
        results["cases"][name] = {
            "toolkit_step_s": tk,
            "bare_trl_step_s": br,
            "ratio": tk / br,
            "toolkit_runs": tk_times,
            "bare_runs": bare_times,
            "toolkit_step_cpu_s": statistics.median(tk_cpu),
            "bare_trl_step_cpu_s": statistics.median(bare_cpu),
            "cpu_ratio": statistics.median(tk_cpu) / statistics.median(bare_cpu),
            "toolkit_call_s": statistics.median(tk_wall),
            "bare_call_s": statistics.median(bare_wall),
        }
        cpu_ratio = results["cases"][name]["cpu_ratio"]
        print(
            f"{name}: toolkit {tk:.3f}s/step, bare TRL {br:.3f}s/step, ratio {tk / br:.3f}, cpu ratio {cpu_ratio:.3f}"
        )
    if opts.vllm:
        from selfimprove.generate.vllm_backend import VLLMGenerator

        t0 = time.perf_counter()
        gen = VLLMGenerator(
            model_dir, enable_lora=True, max_lora_rank=8, enforce_eager=True, max_model_len=512
        )
        results["vllm_startup_s"] = time.perf_counter() - t0
        try:
            for rep in range(opts.repeats):
                for label, g in (
                    [("vllm", gen), ("hf", "hf")] if rep % 2 == 0 else [("hf", "hf"), ("vllm", gen)]
                ):
                    res = train_grpo(
                        model_dir,
                        grpo_rows,
                        ["majority_vote", digit_share],
                        work / f"grpo-split-{label}-{rep}",
                        generator=g,
                        args=grpo_args,
                        seed=seed,
                    )
                    split = {k: v for k, v in res.metrics.items() if k.startswith("time/")}
                    split["median_step_s"] = median_step(res.history["time/step_s"])
                    split["completion_tokens_mean"] = statistics.mean(res.history["completions/mean_length"])
                    results["grpo_split"].setdefault(f"side_by_side_{label}", []).append(split)
                    print(label, split, flush=True)
        finally:
            gen.close()
    from selfimprove.models.base_model import cpu_name

    results["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    results["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["settings"] = {"steps": opts.steps, "grpo_steps": opts.grpo_steps, "repeats": opts.repeats}
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(json.dumps(results["cases"], indent=2))


if __name__ == "__main__":
    main()
