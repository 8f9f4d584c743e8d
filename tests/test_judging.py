"""Set-level pairwise comparison (compare_output_sets) with scripted judges: orders, repeats, ties,
failures, retries and the set unit. The real judges on real engines: tests/test_judges_backends.py
and the prompt optimizer's model tests."""

from __future__ import annotations

import re

import pytest

from selfimprove.errors import BackendError, ConfigError, InputError
from selfimprove.generate.base import Completion
from selfimprove.generate.isolate import isolate_failures
from selfimprove.score.judges import PairwiseJudge, parse_verdict
from selfimprove.score.judging import compare_output_sets, set_item

QS = ["q0?", "q1?", "q2?"]
A = ["good 0", "bad 1", "good 2"]
B = ["bad 0", "good 1", "good 2"]


class Judge:
    """Replies with ``policy(first, second, seed)`` -> reply text (or raises BackendError)."""

    backend = "scripted"
    model = "scripted"

    def __init__(self, policy):
        self.policy = policy
        self.calls = []

    def generate(self, prompts, sampling, *, adapter=None, progress=False):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            first = re.search(r"\[Response A\]\n(.*?)\n\[End of Response A\]", text, re.DOTALL).group(1)
            second = re.search(r"\[Response B\]\n(.*?)\n\[End of Response B\]", text, re.DOTALL).group(1)
            self.calls.append((first, second, sampling.seed))
            reply = self.policy(first, second, sampling.seed)
            out.append([Completion(text=reply, finish_reason="stop", prompt_tokens=10, completion_tokens=1)])
        return out

    def close(self):
        pass


def quality(first: str, second: str, seed) -> str:
    """Prefers the answer that says "good"; a tie when both do."""
    g1, g2 = first.startswith("good"), second.startswith("good")
    return "C" if g1 == g2 else ("A" if g1 else "B")


def judge_with(policy, **kw) -> tuple[PairwiseJudge, Judge]:
    gen = Judge(policy)
    return PairwiseJudge(gen, requirements="be good", **kw), gen


def test_consistent_judge_both_orders():
    judge, gen = judge_with(quality)
    res = compare_output_sets(judge, QS, A, B)
    assert [j.preference_b for j in res.items] == [0.0, 1.0, 0.5]
    assert res.preference_b == pytest.approx(0.5)
    assert (res.wins_a, res.wins_b, res.ties, res.judged) == (1, 1, 1, 3)
    assert sorted((f, s) for f, s, _ in gen.calls) == sorted(
        [(a, b) for a, b in zip(A, B, strict=True)] + [(b, a) for a, b in zip(A, B, strict=True)]
    )
    s = res.summary()
    assert s["calls"] == 6 and s["failed_calls"] == 0 and s["position_consistency"] == 1.0
    assert s["prompt_tokens"] == 60 and s["completion_tokens"] == 6


def test_position_bias_cancels_in_both_orders_and_decides_in_one_random_order():
    judge, _ = judge_with(lambda f, s, seed: "A")
    both = compare_output_sets(judge, QS, A, B)
    assert [j.preference_b for j in both.items] == [0.5, 0.5, 0.5]
    assert (
        both.summary()["position_consistency"] == 0.0 and both.summary()["first_position_preference"] == 1.0
    )
    one = compare_output_sets(judge, QS, A, B, orders="one_random", repeats=1, seed=1)
    assert {j.preference_b for j in one.items} <= {0.0, 1.0}  # the drawn order alone decides
    assert len(one.calls) == 3


def test_repeats_are_separate_seeded_calls():
    judge, gen = judge_with(quality)
    res = compare_output_sets(judge, QS, A, B, repeats=3, seed=100)
    assert len(res.calls) == 18
    assert sorted({seed for *_, seed in gen.calls}) == [100, 101, 102]


def test_failures_are_retried_with_new_seeds_and_never_a_win_or_loss():
    # the judge fails on the first attempt for everything, then answers
    judge, gen = judge_with(lambda f, s, seed: "no idea" if seed < 1000 else quality(f, s, seed))
    res = compare_output_sets(judge, QS, A, B, max_attempts=2, seed=0)
    assert [j.preference_b for j in res.items] == [0.0, 1.0, 0.5]
    s = res.summary()
    assert s["failed_calls"] == 6 and s["retried_calls"] == 6 and s["calls"] == 12
    # a judge that never answers for question 0 in the BA order: question 0 is left out
    judge, _ = judge_with(lambda f, s, seed: "garbage" if f == "bad 0" else quality(f, s, seed))
    res = compare_output_sets(judge, QS, A, B, max_attempts=3)
    assert res.items[0].preference_b is None and res.items[0].p_b_ab == 0.0 and res.items[0].p_b_ba is None
    assert res.judged == 2 and res.preference_b == pytest.approx(0.75)
    assert res.summary()["failed_calls"] == 3


def test_backend_errors_count_as_failed_calls():
    def boom(f, s, seed):
        raise BackendError("http://x/v1: HTTP 503")

    judge, _ = judge_with(boom)
    res = compare_output_sets(judge, QS, A, B, max_attempts=2)
    assert res.preference_b is None and res.judged == 0
    assert res.summary()["failed_calls"] == 12 and all("503" in c.error for c in res.calls)
    # the same through a failure-isolating generator: one failing question, the rest judged
    gen = Judge(
        lambda f, s, seed: (
            (_ for _ in ()).throw(BackendError("HTTP 500")) if "1" in f else quality(f, s, seed)
        )
    )
    res = compare_output_sets(PairwiseJudge(isolate_failures(gen)), QS, A, B, max_attempts=2)
    assert res.judged == 2 and res.items[1].preference_b is None


def test_set_unit_judges_everything_at_once():
    judge, gen = judge_with(lambda f, s, seed: "A" if "good 0" in f else "B")
    res = compare_output_sets(judge, QS, A, B, unit="set")
    assert len(res.items) == 1 and len(gen.calls) == 2
    q, a = set_item(QS, A)
    assert q == "Question 1: q0?\n\nQuestion 2: q1?\n\nQuestion 3: q2?"
    assert a == "Answer to question 1: good 0\n\nAnswer to question 2: bad 1\n\nAnswer to question 3: good 2"
    assert res.preference_b == 0.0  # A (holding "good 0") won in both orders


def test_bad_arguments():
    judge, _ = judge_with(quality)
    with pytest.raises(ConfigError, match="orders"):
        compare_output_sets(judge, QS, A, B, orders="random")
    with pytest.raises(ConfigError, match="unit"):
        compare_output_sets(judge, QS, A, B, unit="all")
    with pytest.raises(InputError, match="3 questions, 2 A outputs"):
        compare_output_sets(judge, QS, A[:2], B)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("<analyse>B is shorter</analyse><choose>B</choose>", "B"),
        ("<choose>A</choose> ... <choose>C</choose>", "tie"),
        ("<analyse>Response A is better</analyse><choose>one letter: A, B or C</choose>", None),
        ("<choose> tie </choose>", "tie"),
        ("<choose>[A]</choose>", "A"),
    ],
)
def test_choose_tags(reply, verdict):
    assert parse_verdict(reply) == verdict


# ---------------------------------------------------------------- judging a round's rollouts


def _rollouts():
    """Two prompts, three samples each; "good" answers should beat "bad" ones."""
    texts = {"p0": ["good a", "bad b", "good c"], "p1": ["bad d", "bad e", "good f"]}
    return [
        {
            "prompt_id": pid,
            "prompt": [{"role": "user", "content": f"question {pid}?"}],
            "sample_index": k,
            "completion": t,
        }
        for pid, ts in texts.items()
        for k, t in enumerate(ts)
    ]


def test_judge_rollouts_pairwise_scores_each_rollout_against_its_prompts_others():
    from selfimprove.score.judging import build_rollout_judge, judge_rollouts

    gen = Judge(quality)
    judge, opponents = build_rollout_judge("pairwise", gen, {"opponents": "all", "max_tokens": 8}, seed=7)
    rollouts = _rollouts()
    scores, report = judge_rollouts(judge, list(reversed(rollouts)), opponents=opponents, seed="0|1")
    by_text = {
        x["completion"]: s for x, s in zip(reversed(rollouts), scores, strict=True)
    }  # rollout order kept
    # Both orders of every pair within a prompt: p0 "good a" beats "bad b" and ties "good c" -> 0.75.
    assert by_text == {
        "good a": 0.75,
        "bad b": 0.0,
        "good c": 0.75,
        "bad d": 0.25,
        "bad e": 0.25,
        "good f": 1.0,
    }
    assert all({first[:1], second[:1]} <= {"g", "b"} for first, second, _ in gen.calls)
    assert len(gen.calls) == 2 * (3 + 3)  # 3 pairs per prompt, both orders
    assert {c[2] for c in gen.calls} == {7}  # the judge's sampling is seeded
    assert report["kind"] == "pairwise" and report["scored_rate"] == 1.0


def test_build_rollout_judge_names_a_bad_option():
    from selfimprove.score.judging import build_rollout_judge

    with pytest.raises(ConfigError, match=r"scoring\.judge\.options: .*no_such_option"):
        build_rollout_judge("pairwise", Judge(quality), {"no_such_option": 1}, where="scoring.judge.options")
    with pytest.raises(ConfigError, match="pointwise' or 'pairwise"):
        build_rollout_judge("listwise", Judge(quality))


def test_paraphrased_prompts_are_made_once_and_voted_on(tmp_path):
    from selfimprove.score.paraphrase import paraphrased_prompts, voted_labels

    class Writer:
        """Rewrites "question pN?" as "In other words: question pN?" (p1's rewrite drops its number)."""

        backend = model = "scripted"

        def __init__(self):
            self.calls = 0

        def generate(self, prompts, sampling, *, adapter=None, progress=False):
            self.calls += 1
            out = []
            for p in prompts:
                q = p[-1]["content"].strip().split("\n")[-1]
                text = "In other words: " + (q if "p0" in q else "question p?")
                out.append(
                    [Completion(text=text, finish_reason="stop", prompt_tokens=5, completion_tokens=5)]
                )
            return out

    prompts = [
        {"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"question p{i}?"}]} for i in (0, 1)
    ]
    w = Writer()
    closed = []
    made = paraphrased_prompts(prompts, tmp_path / "para.jsonl", lambda: (w, lambda: closed.append(1)))
    assert [p["prompt_id"] for p in made] == ["p0"]  # p1's rewrite changed a number: it abstains
    assert "In other words" in made[0]["prompt"][0]["content"] and closed == [1]
    again = paraphrased_prompts(prompts, tmp_path / "para.jsonl", lambda: pytest.fail("made twice"))
    assert again == made and w.calls >= 1
    recs = [{"prompt_id": "p0", "completion": c} for c in ("it is 4", "4", "5")]
    assert voted_labels(recs, lambda t: t.split()[-1]) == {"p0": "4"}
