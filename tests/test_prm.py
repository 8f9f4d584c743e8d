"""Implicit process reward: log-ratio of a LoRA adapter against its base, steps, best-of-n."""

from __future__ import annotations

import pytest

from selfimprove.errors import ConfigError
from selfimprove.score.prm import ImplicitPRM, best_of_n, split_steps


def test_split_steps():
    assert split_steps("a\nb\nc") == ["a\n", "b\n", "c"]
    assert split_steps("a\n\nb\n") == ["a\n", "\nb\n"]
    assert split_steps("") == []
    assert split_steps("\n\n") == ["\n\n"]
    assert split_steps("s1. x || s2", "||") == ["s1. x ||", " s2"]


@pytest.fixture(scope="module")
def adapter_pair(tiny_model_dir, tmp_path_factory):
    """The tiny model with a random (non-zero) LoRA adapter saved to disk, and a zero adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for name, init in (("random", False), ("zero", True)):
        torch.manual_seed(1)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
        cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=init)
        model = get_peft_model(base, cfg)
        path = tmp_path_factory.mktemp(f"adapter_{name}")
        model.save_pretrained(str(path))
        out[name] = path
    return out


@pytest.mark.slow
def test_log_ratios_match_separate_models(tiny_model_dir, adapter_pair):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prm = ImplicitPRM(str(tiny_model_dir), str(adapter_pair["random"]), beta=0.1)
    prompt, response = "Q: 1+1?\n", "step one\nstep two\n= 2"
    (score,) = prm.score([prompt], [response])
    assert score.steps == ["step one\n", "step two\n", "= 2"]
    assert len(score.step_rewards) == 3
    n_resp = sum(len(prm.tokenizer(st, add_special_tokens=False)["input_ids"]) for st in score.steps)
    assert len(score.token_log_ratios) == n_resp > 10
    assert sum(score.step_rewards) == pytest.approx(score.outcome, abs=1e-5)
    assert score.outcome == pytest.approx(0.1 * sum(score.token_log_ratios), abs=1e-6)
    assert any(abs(x) > 1e-4 for x in score.token_log_ratios)

    # reference computation with two independent models
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    parts = [prompt, *score.steps]
    ids = torch.tensor([[t for p in parts for t in tok(p, add_special_tokens=False)["input_ids"]]])
    n_p = len(tok(prompt, add_special_tokens=False)["input_ids"])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    pol = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32"),
        str(adapter_pair["random"]),
    )

    def lp(model):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        return logits.gather(-1, ids[0, 1:, None])[n_p - 1 :, 0]

    expected = (lp(pol) - lp(base)).tolist()
    assert score.token_log_ratios == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_zero_adapter_gives_zero_rewards_and_best_of_n(tiny_model_dir, adapter_pair):
    prm0 = ImplicitPRM(str(tiny_model_dir), str(adapter_pair["zero"]))
    scores = prm0.score(["hi", [{"role": "user", "content": "hi"}]], ["a\nb", ""])
    assert all(abs(x) < 1e-6 for x in scores[0].token_log_ratios)
    assert scores[1].steps == [] and scores[1].outcome == 0.0
    prm = ImplicitPRM(str(tiny_model_dir), str(adapter_pair["random"]), beta=1.0)
    cands = ["abc\ndef", "xyz", "12\n34\n56"]
    best, values = best_of_n(prm, "Q", cands, aggregate="sum")
    direct = [s.outcome for s in prm.score(["Q"] * 3, cands)]
    assert values == pytest.approx(direct, abs=1e-5)
    assert best == max(range(3), key=lambda i: direct[i])
    best_min, values_min = best_of_n(prm, "Q", cands, aggregate="min")
    assert values_min[best_min] == max(values_min)


def test_prm_bad_config(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="adapter"):
        ImplicitPRM(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="does not exist"):
        ImplicitPRM(str(tiny_model_dir), str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="beta"):
        ImplicitPRM(str(tiny_model_dir), str(tmp_path), beta=0)
