"""train_grpo with TRL's HF generation and with the toolkit's vLLM generator (the session's engine).

The same engine also shows the adapter lifecycle's vLLM leg: an adapter re-saved under the same
path is picked up without restarting the engine, and matches HF + PEFT greedy decoding.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from safetensors.torch import load_file

from selfimprove.errors import ConfigError, InputError, LabelLeakError
from selfimprove.generate.base import Sampling
from selfimprove.score.rewards import get_reward
from selfimprove.train.grpo import GeneratorRollout, train_grpo

PROMPTS = [
    {"prompt": [{"role": "user", "content": f"what is {i}+{i}?"}], "prompt_id": str(i)} for i in range(4)
]
ARGS = {"max_steps": 2, "max_completion_length": 12, "learning_rate": 1e-3, "disable_tqdm": True}


def digit_share(completions, **columns):
    """A dense local reward (share of digits): varies within a group, so GRPO has a signal."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def lora_b(adapter_dir) -> dict:
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {k: v for k, v in weights.items() if "lora_B" in k}


def check_result(r, generator: str) -> None:
    assert r.steps == 2 and all(math.isfinite(x) for x in r.loss_history)
    b = lora_b(r.adapter_path)
    assert b and all(v.abs().sum() > 0 for v in b.values())  # LoRA B left its zero init
    m = r.metrics
    assert m["generator"] == generator
    assert m["time/generation_s"] > 0 and m["time/scoring_s"] > 0 and m["time/update_s"] > 0
    parts = m["time/generation_s"] + m["time/scoring_s"] + m["time/update_s"]
    assert parts == pytest.approx(m["time/step_s"], rel=1e-6)
    assert r.history["rewards/majority_vote/mean"] and r.history["rewards/digit_share/mean"]


@pytest.fixture
def vllm_gen(vllm_generator):
    """The session's shared vLLM engine (tests/conftest.py); never closed here."""
    return vllm_generator


@pytest.mark.slow
def test_grpo_hf_generation(tiny_model_dir, tmp_path):
    rewards = [get_reward("majority_vote"), digit_share]
    r = train_grpo(tiny_model_dir, PROMPTS, rewards, tmp_path, generator="hf", num_generations=4, args=ARGS)
    check_result(r, "hf")
    assert r.metrics["adapter_syncs"] == 0


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_vllm_generation(tiny_model_dir, tmp_path, vllm_gen):
    rewards = ["majority_vote", digit_share]  # a registry name and a callable
    r = train_grpo(
        tiny_model_dir, PROMPTS, rewards, tmp_path, generator=vllm_gen, num_generations=4, args=ARGS
    )
    check_result(r, "vllm")
    # sync_every=1: the adapter was saved for the generator before each step's rollouts.
    assert r.metrics["adapter_syncs"] == 2
    assert not (tmp_path / "rollout_adapter").exists()  # the generator's scratch copy is removed
    assert r.history["completions/mean_length"][0] > 0


def _peft_trainer(model_dir, seed: int):
    """A stand-in for the trainer fields the rollout reads, around a real PEFT model with random LoRA B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, cfg)
    return types.SimpleNamespace(
        model=model,
        state=types.SimpleNamespace(global_step=0),
        accelerator=types.SimpleNamespace(unwrap_model=lambda m: m),
    )


def _hf_greedy(peft_model, tokenizer, prompt, n_tokens: int) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = peft_model.generate(input_ids=ids, max_new_tokens=n_tokens, do_sample=False)
    return out[0, ids.size(1) :].tolist()


@pytest.mark.slow
@pytest.mark.vllm
def test_rollout_groups_and_adapter_hot_swap(tiny_model_dir, tmp_path, vllm_gen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    trainer = _peft_trainer(tiny_model_dir, seed=1)
    a, b = PROMPTS[0]["prompt"], PROMPTS[1]["prompt"]
    sampled = GeneratorRollout(vllm_gen, tok, tmp_path / "sampled", Sampling(temperature=1.0, max_tokens=8))
    # Runs of 3 and 2 copies: two requests (n=3, n=2); output rows follow the input rows.
    out = sampled([a, a, a, b, b], trainer)
    assert len(out["completion_ids"]) == 5 and out["logprobs"] is None
    assert all(1 <= len(ids) <= 8 for ids in out["completion_ids"])
    prompt_a = tok(
        tok.apply_chat_template(a, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )
    assert (
        out["prompt_ids"][:3] == [prompt_a["input_ids"]] * 3 and out["prompt_ids"][3] != out["prompt_ids"][0]
    )
    # Greedy: the adapter vLLM served equals HF + PEFT on the same adapter.
    rollout = GeneratorRollout(vllm_gen, tok, tmp_path / "adapter", Sampling(temperature=0.0, max_tokens=8))
    first = rollout([a], trainer)["completion_ids"][0]
    assert first == _hf_greedy(trainer.model, tok, a, len(first))
    engine = vllm_gen._llm
    # A different adapter saved to the same path at a later step: reloaded without restarting vLLM.
    trainer2 = _peft_trainer(tiny_model_dir, seed=2)
    trainer2.state.global_step = 1
    out2 = rollout([a], trainer2)
    assert vllm_gen._llm is engine and rollout.syncs == 2
    assert out2["completion_ids"][0] == _hf_greedy(trainer2.model, tok, a, len(out2["completion_ids"][0]))
    assert out2["completion_ids"][0] != first


def test_grpo_bad_input(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="no training rows"):
        train_grpo(tiny_model_dir, [], [digit_share], tmp_path)
    with pytest.raises(LabelLeakError, match="answer"):
        train_grpo(tiny_model_dir, [dict(PROMPTS[0], answer="0")], [digit_share], tmp_path)
    with pytest.raises(ConfigError, match="at least one reward"):
        train_grpo(tiny_model_dir, PROMPTS, [], tmp_path)
    with pytest.raises(ConfigError, match="sync_every must be >= 1"):
        train_grpo(tiny_model_dir, PROMPTS, [digit_share], tmp_path, sync_every=0)
    with pytest.raises(ConfigError, match="unknown reward"):
        train_grpo(tiny_model_dir, PROMPTS, ["no_such_reward"], tmp_path)
    with pytest.raises(ConfigError, match=r"train.args.top_k=5 is not supported with a toolkit generator"):
        train_grpo(tiny_model_dir, PROMPTS, [digit_share], tmp_path, generator=object(), args={"top_k": 5})
    with pytest.raises(ConfigError, match="train.generator must be"):
        train_grpo(tiny_model_dir, PROMPTS, [digit_share], tmp_path, generator="tgi")
