"""HF transformers backend on the tiny model: greedy, seeds, stop strings, counts, logprobs, adapters."""

from __future__ import annotations

import pytest
import torch

from selfimprove.generate.base import Sampling
from selfimprove.generate.hf_backend import HFGenerator

CHAT = [{"role": "user", "content": "hi there"}]
PROMPTS = ["a", "hello world, long prompt", CHAT]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir, batch_size=8)
    yield gen
    gen.close()


def manual_greedy(model, ids, steps):
    """Greedy decoding by repeated forward passes: an independent reference for generate()."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids], device=model.device)).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def test_greedy_matches_forward_passes_and_is_batch_invariant(hf):
    greedy = Sampling(temperature=0, max_tokens=10)
    batched = hf.generate(PROMPTS, greedy)
    single = [hf.generate([p], greedy)[0] for p in PROMPTS]
    assert [g[0].token_ids for g in batched] == [g[0].token_ids for g in single]  # left padding is right
    ids = hf.tokenizer(PROMPTS[1])["input_ids"]
    assert batched[1][0].token_ids == manual_greedy(hf.base, ids, 10)
    c = batched[1][0]
    assert (c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("length", len(ids), 10)
    assert c.text == hf.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_seed_repeatable_and_samples_differ(hf):
    s = Sampling(n=4, temperature=1.0, max_tokens=12, seed=3)
    a = hf.generate(PROMPTS, s)
    b = hf.generate(PROMPTS, s)
    c = hf.generate(PROMPTS, Sampling(n=4, temperature=1.0, max_tokens=12, seed=4))
    texts = lambda out: [[x.text for x in g] for g in out]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert all(len(g) == 4 for g in a)
    assert len({x.text for x in a[0]}) > 1  # n samples are distinct draws


def test_stop_string_trims_text_and_sets_stop(hf):
    # Seeded sampling: the tokens before the stop are the same draws with or without the stop.
    base = hf.generate(["hello"], Sampling(max_tokens=20, seed=5))[0][0].text
    # Pick a character that first occurs after position 0 so the trimmed text is non-trivial.
    k, ch = next(
        (i, x) for i, x in enumerate(base) if i > 0 and base.index(x) == i and x.isascii() and x.strip()
    )
    out = hf.generate(["hello"], Sampling(max_tokens=20, seed=5, stop=(ch,)))[0][0]
    assert out.text == base[:k]
    assert out.finish_reason == "stop"
    assert out.completion_tokens < 20


def test_stop_string_the_model_did_not_stop_at_trims_the_tokens_too(hf):
    """A stop found only after decoding (here U+FFFD from a partial UTF-8 byte) trims token_ids too."""
    stop = Sampling(max_tokens=20, stop=("h",))
    ids = hf.tokenizer("xyhzw", add_special_tokens=False)["input_ids"]
    out = hf._completion(ids, 3, stop, None, 0)
    assert (out.text, out.finish_reason) == ("xy", "stop")
    assert out.token_ids == ids[:3] and out.completion_tokens == 3  # up to the token holding the stop
    # Seen on a GPU run: bytes 0xE2 0x85 decode to U+FFFD, which transformers' stop criterion missed.
    gen = [hf.tokenizer.convert_tokens_to_ids(t) for t in ["h", "â", "ĥ", "Ġ", "0"]]
    out = hf._completion(gen, 3, Sampling(max_tokens=20, stop=("\ufffd",)), None, 0)
    assert out.text == "h" and out.token_ids == gen[:2] and out.completion_tokens == 2
    # No stop string in the text: nothing is cut.
    out = hf._completion(ids, 3, Sampling(max_tokens=20, stop=("q",)), None, 0)
    assert out.token_ids == ids and out.text == "xyhzw"


def test_logprobs_equal_model_log_softmax(hf):
    out = hf.generate(["hello"], Sampling(temperature=0, max_tokens=6, logprobs=3))[0][0]
    ids = hf.tokenizer("hello")["input_ids"]
    with torch.no_grad():
        logits = hf.base(torch.tensor([ids + out.token_ids], device=hf.base.device)).logits[0].cpu()
    ref = logits.log_softmax(-1)[len(ids) - 1 : -1]
    expected = [float(ref[i, t]) for i, t in enumerate(out.token_ids)]
    assert out.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert len(out.logprobs) == 6 and all(1 <= len(d) <= 3 for d in out.logprobs)
    # Greedy: the sampled token is the top-1 of each step.
    for d, lp in zip(out.logprobs, out.token_logprobs, strict=True):
        assert max(d.values()) == pytest.approx(lp, abs=1e-5)


@pytest.mark.slow
def test_adapter_applied_and_reloaded_when_resaved(hf, tmp_path, make_lora_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    greedy = Sampling(temperature=0, max_tokens=12)
    base_out = hf.generate(PROMPTS, greedy)
    adapter = make_lora_adapter(tmp_path / "adapter", seed=1)
    with_adapter = hf.generate(PROMPTS, greedy, adapter=str(adapter))
    assert [g[0].text for g in with_adapter] != [g[0].text for g in base_out]
    # Reference: a fresh base model + PeftModel, decoded by forward passes.
    ref_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(hf.model_dir), dtype=torch.float32), str(adapter)
    ).eval()
    ids = hf.tokenizer(PROMPTS[1])["input_ids"]
    assert with_adapter[1][0].token_ids == manual_greedy(ref_model, ids, 12)
    # The base model is untouched when no adapter is asked for.
    assert [g[0].token_ids for g in hf.generate(PROMPTS, greedy)] == [g[0].token_ids for g in base_out]
    # Re-saving another adapter into the same folder is picked up (no stale cache).
    make_lora_adapter(adapter, seed=2)
    resaved = hf.generate(PROMPTS, greedy, adapter=str(adapter))
    assert [g[0].token_ids for g in resaved] != [g[0].token_ids for g in with_adapter]
    assert len(hf._peft.peft_config) == 1  # the old version was unloaded
