"""Adapter lifecycle: metadata, reload for training, merge + export (merged logits == base + adapter).

The vLLM leg (re-saved adapter served without a restart, equal to HF + PEFT) is in
tests/test_train_grpo.py, which shares the session's engine.
"""

from __future__ import annotations

import json

import pytest
import torch

from selfimprove.errors import InputError
from selfimprove.train.adapters import (
    check_adapter_dir,
    load_adapter_for_training,
    merge_adapter,
    read_adapter_meta,
    save_adapter,
    set_adapter_round,
)


def test_merge_export_matches_base_plus_adapter(tiny_model_dir, make_lora_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_lora_adapter(tmp_path / "adapter", seed=3)
    merged_dir = merge_adapter(tiny_model_dir, adapter, tmp_path / "export" / "merged")
    files = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert json.loads((merged_dir / "merge_meta.json").read_text())["merged_from"]["adapter"] == str(adapter)
    ids = torch.tensor([[5, 17, 42, 9, 77, 3, 64]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)(ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)  # the adapter really changes the model
    # Exporting again replaces the folder whole.
    again = merge_adapter(tiny_model_dir, adapter, merged_dir)
    assert again == merged_dir and (merged_dir / "model.safetensors").is_file()
    assert not [p for p in merged_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_meta_reload_trainable(tiny_model_dir, make_lora_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = make_lora_adapter(tmp_path / "a", seed=1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = load_adapter_for_training(base, adapter)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = save_adapter(
        model, tmp_path / "round3", base_model=str(tiny_model_dir), method="sft", steps=7, round=3
    )
    meta = read_adapter_meta(out)
    assert (meta["method"], meta["steps"], meta["round"], meta["base_model"]) == (
        "sft",
        7,
        3,
        str(tiny_model_dir),
    )
    assert meta["created"].endswith("+00:00")
    set_adapter_round(out, 4)
    assert read_adapter_meta(out)["round"] == 4
    assert check_adapter_dir(out) == out.resolve()


def test_adapter_errors(tmp_path):
    with pytest.raises(InputError, match="adapter_config.json is missing"):
        check_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="only safetensors are loaded"):
        check_adapter_dir(tmp_path)
    (tmp_path / "adapter_meta.json").write_text("{\n bad")
    with pytest.raises(InputError, match=r"adapter_meta.json: not valid JSON \(line 2\)"):
        read_adapter_meta(tmp_path)
    assert read_adapter_meta(tmp_path / "nowhere") == {}


def test_merge_refuses_an_adapter_of_another_base(make_lora_adapter, tmp_path):
    """The merge both merge_adapter and vLLM's merged serving use names the misfit."""
    from selfimprove.models.tiny import build_tiny_model
    from selfimprove.train.adapters import merged_model

    adapter = make_lora_adapter(tmp_path / "adapter")
    wider = build_tiny_model(tmp_path / "wider", hidden_size=192, num_heads=3, seed=0)
    with pytest.raises(InputError, match="does not fit the base model"):
        merged_model(wider, adapter)
    with pytest.raises(InputError, match="does not fit the base model"):
        merge_adapter(wider, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
