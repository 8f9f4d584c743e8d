"""SFT, DPO and GRPO under ``accelerate launch`` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_three_trainers_under_accelerate_two_processes(tiny_model_dir, tmp_path):
    from selfimprove.train.launch import free_port

    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        str(free_port()),
        str(ROOT / "tests/scripts/train_multiproc.py"),
        str(tiny_model_dir),
        str(tmp_path),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Two CPU processes even on a machine with a GPU (the config's MULTI_GPU launcher would
        # otherwise put both ranks on CUDA devices).
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"sft", "dpo", "grpo"}
    for method, r in results.items():
        assert r["world_size"] == 2, method
        assert r["steps"] == 1 and all(math.isfinite(x) for x in r["loss_history"]), method
        weights = load_file(str(Path(r["adapter_path"]) / "adapter_model.safetensors"))
        b = [v for k, v in weights.items() if "lora_B" in k]
        assert b and all(v.abs().sum() > 0 for v in b), method
