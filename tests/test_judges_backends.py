"""Judges on the real vLLM engine and on a real OpenAI-compatible server (vLLM's, on loopback).

The tiny model is random: its answer letters rank far below the top 20 tokens, so the logprob
judge only works because every backend returns the letters' log-probabilities on request
(``Sampling.logprob_tokens``: vLLM's ``logprob_token_ids``, with token ids from the server's
``/tokenize`` over HTTP). Values are checked against an HF forward pass of the same model, the
both-order combination must cancel the model's real position bias exactly, and text replies of
the random model must fail to parse, be counted, and give None (never a win or a loss).
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfimprove.generate.base import Sampling
from selfimprove.generate.openai_backend import OpenAIGenerator
from selfimprove.score.judges import PairwiseJudge, PointwiseJudge, parse_score, parse_verdict

QS = ["What is 2+2?", "Name a colour.", "Capital of France?"]
RA = ["4", "blue", "Paris"]
RB = ["5", "seven", "Rome"]


class Recorder:
    """Delegates to a real generator and keeps every reply, to recompute the judge's numbers."""

    def __init__(self, gen):
        self.gen, self.backend, self.model = gen, gen.backend, gen.model
        self.outputs = []

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        out = self.gen.generate(prompts, sampling, adapter=adapter, progress=progress)
        self.outputs.append(out)
        return out


def p_first_exact(hf, judge, q, first, second):
    """P(first position wins) from the full next-token distribution of an HF forward pass."""
    import torch

    from selfimprove.generate import render_prompt

    _text, ids = render_prompt(hf.tokenizer, judge._prompt(q, first, second))
    with torch.no_grad():
        probs = hf.base(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    p = {c: float(probs[hf.tokenizer.convert_tokens_to_ids(c)]) for c in "ABC"}
    return (p["A"] + 0.5 * p["C"]) / sum(p.values())


def check_logprob_judge(gen, hf):
    """Logprob-mode checks shared by the vLLM engine and the served model; returns the results."""
    judge = PairwiseJudge(gen, mode="logprob")  # default top_logprobs=20: letters are not in it
    res = judge.compare(QS + [QS[0]], RA + ["4"], RB + ["4"])
    swapped = judge.compare(QS, RB, RA)
    rep = judge.report()
    # every call read the letters' probabilities (no fallback to parsing one random character)
    assert rep["calls"] == 14 and rep["logprob"] == 14 and rep["failure_rate"] == 0.0
    for r, q, a, b in zip(res, QS, RA, RB, strict=False):
        assert r.p_ab == pytest.approx(p_first_exact(hf, judge, q, a, b), abs=1e-4)
        assert r.p_ba == pytest.approx(1 - p_first_exact(hf, judge, q, b, a), abs=1e-4)
    # identical responses: a real position bias (P(first wins) != 0.5) that both orders cancel
    same = res[-1]
    bias = p_first_exact(hf, judge, QS[0], "4", "4")
    assert abs(bias - 0.5) > 0.01
    assert same.p_ab == pytest.approx(bias, abs=1e-4)
    assert same.preference == pytest.approx(0.5, abs=1e-6)
    # swapping the responses swaps the verdict exactly: P(a > b) = 1 - P(b > a)
    for r, s in zip(res, swapped, strict=False):
        assert r.preference == pytest.approx(1 - s.preference, abs=1e-6)
    return res


def check_text_judges(gen, *, seed=3):
    """Text-mode pairwise and pointwise judges: every reply parsed or counted as a failure."""
    rec = Recorder(gen)
    pair = PairwiseJudge(
        rec, mode="text", n_repeats=2, sampling=Sampling(n=2, temperature=1.0, max_tokens=6, seed=seed)
    )
    res = pair.compare(QS, RA, RB)
    (out,) = rec.outputs
    n = len(QS)
    value = {"A": 1.0, "B": 0.0, "tie": 0.5}
    for i, r in enumerate(res):
        ab = [parse_verdict(c.text) for c in out[i]]
        ba = [parse_verdict(c.text) for c in out[n + i]]
        ab_v = [value[v] for v in ab if v is not None]
        ba_v = [1 - value[v] for v in ba if v is not None]
        means = [sum(x) / len(x) for x in (ab_v, ba_v) if x]
        if not means:
            assert r.preference is None  # every judgement failed: no score, not a 0 or a 1
        else:
            assert r.preference == pytest.approx(sum(means) / len(means))
        assert r.n_failed == (ab + ba).count(None)
    rep = pair.report()
    replies = [c.text for g in out for c in g]
    unparsable = sum(parse_verdict(t) is None for t in replies)
    assert rep["calls"] == 12 and rep["unparsable"] == unparsable and rep["errors"] == 0
    assert rep["failure_rate"] == pytest.approx(unparsable / 12)
    assert unparsable >= 1 and rep["failed_pairs"] >= 1  # random text rarely names a letter
    assert rep["failed_pairs"] == sum(r.preference is None for r in res)

    rec2 = Recorder(gen)
    # a short rubric: the bundled additive one is longer than the tiny model's 1024-token context
    # under its character tokenizer
    point = PointwiseJudge(
        rec2,
        template="Rate the answer from 0 to 5.\nQuestion: {question}\nAnswer: {response}\nScore:",
        sampling=Sampling(n=1, temperature=1.0, max_tokens=6, seed=seed),
    )
    scores = point.score(QS, RA)
    texts = [g[0].text for g in rec2.outputs[0]]
    assert scores == [parse_score(t) for t in texts]
    prep = point.report()
    assert prep["calls"] == 3 and prep["unparsable"] == sum(s is None for s in scores)
    assert prep["failure_rate"] == pytest.approx(sum(s is None for s in scores) / 3)
    return res, replies


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from selfimprove.generate.hf_backend import HFGenerator

    gen = HFGenerator(str(tiny_model_dir))
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def served(vllm_server):
    """wait_ready() -> base url of the session's vLLM OpenAI server (tests/conftest.py)."""
    wait_ready, _adapter = vllm_server
    return wait_ready


@pytest.mark.slow
@pytest.mark.vllm
def test_logprob_judge_on_vllm_matches_hf(served, vllm_generator, hf):
    # ``served`` is requested first so that the server boots while this test runs.
    res = check_logprob_judge(vllm_generator, hf)
    # and the HF backend itself, with the same default top-k, agrees with vLLM
    res_hf = PairwiseJudge(hf, mode="logprob").compare(QS + [QS[0]], RA + ["4"], RB + ["4"])
    for v, h in zip(res, res_hf, strict=True):
        assert (v.p_ab, v.p_ba) == (pytest.approx(h.p_ab, abs=1e-4), pytest.approx(h.p_ba, abs=1e-4))


@pytest.mark.slow
@pytest.mark.vllm
def test_text_judges_on_vllm_count_failures(vllm_generator):
    check_text_judges(vllm_generator)


@pytest.mark.slow
@pytest.mark.vllm
def test_judges_through_openai_server(served, vllm_generator, hf):
    gen = OpenAIGenerator("tiny", base_url=served(), max_concurrency=4)
    try:
        res = check_logprob_judge(gen, hf)
        assert "logprob_tokens_unsupported" not in gen.stats
        local = PairwiseJudge(vllm_generator, mode="logprob").compare(QS, RA, RB)
        assert [r.preference for r in res[:3]] == [pytest.approx(x.preference, abs=1e-5) for x in local]
        # seeded sampling over HTTP equals the local engine's: same replies, same failures
        res_http, replies_http = check_text_judges(gen, seed=5)
        res_local, replies_local = check_text_judges(vllm_generator, seed=5)
        assert replies_http == replies_local
        assert [r.preference for r in res_http] == [r.preference for r in res_local]
    finally:
        gen.close()


def test_openai_logprob_tokens_without_tokenize_endpoint_fall_back_to_top_k():
    """A server without /tokenize (not vLLM) gets a plain top-k request; the fallback is counted."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if self.path.endswith("/tokenize"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            top = [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.5}]
            content = [{"token": "A", "logprob": -0.1, "top_logprobs": top}]
            choice = {
                "message": {"content": "A"},
                "finish_reason": "length",
                "logprobs": {"content": content},
            }
            data = json.dumps({"choices": [choice], "usage": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        gen = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{srv.server_address[1]}")
        judge = PairwiseJudge(gen, mode="logprob")
        (r,) = judge.compare(["q"], ["a"], ["b"])
        assert gen.stats["logprob_tokens_unsupported"] >= 1
        chat = [b for p, b in seen if p.endswith("/chat/completions")]
        assert len(chat) == 2 and all("logprob_token_ids" not in b and b["top_logprobs"] == 20 for b in chat)
        # always "A" first: AB says A, BA says B's position -> soft tie, from the top-k letters
        p_first = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.5))
        assert r.p_ab == pytest.approx(p_first) and r.p_ba == pytest.approx(1 - p_first)
        assert r.preference == pytest.approx(0.5) and judge.report()["logprob"] == 2
    finally:
        srv.shutdown()
        srv.server_close()
