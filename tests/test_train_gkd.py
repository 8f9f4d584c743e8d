"""train_gkd (TRL's GKD trainer) on tiny models: the first step's loss is the generalized JSD between
student and teacher on the completion tokens, computed here by hand; the adapter moves; a teacher
with another tokenizer is refused before training."""

from __future__ import annotations

import math

import pytest
import torch

from selfimprove.errors import InputError

ROWS = [
    {
        "prompt": [{"role": "user", "content": f"what is {i}+{i}?"}],
        "completion": [{"role": "assistant", "content": f"answer {2 * i}"}],
    }
    for i in range(4)
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """Another tiny model with the same tokenizer as ``tiny_model_dir`` (other weights)."""
    from selfimprove.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gkd_teacher"), seed=5)


def hand_jsd(student_dir, teacher_dir, rows, beta: float = 0.5) -> float:
    """Generalized JSD per completion token, summed over the batch and divided by its token count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(student_dir))
    s_model = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32).eval()
    t_model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    for row in rows:
        messages = row["prompt"] + row["completion"]
        full = tok.apply_chat_template(messages, tokenize=False)
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert full.startswith(prompt)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        x = torch.tensor([ids])
        with torch.no_grad():
            s = torch.log_softmax(s_model(x).logits[0], -1)
            t = torch.log_softmax(t_model(x).logits[0], -1)
        for pos in range(n_prompt, len(ids)):  # the logits at pos - 1 predict token pos
            ps, pt = s[pos - 1].exp(), t[pos - 1].exp()
            m = beta * pt + (1 - beta) * ps
            kl_t = float((pt * (pt.log() - m.log())).sum())
            kl_s = float((ps * (ps.log() - m.log())).sum())
            total += beta * kl_t + (1 - beta) * kl_s
            count += 1
    return total / count


@pytest.mark.slow
def test_gkd_first_loss_is_the_hand_computed_jsd(tiny_model_dir, teacher_dir, tmp_path):
    from safetensors.torch import load_file

    from selfimprove.train.adapters import read_adapter_meta
    from selfimprove.train.gkd import train_gkd

    args = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "disable_tqdm": True}
    r = train_gkd(tiny_model_dir, teacher_dir, ROWS, tmp_path / "adapter", args=args, seed=0)
    assert r.steps == 2 and r.method == "gkd"
    expected = hand_jsd(tiny_model_dir, teacher_dir, ROWS)
    assert expected > 0.01  # different weights: the divergence is not trivially zero
    # step 1 sees all four rows with the LoRA B matrices at zero, i.e. the base student
    assert r.loss_history[0] == pytest.approx(expected, rel=1e-3)
    assert all(math.isfinite(x) for x in r.loss_history)
    weights = load_file(str(r.adapter_path / "adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert read_adapter_meta(r.adapter_path)["method"] == "gkd"
    # the student itself as the teacher: nothing to learn, the divergence is zero
    same = train_gkd(tiny_model_dir, tiny_model_dir, ROWS, tmp_path / "self", args=args, seed=0)
    assert same.loss_history[0] == pytest.approx(0.0, abs=1e-6)


def test_gkd_refuses_a_teacher_with_another_tokenizer():
    from selfimprove.train.gkd import check_same_tokenizer

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    check_same_tokenizer(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 1}), "s", "t")
    with pytest.raises(InputError, match=r"same tokenizer; s \(2 tokens\) and t \(2 tokens\) differ"):
        check_same_tokenizer(Tok({"a": 0, "b": 1}), Tok({"a": 1, "b": 0}), "s", "t")
    with pytest.raises(InputError, match=r"tokens only in the student's: \['c'\]"):
        check_same_tokenizer(Tok({"a": 0, "c": 1}), Tok({"a": 0}), "s", "t")
