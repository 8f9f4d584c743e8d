"""Prompt optimization (SPO) with scripted models: the decision logic, what each role sees, the task
file, the workspace, resume after kill -9, budget, failures and bad input.

The scripted model plays all three roles by reading the request, as dspy tests optimizers against a
scripted LM: the optimizer writes "Prompt version N+1", the executor answers "reply vN to: Q" (N
from the prompt it was given), and the judge applies a policy to the two answers it sees (prefer the
newer version, the older one, always "A", a tie, or garbage). The same script also runs behind a
real local HTTP server so the CLI and the openai backend are exercised end to end (kill -9 test).
Real models: tests/test_prompt_opt_models.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from selfimprove.errors import BackendError, ConfigError
from selfimprove.generate.base import Completion
from selfimprove.prompt_opt import load_task, optimize_prompt, task_from_dict
from selfimprove.prompt_opt.checks import answer_problems, check_answer, reference_check
from selfimprove.prompt_opt.optimizer import decide, draw_sample, executor_messages, parse_proposal

REPO = Path(__file__).resolve().parent.parent
SENTINEL = "GOLD-SENTINEL-42"
INITIAL = "Prompt version 1: answer the question."
REQUIREMENTS = "Answer in one short line."


def between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def version(text: str) -> int:
    return int(re.search(r"(?:version|reply v) ?(\d+)", text).group(1))


def role_of(messages) -> str:
    text = messages[-1]["content"]
    if text.startswith("You are improving a prompt"):
        return "optimizer"
    if text.startswith("You compare two answers"):
        return "judge"
    return "executor"


def scripted_reply(messages, seed: int | None, judge: str = "newer", optimizer: str = "ok") -> str:
    """The scripted model's reply to one request (deterministic in the request and the seed)."""
    text = "\n".join(m["content"] for m in messages)
    role = role_of(messages)
    if role == "optimizer":
        v = version(between(text, "Current prompt:\n```\n", "\n```"))
        if optimizer == "never" or (optimizer == "first_fails" and (seed or 0) % 10 == 0):
            return "<analyse>the answers are long</analyse> I would make it shorter."
        return f"<analyse>long</analyse><modification>shorter</modification><prompt>Prompt version {v + 1}: be brief.</prompt>"
    if role == "judge":
        a = version(between(text, "[Answer A]\n", "\n[End of Answer A]"))
        b = version(between(text, "[Answer B]\n", "\n[End of Answer B]"))
        letter = {
            "newer": "A" if a > b else "B",
            "older": "A" if a < b else "B",
            "always_a": "A",
            "tie": "C",
            "garbage": None,
        }[judge]
        return "I cannot decide." if letter is None else f"<analyse>...</analyse><choose>{letter}</choose>"
    prompt, _, question = messages[-1]["content"].partition("\n\n")
    return f"reply v{version(prompt)} to: {question}"


class Scripted:
    """A generator that answers with :func:`scripted_reply` and records every request."""

    backend = "scripted"
    model = "scripted"

    def __init__(self, judge: str = "newer", optimizer: str = "ok", fail=None) -> None:
        self.judge, self.optimizer, self.fail = judge, optimizer, fail
        self.sent: list[tuple[list[dict], object]] = []

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        out = []
        for p in prompts:
            self.sent.append((p, sampling))
            if self.fail is not None and self.fail(p, sampling):
                raise BackendError("http://scripted/v1/chat/completions: HTTP 500: 'boom'")
            group = []
            for j in range(sampling.n):
                seed = None if sampling.seed is None else sampling.seed + j
                reply = scripted_reply(p, seed, self.judge, self.optimizer)
                group.append(
                    Completion(
                        text=reply,
                        finish_reason="stop",
                        prompt_tokens=sum(len(m["content"].split()) for m in p),
                        completion_tokens=len(reply.split()),
                    )
                )
            out.append(group)
        return out

    def close(self) -> None:
        pass

    def by_role(self, role: str) -> list[list[dict]]:
        return [p for p, _s in self.sent if role_of(p) == role]


def make_task(**settings) -> dict:
    qa = [{"question": f"Question number {i}?", "answer": f"{SENTINEL} {i}"} for i in range(8)]
    return {
        "prompt": INITIAL,
        "requirements": REQUIREMENTS,
        "qa": qa,
        "model": "scripted",
        "rounds": 3,
        **settings,
    }


def run_scripted(tmp_path, gen=None, name="ws", **settings):
    gen = gen or Scripted()
    res = optimize_prompt(
        make_task(**settings),
        tmp_path / name,
        generators={"optimizer": gen, "executor": gen, "evaluator": gen},
        log=lambda msg: None,
        progress=False,
    )
    return res, gen


# ---------------------------------------------------------------------------------------------
# Pure parts as tables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pref", "judged", "items", "expected"),
    [
        (1.0, 3, 3, "adopt"),
        (0.56, 3, 3, "adopt"),
        (0.55, 3, 3, "no_decision"),  # not above 0.5 + margin
        (0.5, 3, 3, "no_decision"),
        (0.45, 3, 3, "no_decision"),
        (0.44, 3, 3, "reject"),
        (0.0, 3, 3, "reject"),
        (1.0, 1, 3, "no_decision"),  # too few valid judgements
        (None, 0, 3, "no_decision"),
        (1.0, 2, 3, "adopt"),
    ],
)
def test_decision_rule(pref, judged, items, expected):
    assert decide(pref, judged, items, margin=0.05, min_judged=0.5)[0] == expected


@pytest.mark.parametrize(
    ("reply", "mode", "finish", "prompt", "outcome"),
    [
        ("<analyse>a</analyse><prompt>New prompt.</prompt>", "tagged", "stop", "New prompt.", "ok"),
        ("<prompt>first</prompt> then <prompt>Second one.</prompt>", "tagged", "stop", "Second one.", "ok"),
        ("I would make it shorter.", "tagged", "stop", None, "no_prompt_section"),
        ("<prompt>cut off by max_tok", "tagged", "length", None, "truncated"),
        ("<prompt>   </prompt>", "tagged", "stop", None, "empty_prompt"),
        ("<prompt>Old  prompt.</prompt>", "tagged", "stop", None, "unchanged"),
        ("Prompt: Be brief.", "whole", "stop", "Be brief.", "ok"),
        ('"Be brief."', "whole", "stop", "Be brief.", "ok"),
        ("```\nBe brief.\n```", "whole", "stop", "Be brief.", "ok"),
        ("   ", "whole", "stop", None, "empty_prompt"),
        ("anything", "tagged", "error", None, "error"),
    ],
)
def test_parse_proposal(reply, mode, finish, prompt, outcome):
    p = parse_proposal(reply, mode, "Old prompt.", finish)
    assert (p.prompt, p.outcome) == (prompt, outcome)


def test_draw_sample_is_seeded_and_bounded():
    assert draw_sample(10, 3, seed=1) == draw_sample(10, 3, seed=1)
    assert draw_sample(10, 3, seed=1) != draw_sample(10, 3, seed=2)
    assert draw_sample(2, 3, seed=0) == [0, 1]


def test_executor_messages():
    assert executor_messages("P.", "Q?") == [{"role": "user", "content": "P.\n\nQ?"}]
    assert executor_messages("P.", "Q?", "system") == [
        {"role": "system", "content": "P."},
        {"role": "user", "content": "Q?"},
    ]


@pytest.mark.parametrize(
    ("answer", "options", "problems"),
    [
        ("Jupiter.", {"max_words": 15, "format": "one_line"}, []),
        ("one two three", {"max_words": 2}, ["3 words > 2"]),
        ("line one\nline two", {"format": "one_line"}, ["2 lines, expected one"]),
        (
            '{"answer": "Paris", "confidence": 0.9}',
            {"format": "json", "json_keys": ["answer", "confidence"]},
            [],
        ),
        (
            '{"answer": "Paris"}',
            {"json_keys": ["answer", "confidence"]},
            ["JSON lacks key(s) ['confidence']"],
        ),
        (
            '{"answer": 1, "x": 2}',
            {"json_keys": ["answer"], "exact_keys": True},
            ["JSON has extra key(s) ['x']"],
        ),
        ("Paris", {"format": "json"}, ["not valid JSON"]),
        ("- a\n- b\n- c", {"format": "bullets", "bullets": 3}, []),
        (
            "Tips:\n- a\n- b",
            {"format": "bullets", "bullets": 3},
            ["1 line(s) are not bullet points", "2 bullet points, expected 3"],
        ),
        ("Sure! - a", {"forbidden": ["sure"]}, ["contains forbidden 'sure'"]),
        ("Sure! - a", {"forbidden": ["sure"], "case_sensitive": True}, []),
        ("hello", {"required": ["world"]}, ["lacks 'world'"]),
        ("", {}, ["empty answer"]),
        ("42", {"format": "number"}, []),
    ],
)
def test_checker_rules(answer, options, problems):
    assert answer_problems(answer, **options) == problems
    assert check_answer(answer, **options) is (not problems)


def test_reference_check_is_whole_words():
    assert reference_check("It is Paris, of course.", "paris")
    assert not reference_check("14 legs", "4")
    assert reference_check("A spider has 8 legs.", "8")


# ---------------------------------------------------------------------------------------------
# The decision logic on whole runs (scripted judges)
# ---------------------------------------------------------------------------------------------


def decisions(res) -> list[str]:
    return [h["decision"] for h in res.history]


def test_judge_preferring_the_challenger_adopts_it(tmp_path):
    res, _ = run_scripted(tmp_path, Scripted(judge="newer"))
    assert decisions(res) == ["initial", "adopt", "adopt", "adopt"]
    assert res.best_round == 4 and res.best_prompt == "Prompt version 4: be brief."
    assert all(h["preference_challenger"] == 1.0 for h in res.history[1:])


def test_judge_preferring_the_incumbent_rejects_the_challenger(tmp_path):
    """The inverted-mapping bug: a judge that always prefers the incumbent must never adopt."""
    res, _ = run_scripted(tmp_path, Scripted(judge="older"))
    assert decisions(res) == ["initial", "reject", "reject", "reject"]
    assert res.best_round == 1 and res.best_prompt == INITIAL
    assert all(h["preference_challenger"] == 0.0 for h in res.history[1:])


def test_position_biased_judge_gives_no_decision_in_both_orders(tmp_path):
    res, gen = run_scripted(tmp_path, Scripted(judge="always_a"))
    assert decisions(res) == ["initial", "no_decision", "no_decision", "no_decision"]
    assert res.best_round == 1
    for h in res.history[1:]:
        assert h["preference_challenger"] == 0.5 and h["ties"] == 3 and h["position_consistency"] == 0.0
    # every comparison was asked in both orders
    judgements = json.loads((tmp_path / "ws/prompts/round_2/judgements.json").read_text())
    orders = sorted((c["item"], c["order"]) for c in judgements["calls"])
    assert orders == [(i, o) for i in range(3) for o in ("AB", "BA")]


def test_position_biased_judge_decides_by_position_with_one_random_order(tmp_path):
    """The published scheme (one order drawn at random per call) lets the same judge decide."""
    res, _ = run_scripted(
        tmp_path, Scripted(judge="always_a"), evaluator={"orders": "one_random", "repeats": 4}, rounds=6
    )
    assert set(decisions(res)[1:]) & {"adopt", "reject"}


def test_ties_give_no_decision(tmp_path):
    res, _ = run_scripted(tmp_path, Scripted(judge="tie"))
    assert decisions(res)[1:] == ["no_decision"] * 3
    assert all(h["ties"] == 3 and h["preference_challenger"] == 0.5 for h in res.history[1:])


def test_failing_judge_is_retried_and_never_a_loss(tmp_path):
    res, gen = run_scripted(tmp_path, Scripted(judge="garbage"), evaluator={"max_attempts": 2})
    assert decisions(res)[1:] == ["no_decision"] * 3
    for h in res.history[1:]:
        assert h["judged"] == 0 and h["judge_failed_calls"] == 12  # 3 questions x 2 orders x 2 attempts
        assert h["preference_challenger"] is None
    assert "only 0 of 3 comparisons judged" in res.history[1]["reason"]
    # retries used new seeds
    seeds = {s.seed for p, s in gen.sent if role_of(p) == "judge"}
    assert len(seeds) == 2 * 3


def test_judge_backend_errors_are_counted_and_not_losses(tmp_path):
    """A judge server that fails for one question: that comparison is left out, the others decide."""

    def fail(p, s):
        return (
            role_of(p) == "judge"
            and "Question number" in p[-1]["content"]
            and "to: Question number 1?" in p[-1]["content"]
        )

    res, _ = run_scripted(tmp_path, Scripted(judge="newer", fail=fail), sample={"size": 3, "seed": 0})
    sample = json.loads((tmp_path / "ws/questions.json").read_text())["questions"]
    for h in res.history[1:]:
        if "Question number 1?" in sample:
            assert h["judged"] == 2 and h["judge_failed_calls"] > 0
        assert h["decision"] == "adopt"


def test_optimizer_reply_without_prompt_is_a_counted_retried_proposal(tmp_path):
    res, gen = run_scripted(tmp_path, Scripted(optimizer="first_fails"))
    for h in res.history[1:]:
        assert h["proposal_outcomes"] == ["no_prompt_section", "ok"]
        assert h["decision"] == "adopt"
    assert res.cost["by_role"]["optimizer"]["failed_calls"] == 3


def test_optimizer_that_never_proposes_runs_no_empty_prompt(tmp_path):
    res, gen = run_scripted(tmp_path, Scripted(optimizer="never"), optimizer={"max_attempts": 2})
    assert decisions(res) == ["initial", "no_proposal", "no_proposal", "no_proposal"]
    assert all(h["proposal_outcomes"] == ["no_prompt_section"] * 2 for h in res.history[1:])
    # the executor only ever ran the initial prompt, never an empty one
    executed = {p[-1]["content"].partition("\n\n")[0] for p in gen.by_role("executor")}
    assert executed == {INITIAL}
    assert not gen.by_role("judge")
    results = json.loads((tmp_path / "ws/prompts/results.json").read_text())
    assert [e["succeed"] for e in results] == [True, False, False, False]


# ---------------------------------------------------------------------------------------------
# What each role sees
# ---------------------------------------------------------------------------------------------


def test_questions_are_identical_across_rounds_and_roles(tmp_path):
    res, gen = run_scripted(tmp_path, sample={"size": 3, "seed": 5})
    sample = json.loads((tmp_path / "ws/questions.json").read_text())
    assert sample["questions"] == [f"Question number {i}?" for i in sample["indices"]]
    qs = sample["questions"]
    executor_qs = [p[-1]["content"].partition("\n\n")[2] for p in gen.by_role("executor")]
    assert len(executor_qs) == 3 * 4 and all(executor_qs[i : i + 3] == qs for i in range(0, 12, 3))
    judged_qs = {between(p[-1]["content"], "Question:\n", "\n\n[Answer A]") for p in gen.by_role("judge")}
    assert judged_qs == set(qs)
    for p in gen.by_role("optimizer"):
        shown = re.findall(r"Question \d+:\n(.*?)\n", p[-1]["content"])
        assert shown == qs


def test_judge_sees_only_requirements_question_and_answers(tmp_path):
    """The exact judge input: the template filled with the requirements, the question and two answers."""
    from selfimprove.prompt_opt.config import template_text

    res, gen = run_scripted(tmp_path)
    template = template_text("prompt_opt_judge")
    sent = gen.by_role("judge")
    assert sent
    qs = json.loads((tmp_path / "ws/questions.json").read_text())["questions"]
    expected = set()
    for r, inc in ((2, 1), (3, 2), (4, 3)):
        for q in qs:
            a, b = f"reply v{inc} to: {q}", f"reply v{r} to: {q}"
            for first, second in ((a, b), (b, a)):
                expected.add(
                    template.format(
                        requirements=REQUIREMENTS, question=q, response_a=first, response_b=second
                    )
                )
    assert {p[-1]["content"] for p in sent} == expected
    assert all(len(p) == 1 and p[0]["role"] == "user" for p in sent)
    for p in sent:
        assert "Prompt version" not in p[0]["content"]  # no prompt text
        assert SENTINEL not in p[0]["content"]  # no reference answer


def test_reference_answers_never_reach_optimizer_or_judge(tmp_path):
    res, gen = run_scripted(tmp_path)
    assert gen.sent
    assert not any(SENTINEL in m["content"] for p, _ in gen.sent for m in p)
    # and none in the records the optimizer or judge produced
    for f in (tmp_path / "ws/prompts").rglob("*.json"):
        if f.name in ("proposal.json", "judgements.json"):
            assert SENTINEL not in f.read_text()


def test_count_reaches_the_optimizer_and_is_recorded(tmp_path):
    res, gen = run_scripted(tmp_path, count=12, rounds=1)
    (sent,) = gen.by_role("optimizer")
    assert "the complete new prompt, within 12 words</prompt>" in sent[-1]["content"]
    res, gen = run_scripted(tmp_path, name="none", rounds=1)
    assert "the complete new prompt</prompt>" in gen.by_role("optimizer")[0][-1]["content"]
    assert res.history[1]["prompt_words"] == 5


def test_reference_guided_mode_shows_references_to_the_optimizer_only(tmp_path):
    res, gen = run_scripted(tmp_path, reference_guided=True)
    assert all(SENTINEL in p[-1]["content"] for p in gen.by_role("optimizer"))
    assert not any(SENTINEL in p[-1]["content"] for p in gen.by_role("judge") + gen.by_role("executor"))


# ---------------------------------------------------------------------------------------------
# Workspace, cost, budget, held-out check, resume
# ---------------------------------------------------------------------------------------------


def test_workspace_has_metagpt_results_and_every_record(tmp_path):
    res, gen = run_scripted(tmp_path)
    ws = tmp_path / "ws"
    results = json.loads((ws / "prompts/results.json").read_text())
    assert [e["round"] for e in results] == [1, 2, 3, 4]
    for e in results:
        assert list(e)[:6] == ["round", "answers", "prompt", "succeed", "tokens", "time"]
        assert [a["question"] for a in e["answers"]] == json.loads((ws / "questions.json").read_text())[
            "questions"
        ]
        assert (ws / f"prompts/round_{e['round']}/prompt.txt").read_text() == e["prompt"]
        assert e["tokens"] == sum(
            r["completion_tokens"]
            for r in json.loads((ws / f"prompts/round_{e['round']}/answers.json").read_text())
        )
    txt = (ws / "prompts/round_2/answers.txt").read_text()
    assert txt.startswith("Question:\nQuestion number") and "\nAnswer:\nreply v2 to: " in txt
    assert (ws / "best_prompt.txt").read_text() == "Prompt version 4: be brief.\n"
    report = (ws / "report.md").read_text()
    assert "| 2 | adopt | 1.000 |" in report and (ws / "report.html").read_text().startswith(
        "<!doctype html>"
    )


def test_cost_per_role_and_round_with_money(tmp_path):
    res, gen = run_scripted(
        tmp_path,
        optimizer={"price": {"input": 2.0, "output": 8.0}},
        executor={"price": {"input": 1.0, "output": 1.0}},
        evaluator={"price": {"input": 0.5, "output": 0.5}},
    )
    calls = {role: 0 for role in ("optimizer", "executor", "evaluator")}
    tokens = {role: [0, 0] for role in calls}
    for p, s in gen.sent:
        role = {"judge": "evaluator"}.get(role_of(p), role_of(p))
        calls[role] += 1
        tokens[role][0] += sum(len(m["content"].split()) for m in p)
        tokens[role][1] += len(scripted_reply(p, s.seed).split())
    by_role = res.cost["by_role"]
    assert (
        {r: by_role[r]["calls"] for r in calls} == calls == {"optimizer": 3, "executor": 12, "evaluator": 18}
    )
    for role, (pin, pout) in {
        "optimizer": (2.0, 8.0),
        "executor": (1.0, 1.0),
        "evaluator": (0.5, 0.5),
    }.items():
        assert [by_role[role]["prompt_tokens"], by_role[role]["completion_tokens"]] == tokens[role]
        assert by_role[role]["money"] == pytest.approx((tokens[role][0] * pin + tokens[role][1] * pout) / 1e6)
    per_round = res.cost["per_round"]
    assert per_round["2"]["optimizer"]["calls"] == 1 and per_round["2"]["evaluator"]["calls"] == 6


def test_budget_stops_cleanly_and_resume_goes_on(tmp_path):
    full, _ = run_scripted(tmp_path, name="full")
    # round 1 = 3 calls, every later round 1 + 3 + 6 = 10 calls; the budget is checked before each
    # step: 13 after round 2, round 3's proposal (14) and answers (17) start below 15, its judge not
    res, _ = run_scripted(tmp_path, name="ws", budget={"max_calls": 15})
    assert res.stopped == "budget reached: 17 calls (max_calls 15)"
    assert decisions(res) == ["initial", "adopt"]
    assert res.cost["total"]["calls"] == 17
    assert (tmp_path / "ws/summary.json").exists() and (tmp_path / "ws/report.md").exists()
    gen = Scripted()
    res2 = optimize_prompt(
        make_task(budget={"max_calls": 1000}),
        tmp_path / "ws",
        resume=True,
        generators={"optimizer": gen, "executor": gen, "evaluator": gen},
        log=lambda m: None,
        progress=False,
    )
    assert res2.stopped is None and decisions(res2) == decisions(full)
    assert res2.cost["total"]["calls"] == full.cost["total"]["calls"]
    # finished steps were not repeated: only the rest of round 3 and round 4 ran
    assert len(gen.sent) == full.cost["total"]["calls"] - res.cost["total"]["calls"]


def test_heldout_check_with_checker_and_with_references(tmp_path):
    checker = {
        "function": "selfimprove.prompt_opt.checks:check_answer",
        "options": {"required": ["reply v4"]},
    }
    res, _ = run_scripted(tmp_path, heldout={"enabled": True, "checker": checker})
    held = json.loads((tmp_path / "ws/heldout.json").read_text())
    sample = set(json.loads((tmp_path / "ws/questions.json").read_text())["indices"])
    assert held["questions"] == 8 - len(sample) == 5
    assert [q["question"] for q in held["per_question"]] == [
        f"Question number {i}?" for i in range(8) if i not in sample
    ]
    assert (
        held["initial"]["pass_rate"] == 0.0 and held["best"]["pass_rate"] == 1.0 and held["best_round"] == 4
    )
    assert res.heldout["best"]["passed"] == 5
    # no checker: the reference answers score the held-out answers (and only here)
    res, _ = run_scripted(
        tmp_path,
        name="ref",
        heldout={"enabled": True, "questions": [{"question": "Extra?", "answer": "reply"}]},
    )
    held = json.loads((tmp_path / "ref/heldout.json").read_text())
    assert held["questions"] == 6 and held["best"]["scored"] == 6
    assert held["per_question"][-1]["best_pass"] is True and held["per_question"][0]["best_pass"] is False


def test_executor_error_stops_the_run_and_resume_finishes_it(tmp_path):
    boom = Scripted(fail=lambda p, s: role_of(p) == "executor" and "version 3" in p[-1]["content"])
    with pytest.raises(BackendError, match="executor: no answer to 3 question"):
        run_scripted(tmp_path, boom)
    state = json.loads((tmp_path / "ws/state.json").read_text())
    assert state["rounds"]["3"]["done"] == ["propose"] and state["cost"]["3"]["executor"]["failed_calls"] == 9
    res, _ = run_scripted(tmp_path, name="full")
    gen = Scripted()
    res2 = optimize_prompt(
        make_task(),
        tmp_path / "ws",
        resume=True,
        generators=dict.fromkeys(("optimizer", "executor", "evaluator"), gen),
        log=lambda m: None,
    )
    assert decisions(res2) == decisions(res) and res2.best_prompt == res.best_prompt
    assert (
        not gen.by_role("optimizer")[:0] and len(gen.by_role("optimizer")) == 1
    )  # only round 4 proposed again


def test_existing_workspace_needs_resume_and_same_settings(tmp_path):
    run_scripted(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run_scripted(tmp_path)
    gen = Scripted()
    with pytest.raises(ConfigError, match="the config differs"):
        optimize_prompt(
            make_task(seed=3),
            tmp_path / "ws",
            resume=True,
            generators=dict.fromkeys(("optimizer", "executor", "evaluator"), gen),
        )
    # more rounds is not a change of settings: the run is extended
    res = optimize_prompt(
        make_task(rounds=4),
        tmp_path / "ws",
        resume=True,
        generators=dict.fromkeys(("optimizer", "executor", "evaluator"), gen),
        log=lambda m: None,
    )
    assert len(res.history) == 5 and len(gen.by_role("optimizer")) == 1


# ---------------------------------------------------------------------------------------------
# The task file
# ---------------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name="task.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


METAGPT_POEM_LIKE = """\
prompt: |
  Create poetry in the requested style and format.

requirements: |
  Write a poem with a title.

count: None

faq:
  - question: |
      Write a modern sonnet about climate change
    answer: |
      None

  - question: |
      Create a haiku series about New York City
    answer: |
      None
  - question: Write a free verse poem about social media
"""


def test_metagpt_files_are_accepted_as_is(tmp_path):
    cfg = load_task(write(tmp_path, METAGPT_POEM_LIKE), ["model=m"])
    assert cfg.name == "task" and cfg.count is None and cfg.qa is None
    items = cfg.qa_items()
    assert [i.question for i in items] == [
        "Write a modern sonnet about climate change",
        "Create a haiku series about New York City",
        "Write a free verse poem about social media",
    ]
    assert [i.answer for i in items] == [None, None, None]  # "None" strings and an absent answer
    cfg = load_task(
        write(
            tmp_path,
            "prompt: p\nrequirements: r\ncount: 50\nqa:\n  - question: q\n    answer: ''\n  - question: q2\n    answer: 7\n",
        ),
        ["model=m"],
    )
    assert cfg.count == 50 and [i.answer for i in cfg.qa_items()] == [None, "7"]


def test_shipped_tasks_validate_and_their_checker_works():
    tasks = sorted((REPO / "configs" / "prompt_opt").glob("*.yaml"))
    assert len(tasks) >= 3
    for path in tasks:
        cfg = load_task(path, ["model=m"])
        assert cfg.description and len(cfg.qa_items()) >= 9 and cfg.heldout.enabled
        assert cfg.heldout.checker is not None
        assert cfg.name == path.stem


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("prompt: p\nqa:\n  - question: q\n", ["task.yaml", "requirements", "required key is missing"]),
        (
            "prompt: p\nrequirements: None\nqa:\n  - question: q\n",
            ["task.yaml:2", "requirements", "written requirements"],
        ),
        ("prompt: p\nrequirements: r\n", ["task.yaml", "no questions"]),
        ("prompt: p\nrequirements: r\nqa: []\n", ["no questions"]),
        ("prompt: p\nrequirements: r\nqa:\n  - question: ''\n", ["task.yaml:4", "qa[0].question", "empty"]),
        ("prompt: p\nrequirements: r\nqa:\n  - question: q\nfaq:\n  - question: q\n", ["qa or as faq"]),
        (
            "prompt: p\nrequirements: r\nqa:\n  - question: q\nrouns: 3\n",
            ["task.yaml:5", "rouns", "did you mean 'rounds'"],
        ),
        (
            "prompt: p\nrequirements: r\nqa:\n  - question: q\nevaluator:\n  mode: logprobs\n",
            ["task.yaml:6", "evaluator.mode", "did you mean 'logprob'"],
        ),
        (
            "prompt: p\nrequirements: r\nqa:\n  - question: q\n  - questoin: q\n",
            ["task.yaml:5", "qa[1].questoin", "did you mean 'question'"],
        ),
        ("prompt: p\nrequirements: [r\nqa: x\n", ["task.yaml:3", "malformed YAML"]),
        ("- just\n- a list\n", ["must be a mapping"]),
    ],
)
def test_bad_task_files(tmp_path, text, needles):
    with pytest.raises(ConfigError) as exc:
        load_task(write(tmp_path, text), ["model=m"])
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)


def test_missing_model_and_bad_templates_name_the_key(tmp_path):
    base = "prompt: p\nrequirements: r\nqa:\n  - question: q\n"
    with pytest.raises(ConfigError, match=r"optimizer\.model: no model for the optimizer"):
        load_task(write(tmp_path, base))
    bad = write(tmp_path, "Improve {prompt} for {requirements} given {answers} and {colour}", "bad.txt")
    with pytest.raises(ConfigError) as exc:
        load_task(write(tmp_path, base + f"optimizer:\n  template: {bad}\n"), ["model=m"])
    msg = str(exc.value)
    assert (
        "task.yaml:6: optimizer.template" in msg
        and "bad.txt" in msg
        and "unknown placeholder {colour}" in msg
    )
    with pytest.raises(ConfigError, match=r"evaluator\.template: .*must use \{response_a\}"):
        load_task(write(tmp_path, base), ["model=m", "evaluator.template='{question} {response_b}'"])
    with pytest.raises(ConfigError, match=r"command-line override 'evaluator.template=nope'.*not found"):
        load_task(write(tmp_path, base), ["model=m", "evaluator.template=nope"])
    with pytest.raises(ConfigError, match=r"heldout.checker.function: cannot import module 'no_such_module'"):
        load_task(write(tmp_path, base), ["model=m", "heldout.checker.function=no_such_module:f"])
    with pytest.raises(
        ConfigError, match=r"heldout.checker.options: 'max_word' is not an option.*did you mean 'max_words'"
    ):
        load_task(write(tmp_path, base), ["model=m", "heldout.checker.options={max_word: 3}"])
    with pytest.raises(
        ConfigError, match=r"options.base_ur: unknown option of __init__ \(did you mean 'base_url'\?\)"
    ):
        load_task(write(tmp_path, base), ["model=m", "backend=openai", "options={base_ur: x}"])


def test_roles_resolve_their_own_backend_model_and_seed(tmp_path):
    from selfimprove.prompt_opt.config import role_spec

    cfg = task_from_dict(
        make_task(
            model="shared",
            seed=7,
            executor={"backend": "hf", "model": "small", "seed": 3},
            evaluator={"options": {"batch_size": 4}},
        )
    )
    specs = {r: role_spec(cfg, r) for r in ("optimizer", "executor", "evaluator")}
    assert (specs["optimizer"].backend, specs["optimizer"].model, specs["optimizer"].seed) == (
        "vllm",
        "shared",
        7,
    )
    assert (specs["executor"].backend, specs["executor"].model, specs["executor"].seed) == ("hf", "small", 3)
    assert specs["evaluator"].options == {"batch_size": 4}
    assert specs["optimizer"].engine_key() != specs["evaluator"].engine_key()


# ---------------------------------------------------------------------------------------------
# Through the CLI and the openai backend, against a scripted local HTTP server
# ---------------------------------------------------------------------------------------------


@contextmanager
def scripted_server(judge="newer", hold=None, fail_every=0, hold_always=False):
    """An OpenAI-compatible HTTP server answering with the scripted model.

    ``hold(messages) -> bool``: the first such request (every one with ``hold_always``) is held
    for 30 s without an answer, and the event ``held`` is set; ``fail_every``: every n-th request
    gets an HTTP 500.
    """
    held = threading.Event()
    count = {"n": 0, "held": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                count["n"] += 1
                n = count["n"]
                count.setdefault("auth", set()).add(self.headers.get("Authorization"))
            if fail_every and n % fail_every == 0:
                self.send_response(500)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"boom")
                return
            messages = body["messages"]
            if hold is not None and hold(messages) and (hold_always or not held.is_set()):
                count["held"] += 1
                held.set()
                time.sleep(30)  # the client is killed (or times out) meanwhile
                return
            reply = scripted_reply(messages, body.get("seed"), judge)
            data = json.dumps(
                {
                    "choices": [{"message": {"content": reply}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": sum(len(m["content"].split()) for m in messages),
                        "completion_tokens": len(reply.split()),
                    },
                }
            ).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client was killed or timed out
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", held, count
    finally:
        server.shutdown()
        server.server_close()


def cli_cmd(task: Path, ws: Path, url: str, *overrides: str, flags=()) -> list[str]:
    """``selfimprove optimize-prompt`` on the scripted server (openai backend, no backend retries)."""
    cmd = [
        sys.executable,
        "-m",
        "selfimprove.cli",
        "optimize-prompt",
        str(task),
        "backend=openai",
        "model=scripted",
    ]
    cmd += [f"options.base_url={url}", "options.max_retries=0", *overrides]
    return [*cmd, "--workspace", str(ws), "--no-progress", *flags]


def cli(task: Path, ws: Path, url: str, *overrides: str, flags=(), timeout: float = 120, env=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    cmd = cli_cmd(task, ws, url, *overrides, flags=flags)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def task_file(tmp_path: Path) -> Path:
    import yaml

    data = make_task()
    data.pop("model")
    data["heldout"] = {"enabled": True, "checker": {"options": {"required": ["reply v"]}}}
    return write(tmp_path, yaml.safe_dump(data), "spo_task.yaml")


VOLATILE = {"time", "updated", "created", "starts", "seconds", "pid", "fingerprint"}


def snapshot(ws: Path) -> dict[str, object]:
    """Every result file of a workspace, with times left out (and what names the server's port)."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in VOLATILE}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    out = {}
    for f in sorted(ws.rglob("*")):
        if f.is_dir() or f.name in ("run.lock", "report.md", "report.html", "manifest.json", "config.yaml"):
            continue
        rel = str(f.relative_to(ws))
        out[rel] = clean(json.loads(f.read_text())) if f.suffix == ".json" else f.read_text()
    return out


def test_cli_resume_after_kill_9_gives_the_same_workspace(tmp_path):
    task = task_file(tmp_path)

    def judge_of_round_3(messages):
        text = messages[-1]["content"]
        return text.startswith("You compare two answers") and "reply v3" in text

    with scripted_server() as (url, _held, _count):
        done = cli(task, tmp_path / "full", url, "rounds=3")
        assert done.returncode == 0, done.stderr
        assert "best prompt (round 4):\nPrompt version 4: be brief." in done.stdout
    with scripted_server(hold=judge_of_round_3) as (url, held, count):
        proc = subprocess.Popen(
            cli_cmd(task, tmp_path / "ws", url),
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert held.wait(60), "the run never reached round 3's judge"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        state = json.loads((tmp_path / "ws/state.json").read_text())
        assert state["rounds"]["3"]["done"] == ["propose", "execute"] and not state["finished"]
        before = count["n"]
        resumed = cli(task, tmp_path / "ws", url, flags=["--resume"])
        assert resumed.returncode == 0, resumed.stderr
        # only round 3's judge, round 4 and the held-out check ran again: 6 + (1 + 3 + 6) + 2 x 5
        assert count["n"] - before == 6 + 10 + 10
    assert snapshot(tmp_path / "ws") == snapshot(tmp_path / "full")


def test_cli_server_errors_are_retried_and_counted(tmp_path):
    task = task_file(tmp_path)
    secret = "sk-test-secret-0123456789"
    with scripted_server(fail_every=4) as (url, _held, count):
        done = cli(task, tmp_path / "ws", url, "rounds=2", env={"OPENAI_API_KEY": secret})
    assert done.returncode == 0, done.stderr
    assert count["auth"] == {f"Bearer {secret}"}  # the key came from the environment ...
    for f in (tmp_path / "ws").rglob("*"):  # ... and is written nowhere
        assert not f.is_file() or secret not in f.read_text(errors="replace")
    assert secret not in done.stdout + done.stderr
    cost = json.loads((tmp_path / "ws/cost.json").read_text())
    assert cost["total"]["failed_calls"] > 0
    assert cost["total"]["calls"] == count["n"]  # every request, failed ones included, is counted
    summary = json.loads((tmp_path / "ws/summary.json").read_text())
    assert [h["decision"] for h in summary["history"]] == ["initial", "adopt", "adopt"]


def test_cli_server_that_never_answers_stops_with_a_clear_error(tmp_path):
    task = task_file(tmp_path)
    with scripted_server(hold=lambda m: True, hold_always=True) as (url, _held, _count):
        done = cli(task, tmp_path / "ws", url, "options.timeout=1", "executor.max_attempts=2")
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "selfimprove optimize-prompt: error: executor: no answer to 3 question(s)"
    )
    assert "timed out" in err[0] and "--resume" in err[0]
    state = json.loads((tmp_path / "ws/state.json").read_text())
    assert state["cost"]["1"]["executor"]["failed_calls"] >= 3  # counted, workspace intact


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["rounds=-1"],
            "command-line override 'rounds=-1': rounds: Input should be greater than or equal to 0",
        ),
        (["evaluator.orders=random"], "evaluator.orders: 'random' is not allowed"),
        (["nonsense"], "override 'nonsense': expected key.sub=value"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, extra, needle):
    task = task_file(tmp_path)
    done = cli(task, tmp_path / "ws", "http://127.0.0.1:9/v1", *extra, timeout=60)
    assert done.returncode == 2
    assert needle in done.stderr and done.stderr.count("\n") <= 2, done.stderr
    assert not (tmp_path / "ws").exists()


def test_docs_schema_table_is_current_and_every_key_documented(tmp_path):
    """docs/prompt_opt.md's generated table matches the schema (regenerate: python -m selfimprove.prompt_opt.config)."""
    from selfimprove.config.docs import iter_fields
    from selfimprove.prompt_opt.config import DOC_INLINE, PromptOptConfig, update_docs

    copy = tmp_path / "prompt_opt.md"
    copy.write_text((REPO / "docs" / "prompt_opt.md").read_text())
    assert not update_docs(copy), (
        "docs/prompt_opt.md is stale: python -m selfimprove.prompt_opt.config docs/prompt_opt.md"
    )
    fields = list(iter_fields(PromptOptConfig, inline=DOC_INLINE))
    assert not [p for p, _t, _d, desc in fields if not desc.strip()]
