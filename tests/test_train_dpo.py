"""train_dpo on the tiny model: TRL's loss and the toolkit's terms, checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from selfimprove.errors import ConfigError, InputError
from selfimprove.train.dpo import train_dpo

DEGREES = [1.0, 0.5, 0.25, 0.0]
PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"what is {i}+{i}?"}],
        "chosen": [{"role": "assistant", "content": f"answer {2 * i}"}],
        "rejected": [{"role": "assistant", "content": f"answer {2 * i + 1}!"}],
        "degree": DEGREES[i],
    }
    for i in range(4)
]
# One step over the whole batch, so the first logged loss covers all four pairs.
ARGS = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3}


def lora_b(adapter_dir) -> dict:
    """The LoRA B matrices of a saved adapter (they start at zero in a fresh adapter)."""
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {k: v for k, v in weights.items() if "lora_B" in k}


def chosen_nll_by_hand(model_dir) -> float:
    """Mean NLL per chosen token under the base model, rendered as TRL renders chat pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    for p in PAIRS:
        prompt = tok.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(p["prompt"] + p["chosen"], tokenize=False)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logps = model(ids).logits.log_softmax(-1)[0, :-1].gather(1, ids[0, 1:, None])[:, 0]
        total -= logps[n_prompt - 1 :].sum().item()
        count += ids.size(1) - n_prompt
    return total / count


@pytest.mark.slow
def test_dpo_plain_trl_loss(tiny_model_dir, tmp_path):
    r = train_dpo(
        tiny_model_dir, [{k: v for k, v in p.items() if k != "degree"} for p in PAIRS], tmp_path, args=ARGS
    )
    # Fresh adapter: policy == reference at step 1, so the sigmoid loss is log 2 exactly.
    assert r.loss_history[0] == pytest.approx(math.log(2), abs=1e-5)
    assert all(math.isfinite(x) for x in r.loss_history)
    # Gradient-entanglement monitor: chosen and rejected log-probs logged every step.
    assert len(r.history["logps/chosen"]) == r.steps == len(r.history["logps/rejected"])
    assert all(v.abs().sum() > 0 for v in lora_b(r.adapter_path).values())


@pytest.mark.slow
def test_dpo_degree_and_nll_terms_match_hand_computation(tiny_model_dir, tmp_path):
    w, nll_w = 0.5, 0.25
    r = train_dpo(
        tiny_model_dir,
        PAIRS,
        tmp_path,
        degree_weight=w,
        degree_mode="both",
        nll_weight=nll_w,
        args=ARGS,
    )
    # Step 1: log-ratios are 0, so DPO and the degree term are both log 2 per pair;
    # loss = mean((1 - w) + w * d) * log 2 + w * log 2 + nll_w * NLL(chosen).
    mean_c = sum((1 - w) + w * d for d in DEGREES) / len(DEGREES)
    nll = chosen_nll_by_hand(tiny_model_dir)
    expected = mean_c * math.log(2) + w * math.log(2) + nll_w * nll
    assert r.loss_history[0] == pytest.approx(expected, rel=1e-4)
    assert r.history["loss/nll"][0] == pytest.approx(nll, rel=1e-4)
    assert r.history["degree/mean"][0] == pytest.approx(sum(DEGREES) / 4)
    assert r.history["loss/degree"][0] == pytest.approx(math.log(2), rel=1e-5)
    assert len(r.history["logps/chosen"]) == r.steps
    assert all(v.abs().sum() > 0 for v in lora_b(r.adapter_path).values())


@pytest.mark.slow
def test_dpo_d2o_continues_adapter(tiny_model_dir, tmp_path):
    one_step = {**ARGS, "max_steps": 1}
    first = train_dpo(tiny_model_dir, PAIRS, tmp_path / "r1", loss_type="d2o", d2o_alpha=0.05, args=one_step)
    assert first.loss_history[0] == pytest.approx(math.log(2), abs=1e-5)
    assert first.history["loss/d2o"][0] == pytest.approx(first.loss_history[0], rel=1e-6)
    # Round 2 continues round 1's adapter, which is also its reference: the loss starts at log 2 again.
    second = train_dpo(tiny_model_dir, PAIRS, tmp_path / "r2", adapter_init=first.adapter_path, args=one_step)
    assert second.loss_history[0] == pytest.approx(math.log(2), abs=1e-5)
    before, after = lora_b(first.adapter_path), lora_b(second.adapter_path)
    assert set(before) == set(after) and any(not before[k].equal(after[k]) for k in before)


def test_dpo_bad_input(tiny_model_dir, tmp_path):
    no_degree = [{k: v for k, v in p.items() if k != "degree"} for p in PAIRS]
    with pytest.raises(InputError, match="no training rows"):
        train_dpo(tiny_model_dir, [], tmp_path)
    with pytest.raises(InputError, match=r"row 0 is missing column\(s\) \['degree'\]"):
        train_dpo(tiny_model_dir, no_degree, tmp_path, degree_weight=1.0)
    with pytest.raises(InputError, match=r"row 0 is missing column\(s\) \['rejected'\]"):
        train_dpo(tiny_model_dir, [{"prompt": "a", "chosen": "b"}], tmp_path)
    with pytest.raises(ConfigError, match=r"\['ipo'\] cannot combine with d2o"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, loss_type=("ipo", "d2o"))
    with pytest.raises(ConfigError, match="train.args.beta: set it with train_dpo's own"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, args={"beta": 0.2})
    with pytest.raises(ConfigError, match="degree_mode must be one of"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, degree_mode="scale", degree_weight=1.0)
    bad = [dict(PAIRS[0], degree=2.0)]
    with pytest.raises(InputError, match="row 0 has degree 2.0"):
        train_dpo(tiny_model_dir, bad, tmp_path, degree_weight=1.0)


@pytest.mark.slow
def test_dpo_spo_degree_paper_term_matches_hand_computation(tiny_model_dir, tmp_path):
    lam, levels = 0.5, 3
    r = train_dpo(
        tiny_model_dir,
        PAIRS,
        tmp_path,
        degree_paper_weight=lam,
        degree_paper_levels=levels,
        args={**ARGS, "max_steps": 3},
    )
    # Step 1: log-ratios are 0 (DPO = log 2) and the zero-initialised classifier gives every class
    # the same probability, so the degree loss is log(levels): loss = log 2 + lambda * log 3.
    assert r.history["loss/degree_paper"][0] == pytest.approx(math.log(levels), rel=1e-5)
    assert r.loss_history[0] == pytest.approx(math.log(2) + lam * math.log(levels), rel=1e-5)
    # The classifier learns: its loss falls below chance within three steps on the same batch.
    assert r.history["loss/degree_paper"][-1] < math.log(levels)
    assert len(r.history["degree_paper/accuracy"]) == r.steps
    assert all(v.abs().sum() > 0 for v in lora_b(r.adapter_path).values())
    # The classifier is a training device, not part of the adapter.
    saved = load_file(str(r.adapter_path / "adapter_model.safetensors"))
    assert not any("degree" in k for k in saved)


@pytest.mark.slow
def test_dpo_spo_degree_paper_joint_labels(tiny_model_dir, tmp_path):
    r = train_dpo(
        tiny_model_dir,
        PAIRS,
        tmp_path,
        degree_paper_weight=1.0,
        degree_paper_levels=2,
        degree_paper_labels="joint",
        args={**ARGS, "max_steps": 1},
    )
    # Joint labels: 2 levels x (chosen, rejected) = 4 classes, log 4 at the first step.
    assert r.history["loss/degree_paper"][0] == pytest.approx(math.log(4), rel=1e-5)


@pytest.mark.slow
def test_dpo_d2o_averages_over_positives(tiny_model_dir, tmp_path):
    rows = [dict(p, d2o_positives=[f"answer {2 * i}.", f"so {2 * i}"][: i % 3]) for i, p in enumerate(PAIRS)]
    r = train_dpo(tiny_model_dir, rows, tmp_path / "k", loss_type="d2o", args={**ARGS, "max_steps": 2})
    # Rows carry 0, 1, 2, 0 further positives besides the chosen one: K = 1 + that.
    assert r.history["d2o/positives"][0] == pytest.approx((1 + 2 + 3 + 1) / 4)
    assert r.loss_history[0] == pytest.approx(math.log(2), abs=1e-5)
    # Same pairs without positives (K = 1) train a different adapter.
    plain = train_dpo(
        tiny_model_dir,
        [{k: v for k, v in p.items() if k != "degree"} for p in PAIRS],
        tmp_path / "one",
        loss_type="d2o",
        args={**ARGS, "max_steps": 2},
    )
    a, b = lora_b(r.adapter_path), lora_b(plain.adapter_path)
    assert any(not a[k].equal(b[k]) for k in a)


def test_dpo_degree_paper_bad_settings(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="degree_paper_levels must be an integer >= 2"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, degree_paper_weight=1.0, degree_paper_levels=1)
    with pytest.raises(ConfigError, match="degree_paper_labels must be one of"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, degree_paper_weight=1.0, degree_paper_labels="x")
    with pytest.raises(ConfigError, match="degree_paper_weight must be >= 0"):
        train_dpo(tiny_model_dir, PAIRS, tmp_path, degree_paper_weight=-1.0)
