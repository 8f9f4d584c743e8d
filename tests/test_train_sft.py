"""train_sft on the tiny model: a few steps, finite loss, LoRA weights moved; bad input errors."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from selfimprove.errors import ConfigError, InputError
from selfimprove.train.adapters import read_adapter_meta
from selfimprove.train.sft import train_sft

ROWS = [
    {
        "prompt": [{"role": "user", "content": f"what is {i}+{i}?"}],
        "completion": [{"role": "assistant", "content": f"answer {2 * i}"}],
    }
    for i in range(4)
]
ARGS = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 64, "disable_tqdm": True}


def lora_b(adapter_dir) -> dict:
    """The LoRA B matrices of a saved adapter (they start at zero in a fresh adapter)."""
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {k: v for k, v in weights.items() if "lora_B" in k}


@pytest.fixture(scope="module")
def sft_round1(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "round1"
    # Longer than max_length=64 tokens: dropped and counted, not silently truncated.
    too_long = {
        "prompt": [{"role": "user", "content": "x" * 200}],
        "completion": [{"role": "assistant", "content": "y"}],
    }
    return train_sft(tiny_model_dir, [*ROWS, too_long], out, args=ARGS)


@pytest.mark.slow
def test_sft_trains_fresh_adapter(sft_round1, tiny_model_dir):
    r = sft_round1
    assert r.steps == 2 and len(r.loss_history) == 2
    assert all(math.isfinite(x) for x in r.loss_history)
    assert r.dropped == {"too_long": 1} and r.rows_in == 5
    assert r.tokens > 0 and r.seconds > 0
    b = lora_b(r.adapter_path)
    assert b and all(v.abs().sum() > 0 for v in b.values())  # moved off their zero init
    meta = read_adapter_meta(r.adapter_path)
    assert (
        meta["method"] == "sft" and meta["steps"] == 2 and meta["base_model"] == str(tiny_model_dir.resolve())
    )
    saved = json.loads((r.adapter_path / "train_result.json").read_text())
    assert saved["loss_history"] == r.loss_history


@pytest.mark.slow
def test_sft_continues_previous_adapter(sft_round1, tiny_model_dir, tmp_path):
    before = lora_b(sft_round1.adapter_path)
    args = {**ARGS, "max_steps": 1}
    r2 = train_sft(tiny_model_dir, ROWS, tmp_path / "round2", adapter_init=sft_round1.adapter_path, args=args)
    after = lora_b(r2.adapter_path)
    assert set(after) == set(before)
    assert any(not after[k].equal(before[k]) for k in before)
    assert read_adapter_meta(r2.adapter_path)["config"]["adapter_init"] == str(sft_round1.adapter_path)


def test_sft_bad_input(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="no training rows"):
        train_sft(tiny_model_dir, [], tmp_path)
    with pytest.raises(InputError, match=r"row 1 is missing column\(s\) \['completion'\]"):
        train_sft(tiny_model_dir, [ROWS[0], {"prompt": "x"}], tmp_path)
    with pytest.raises(ConfigError, match=r"train.args.max_lenght.*did you mean \['max_length'"):
        train_sft(tiny_model_dir, ROWS, tmp_path, args={"max_lenght": 10})
    with pytest.raises(InputError, match="all 4 rows are longer than max_length=5"):
        train_sft(tiny_model_dir, ROWS, tmp_path, args={"max_length": 5})
    with pytest.raises(InputError, match="adapter_config.json is missing"):
        train_sft(tiny_model_dir, ROWS, tmp_path, adapter_init=tmp_path)
