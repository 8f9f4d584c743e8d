"""benchmarks/bench_prompt_opt.py on a scripted model: what it reads from the workspaces and how it
counts agreement (the real model runs only as the benchmark)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from selfimprove.generate.base import Completion

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
JSON = '{"answer": "Paris", "confidence": 0.9}'


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(_DIR))  # it imports machine_info from bench_selftrain, as a script does
    try:
        spec = importlib.util.spec_from_file_location("bench_prompt_opt", _DIR / "bench_prompt_opt.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(_DIR))
        sys.modules.pop("bench_selftrain", None)


class JsonWorld:
    """Optimizer: always proposes a JSON instruction; executor: JSON when told so; judge: prefers JSON."""

    backend = "scripted"
    model = "scripted"

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            if text.startswith("Here are answers"):
                reply = "Reply with only a JSON object."
            elif "[Response A]" in text:
                a = re.search(r"\[Response A\]\n(.*?)\n\[End", text, re.DOTALL).group(1)
                b = re.search(r"\[Response B\]\n(.*?)\n\[End", text, re.DOTALL).group(1)
                reply = "C" if ("{" in a) == ("{" in b) else ("A" if "{" in a else "B")
            else:
                reply = JSON if "JSON" in text.split("\n\n")[0] else "The answer is Paris, a lovely city."
            out.append([Completion(text=reply, finish_reason="stop", prompt_tokens=7, completion_tokens=3)])
        return out

    def close(self):
        pass


def test_runs_costs_efficacy_and_agreement(bench, tmp_path):
    gen = JsonWorld()
    ws = bench.run_one("json_answer", 0, 2, [], gen, tmp_path, "eff")
    costs = bench.round_costs(ws)
    assert [c["round"] for c in costs] == [2, 3]
    assert costs[0]["proposed"] and not costs[1]["proposed"]  # round 3 proposes the incumbent again
    assert (
        costs[0]["optimizer"]["calls"],
        costs[0]["executor"]["calls"],
        costs[0]["evaluator"]["calls"],
    ) == (1, 3, 6)
    assert costs[1]["optimizer"]["calls"] == 3 and costs[1]["executor"]["calls"] == 0
    assert bench.optimizer_outcomes(ws) == ["ok", "unchanged", "unchanged", "unchanged"]
    row = bench.efficacy_rows(ws, "json_answer", gen, seed=0)
    assert row["decisions"] == ["initial", "adopt", "no_proposal"]
    assert row["heldout_initial"] == 0.0 and row["heldout_best"] == 1.0
    (r2,) = row["rounds"]
    assert (r2["pass_incumbent"], r2["pass_challenger"], r2["checker"]) == (0, 3, "challenger")
    assert r2["both_orders"] == "adopt" and r2["published"] == "adopt"
    text = "\n".join(
        bench.render_efficacy([row]) + bench.render_cost({"both, per question": costs}, {"whole": ["ok"]})
    )
    assert "| json_answer | 1 | 0.0% ± 0.0 | 100.0% ± 0.0 | 1 of 1 |" in text
    assert "| both orders, per question (default) | 1 | 1 | 1 | 1 of 1 (100.0%) | 0 of 0 |" in text
    assert "| both, per question | 1 | 1.00 | 3.00 | 6.00 | 42 | 18 | 70 | 30 |" in text
    judged = bench.judge_vs_checker("json_answer", gen, [0])
    assert judged["pass_initial"] == 0 and judged["pass_requirements_prompt"] == 12
    assert len(judged["per_question"]) == 12 and {x["both"] for x in judged["per_question"]} == {"B"}
    assert judged["samples"][0]["default"] == "adopt" and judged["samples"][0]["checker"] == "B"


def test_agreement_counts(bench):
    rounds = [
        {"checker": "challenger", "both_orders": "adopt", "published": "reject"},
        {"checker": "incumbent", "both_orders": "no_decision", "published": "reject"},
        {"checker": "incumbent", "both_orders": "adopt", "published": "adopt"},
        {"checker": "tie", "both_orders": "no_decision", "published": "adopt"},
    ]
    assert bench.agreement(rounds, "both_orders") == {
        "rounds": 4,
        "checker_sided": 3,
        "decided": 2,
        "agree": 1,
        "adopted_on_checker_tie": 0,
        "checker_ties": 1,
    }
    assert bench.agreement(rounds, "published")["agree"] == 1
    assert bench.agreement(rounds, "published")["adopted_on_checker_tie"] == 1
