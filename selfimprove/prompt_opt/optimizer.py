"""Prompt optimization without references (Self-Supervised Prompt Optimization, MetaGPT's SPO).

Round 1 runs the initial prompt on a question sample. Every later round:

1. **propose**: the optimizer reads the requirements, the incumbent prompt and the incumbent's
   answers, and writes a new prompt (``<prompt>`` section of its reply, or the whole reply);
2. **execute**: the executor answers the same sample questions with the challenger;
3. **judge**: the evaluator compares the incumbent's and the challenger's answers per question,
   in both orders (:func:`selfimprove.score.judging.compare_output_sets`);
4. **decide**: the challenger is adopted when the mean preference for it is above 0.5 by the
   configured margin; below 0.5 by the margin it is rejected; in between, or with too few valid
   judgements, there is no decision. Either way the incumbent answers again only in round 1.

Where this departs from the published loop, on purpose (each is tested):

- the question sample is drawn once per run (seeded) and every role of every round sees the same
  questions; the published loop re-draws them on every call;
- the judge sees the requirements, the question and the two answers, never a prompt and never a
  reference answer; the published judge gets the whole round record and the reference answers;
- both orders for every comparison, counted only when both answered, instead of a random swap per
  call; ties are allowed; judge failures are retried and never count as a win or a loss (the
  published loop counts them, and a missing ``<choose>`` tag, as a loss for the challenger);
- a challenger wins when the judge prefers it (tested against the inverted mapping of the
  standalone repository's August 2025 fix);
- an optimizer reply without a prompt (or with an empty or unchanged one) is a counted, retried
  proposal, never an empty prompt; an executor error is retried, never an answer;
- reference answers reach the optimizer only with ``reference_guided: true`` and never the judge.

Every finished step is recorded in the workspace before it is marked done in ``state.json``, and
every call is seeded from the run seed, the round and the attempt, so a run killed at any point
and resumed gives the same workspace as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import random
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import BackendError, ConfigError, InputError
from selfimprove.generate.base import ChatMessage, Completion, Generator, Sampling
from selfimprove.generate.isolate import isolate_failures
from selfimprove.generate.pool import EnginePool
from selfimprove.prompt_opt.config import (
    ROLES,
    PromptOptConfig,
    dump_task,
    judge_template_name,
    load_task,
    optimizer_template_name,
    resolve_callable,
    role_spec,
    task_from_dict,
    template_text,
)
from selfimprove.prompt_opt.workspace import Workspace, results_entry
from selfimprove.runs.folder import RunState, folder_lock, now_utc, open_state, write_manifest
from selfimprove.score.judging import SetComparison, compare_output_sets

# Steps of a round, in order (round 0 holds the run-level steps: the sample and the held-out check).
STAGES = ("sample", "execute", "propose", "judge", "decide", "heldout")
DECISIONS = ("initial", "adopt", "reject", "no_decision", "no_proposal")
# Seed offsets: every call's seed is role seed + ROUND_STRIDE * round + attempt (repeat).
ROUND_STRIDE = 10_000
HELDOUT_ROUND = 999


# ---------------------------------------------------------------------------------------------
# Pure parts: messages, parsing, the decision rule
# ---------------------------------------------------------------------------------------------


def format_answers(questions: Sequence[str], answers: Sequence[str]) -> str:
    """Question/answer pairs as the optimizer reads them."""
    blocks = [
        f"Question {i}:\n{q}\n\nAnswer {i}:\n{a}"
        for i, (q, a) in enumerate(zip(questions, answers, strict=True), 1)
    ]
    return "\n\n---\n\n".join(blocks)


def format_references(questions: Sequence[str], references: Sequence[str | None]) -> str:
    """The reference-guided block of the optimizer template (empty when there is no reference)."""
    pairs = [(q, a) for q, a in zip(questions, references, strict=True) if a]
    if not pairs:
        return ""
    body = format_answers([q for q, _ in pairs], [a for _, a in pairs])
    return f"\nExpected answers to some of the questions (references):\n```\n{body}\n```\n"


def optimizer_messages(
    template: str,
    *,
    requirements: str,
    prompt: str,
    questions: Sequence[str],
    answers: Sequence[str],
    count: int | None = None,
    references: Sequence[str | None] | None = None,
) -> list[ChatMessage]:
    """The optimizer's chat messages (one user turn): the template filled in."""
    text = template.format(
        requirements=requirements,
        prompt=prompt,
        answers=format_answers(questions, answers),
        count=f", within {count} words" if count else "",
        references=format_references(questions, references) if references is not None else "",
    )
    return [{"role": "user", "content": text}]


def executor_messages(prompt: str, question: str, prompt_as: str = "prefix") -> list[ChatMessage]:
    """The executor's chat messages: prompt then question (one user turn), or prompt as system message."""
    if prompt_as == "system":
        return [{"role": "system", "content": prompt}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{prompt}\n\n{question}"}]


_TAG = {
    name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL) for name in ("prompt", "analyse", "modification")
}
_LABEL = re.compile(r"^(?:new |improved |optimi[sz]ed |complete )*prompt\s*:\s*", re.IGNORECASE)
_FENCED = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def _last_tag(text: str, name: str) -> str | None:
    found = _TAG[name].findall(text)
    return found[-1].strip() if found else None


def _normal(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Proposal:
    """What one optimizer reply proposes: a prompt, or why there is none (``outcome``)."""

    prompt: str | None
    outcome: str  # ok | no_prompt_section | empty_prompt | unchanged | truncated | error
    analysis: str | None = None
    modification: str | None = None


def parse_proposal(text: str, reply: str, incumbent: str, finish_reason: str = "stop") -> Proposal:
    """Read the new prompt from an optimizer reply (``reply``: "tagged" or "whole").

    Tagged: the last ``<prompt>...</prompt>`` section; a reply without one (a reply cut off by
    ``max_tokens`` before the closing tag included) proposes nothing. Whole: the reply itself,
    without a code fence, quotes or a leading "Prompt:" label. An empty prompt, or one equal to
    the incumbent up to whitespace, proposes nothing either.
    """
    if finish_reason == "error":
        return Proposal(None, "error")
    analysis = _last_tag(text, "analyse")
    modification = _last_tag(text, "modification")
    if reply == "tagged":
        prompt = _last_tag(text, "prompt")
        if prompt is None:
            outcome = "truncated" if finish_reason == "length" and "<prompt>" in text else "no_prompt_section"
            return Proposal(None, outcome, analysis, modification)
    else:
        prompt = text.strip()
        m = _FENCED.match(prompt)
        if m:
            prompt = m.group(1).strip()
        prompt = _LABEL.sub("", prompt).strip()
        if len(prompt) >= 2 and prompt[0] == prompt[-1] and prompt[0] in "\"'":
            prompt = prompt[1:-1].strip()
    if not prompt:
        return Proposal(None, "empty_prompt", analysis, modification)
    if _normal(prompt) == _normal(incumbent):
        return Proposal(None, "unchanged", analysis, modification)
    return Proposal(prompt, "ok", analysis, modification)


def decide(
    preference: float | None, judged: int, items: int, *, margin: float, min_judged: float
) -> tuple[str, str]:
    """The decision on a challenger: ("adopt" | "reject" | "no_decision", why).

    ``preference`` is the mean preference for the challenger over the ``judged`` items out of
    ``items`` compared. Adopt above 0.5 + margin, reject below 0.5 - margin; too few valid
    judgements (a share below ``min_judged``) or a preference within the margin: no decision.
    """
    if preference is None or items == 0 or judged < min_judged * items:
        return "no_decision", f"only {judged} of {items} comparisons judged (need {min_judged:.0%})"
    if preference > 0.5 + margin:
        return "adopt", f"preference for the challenger {preference:.3f} > 0.5 + {margin:g}"
    if preference < 0.5 - margin:
        return "reject", f"preference for the challenger {preference:.3f} < 0.5 - {margin:g}"
    return "no_decision", f"preference for the challenger {preference:.3f} within 0.5 +/- {margin:g}"


def draw_sample(n_questions: int, size: int, seed: int) -> list[int]:
    """Indices of the question sample, drawn once per run (sorted; all when there are fewer)."""
    if size >= n_questions:
        return list(range(n_questions))
    return sorted(random.Random(seed).sample(range(n_questions), size))


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------


class _Engines(EnginePool):
    """The roles' generators: given ones first, else built lazily, one per (backend, model, options)."""

    def __init__(self, cfg: PromptOptConfig, given: Mapping[str, Generator] | None) -> None:
        unknown = sorted(set(given or {}) - set(ROLES))
        if unknown:
            raise ConfigError(f"generators: unknown role(s) {unknown}; roles: {', '.join(ROLES)}")
        super().__init__(given)
        self.cfg = cfg

    def __call__(self, role: str) -> Generator:
        if role in self.given:
            return self.given[role]
        spec = role_spec(self.cfg, role)
        return self.get(spec.engine_key(), spec.backend, spec.model, spec.options)

    def isolated(self, role: str) -> Generator:
        """The role's generator, with failed requests turned into error completions per prompt."""
        return isolate_failures(self(role))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class PromptOptResult:
    """What ``optimize_prompt`` returns: the best prompt and how it was found."""

    best_prompt: str
    best_round: int
    initial_prompt: str
    history: list[dict[str, Any]]
    cost: dict[str, Any]
    heldout: dict[str, Any] | None = None
    stopped: str | None = None
    workspace: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _empty_cost() -> dict[str, int]:
    return {"calls": 0, "failed_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}


class _Run:
    """One optimization run in one workspace (state: the generators, the state file)."""

    def __init__(
        self,
        cfg: PromptOptConfig,
        ws: Workspace,
        state: RunState,
        engines: _Engines,
        log: Callable[[str], None],
        progress: bool,
    ) -> None:
        self.cfg, self.ws, self.state, self.engines = cfg, ws, state, engines
        self.log, self.progress = log, progress
        self.state.data.setdefault("cost", {})
        self.state.data.setdefault("incumbent", 1)
        self.seeds = {role: role_spec(cfg, role).seed for role in ROLES}
        self.qa = cfg.qa_items()

    # -- bookkeeping --------------------------------------------------------------------------
    def _account(
        self, key: str, role: str, calls: int, failed: int, prompt_tokens: int, completion_tokens: int
    ):
        """Add calls and tokens to the cost ledger (saved with the next state write)."""
        entry = self.state.data["cost"].setdefault(key, {}).setdefault(role, _empty_cost())
        entry["calls"] += calls
        entry["failed_calls"] += failed
        entry["prompt_tokens"] += prompt_tokens
        entry["completion_tokens"] += completion_tokens

    def totals(self) -> dict[str, int]:
        """Calls and tokens spent so far, all roles and rounds."""
        out = _empty_cost()
        for roles in self.state.data["cost"].values():
            for c in roles.values():
                for k in out:
                    out[k] += c[k]
        return out

    def _over_budget(self) -> str | None:
        b = self.cfg.budget
        t = self.totals()
        if b.max_calls is not None and t["calls"] >= b.max_calls:
            return f"budget reached: {t['calls']} calls (max_calls {b.max_calls})"
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        if b.max_tokens is not None and tokens >= b.max_tokens:
            return f"budget reached: {tokens} tokens (max_tokens {b.max_tokens})"
        return None

    def _stage(self, r: int, stage: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        if self.state.done(r, stage):
            return self.state.round(r)
        start = time.perf_counter()
        info = fn() or {}
        self.state.mark(r, stage, time.perf_counter() - start, **info)
        return self.state.round(r)

    # -- the question sample ------------------------------------------------------------------
    def sample(self) -> list[str]:
        """The sample questions (drawn once, read back from ``questions.json`` afterwards)."""

        def draw() -> dict[str, Any]:
            seed = self.cfg.sample.seed if self.cfg.sample.seed is not None else self.cfg.seed
            idx = draw_sample(len(self.qa), self.cfg.sample.size, seed)
            self.ws.write_json(
                "questions.json",
                {"seed": seed, "indices": idx, "questions": [self.qa[i].question for i in idx]},
            )
            return {}

        self._stage(0, "sample", draw)
        data = self.ws.read_json("questions.json")
        self.sample_indices = list(data["indices"])
        return list(data["questions"])

    # -- calls ---------------------------------------------------------------------------------
    def answer(self, prompt: str, questions: Sequence[str], seed: int, key: str) -> list[dict[str, Any]]:
        """The executor's answers to ``questions`` with ``prompt``: a record per question.

        Failed calls (backend error) are retried up to ``executor.max_attempts`` with new seeds;
        a question still without an answer stops the run with a BackendError (the calls made are
        in the ledger; ``--resume`` retries).
        """
        rc = self.cfg.executor
        gen = self.engines.isolated("executor")
        msgs = [executor_messages(prompt, q, rc.prompt_as) for q in questions]
        records: list[dict[str, Any] | None] = [None] * len(questions)
        attempts = [0] * len(questions)
        pending = list(range(len(questions)))
        last_error = ""
        for a in range(rc.max_attempts):
            if not pending:
                break
            sampling = Sampling(
                n=1, temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_tokens, seed=seed + a
            )
            try:
                out = gen.generate(
                    [msgs[i] for i in pending], sampling, progress=self.progress and len(pending) > 8
                )
            except BackendError as exc:
                last_error = str(exc)
                self._account(key, "executor", len(pending), len(pending), 0, 0)
                for i in pending:
                    attempts[i] += 1
                continue
            still = []
            for i, comps in zip(pending, out, strict=True):
                c: Completion = comps[0]
                attempts[i] += 1
                failed = c.finish_reason == "error"
                self._account(key, "executor", 1, int(failed), c.prompt_tokens, c.completion_tokens)
                if failed:
                    last_error = c.extra.get("error") or f"finish_reason error ({c.text[:100]!r})"
                    still.append(i)
                    continue
                records[i] = {
                    "question": questions[i],
                    "answer": c.text.strip(),
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "attempts": attempts[i],
                }
            pending = still
        if pending:
            self.state.save()  # keep the ledger of the failed calls
            raise BackendError(
                f"executor: no answer to {len(pending)} question(s) after {rc.max_attempts} attempts "
                f"({last_error}); the workspace is intact, continue with --resume"
            )
        return [r for r in records if r is not None]

    def _execute_round(self, r: int, prompt: str, questions: Sequence[str]) -> dict[str, Any]:
        records = self.answer(prompt, questions, self.seeds["executor"] + ROUND_STRIDE * r, str(r))
        self.ws.write_json("answers.json", records, r)
        self.ws.write_answers(r, questions, [rec["answer"] for rec in records])
        return {"answer_tokens": sum(rec["completion_tokens"] for rec in records)}

    def round_answers(self, r: int) -> list[str]:
        """The answers of round ``r``'s prompt on the sample."""
        return [rec["answer"] for rec in self.ws.read_json("answers.json", r)]

    def round_prompt(self, r: int) -> str:
        """The prompt of round ``r``."""
        return self.ws.path("prompt.txt", r).read_text(encoding="utf-8")

    def propose(self, r: int, incumbent: int, questions: Sequence[str]) -> str | None:
        """One proposal: up to ``optimizer.max_attempts`` optimizer calls, each checkpointed."""
        rc = self.cfg.optimizer
        st = self.state.round(r)
        attempts: list[dict[str, Any]] = st.setdefault("proposal_attempts", [])
        incumbent_prompt = self.round_prompt(incumbent)
        references = None
        if self.cfg.reference_guided:
            references = [self.qa[i].answer for i in self.sample_indices]
        messages = optimizer_messages(
            template_text(optimizer_template_name(self.cfg)),
            requirements=self.cfg.requirements,
            prompt=incumbent_prompt,
            questions=questions,
            answers=self.round_answers(incumbent),
            count=self.cfg.count,
            references=references,
        )
        found = next((a for a in attempts if a["outcome"] == "ok"), None)
        while found is None and len(attempts) < rc.max_attempts:
            stop = self._over_budget()
            if stop:
                raise _BudgetStop(stop)
            a = len(attempts)
            sampling = Sampling(
                n=1,
                temperature=rc.temperature,
                top_p=rc.top_p,
                max_tokens=rc.max_tokens,
                seed=self.seeds["optimizer"] + ROUND_STRIDE * r + a,
            )
            record: dict[str, Any] = {"attempt": a, "seed": sampling.seed}
            try:
                c = self.engines.isolated("optimizer").generate([messages], sampling)[0][0]
            except BackendError as exc:
                record.update(
                    outcome="error", error=str(exc), reply=None, prompt_tokens=0, completion_tokens=0
                )
                self._account(str(r), "optimizer", 1, 1, 0, 0)
            else:
                p = parse_proposal(c.text, rc.reply, incumbent_prompt, c.finish_reason)
                record.update(
                    outcome=p.outcome,
                    error=c.extra.get("error"),
                    prompt=p.prompt,
                    analysis=p.analysis,
                    modification=p.modification,
                    reply=c.text,
                    finish_reason=c.finish_reason,
                    prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens,
                )
                self._account(
                    str(r), "optimizer", 1, int(p.outcome != "ok"), c.prompt_tokens, c.completion_tokens
                )
            attempts.append(record)
            self.state.save()  # a kill after this keeps the attempt (and its cost)
            if record["outcome"] == "ok":
                found = record
        return found["prompt"] if found else None

    def judge(self, r: int, incumbent: int, questions: Sequence[str]) -> SetComparison:
        """Compare the incumbent's and round ``r``'s answers on the sample."""
        from selfimprove.score.judges import PairwiseJudge, pairwise_sampling

        ec = self.cfg.evaluator
        sampling = pairwise_sampling(
            ec.mode,
            1,
            ec.top_logprobs,
            temperature=ec.temperature,
            max_tokens=ec.max_tokens or (None if ec.mode == "logprob" else 512),
        )
        sampling = dataclasses.replace(sampling, top_p=ec.top_p)
        judge = PairwiseJudge(
            self.engines.isolated("evaluator"),
            requirements=self.cfg.requirements,
            template=template_text(judge_template_name(self.cfg)),
            mode=ec.mode,
            sampling=sampling,
        )
        return compare_output_sets(
            judge,
            questions,
            self.round_answers(incumbent),
            self.round_answers(r),
            orders=ec.orders,
            unit=ec.unit,
            repeats=ec.repeats,
            max_attempts=ec.max_attempts,
            seed=self.seeds["evaluator"] + ROUND_STRIDE * r,
        )

    # -- rounds ---------------------------------------------------------------------------------
    def round_one(self, questions: Sequence[str]) -> None:
        """Round 1: the initial prompt answers the sample; it is the first incumbent."""

        def execute() -> dict[str, Any]:
            stop = self._over_budget()
            if stop:
                raise _BudgetStop(stop)
            self.ws.write_text("prompt.txt", self.cfg.prompt, 1)
            return self._execute_round(1, self.cfg.prompt, questions)

        self._stage(1, "execute", execute)

        def decide_initial() -> dict[str, Any]:
            record = {"round": 1, "decision": "initial", "reason": "the initial prompt", "time": now_utc()}
            self.ws.write_json("decision.json", record, 1)
            self.state.data["incumbent"] = 1
            return {"decision": "initial"}

        if not self.state.done(1, "decide"):
            self.log(f"round 1: initial prompt answered {len(questions)} questions")
        self._stage(1, "decide", decide_initial)

    def round(self, r: int, questions: Sequence[str]) -> None:
        """Rounds 2..: propose, execute, judge, decide (each step skipped when already done)."""
        if self.state.done(r, "decide"):
            return
        incumbent = int(self.state.data["incumbent"])

        def propose() -> dict[str, Any]:
            prompt = self.propose(r, incumbent, questions)
            attempts = self.state.round(r)["proposal_attempts"]
            self.ws.write_json(
                "proposal.json",
                {"round": r, "incumbent": incumbent, "prompt": prompt, "attempts": attempts},
                r,
            )
            if prompt is not None:
                self.ws.write_text("prompt.txt", prompt, r)
            return {"proposed": prompt is not None}

        info = self._stage(r, "propose", propose)
        if not info["proposed"]:
            outcomes = [a["outcome"] for a in self.state.round(r)["proposal_attempts"]]
            self._decide(
                r,
                incumbent,
                "no_proposal",
                f"no usable prompt in {len(outcomes)} optimizer replies ({', '.join(outcomes)})",
                None,
            )
            return

        def execute() -> dict[str, Any]:
            stop = self._over_budget()
            if stop:
                raise _BudgetStop(stop)
            return self._execute_round(r, self.round_prompt(r), questions)

        self._stage(r, "execute", execute)

        def judge() -> dict[str, Any]:
            stop = self._over_budget()
            if stop:
                raise _BudgetStop(stop)
            comp = self.judge(r, incumbent, questions)
            s = comp.summary()
            self._account(
                str(r), "evaluator", s["calls"], s["failed_calls"], s["prompt_tokens"], s["completion_tokens"]
            )
            self.ws.write_json(
                "judgements.json",
                {
                    "round": r,
                    "a": f"round {incumbent} (incumbent)",
                    "b": f"round {r} (challenger)",
                    "summary": s,
                    "items": [dataclasses.asdict(j) for j in comp.items],
                    "calls": [{**dataclasses.asdict(c), "p_b": c.p_b} for c in comp.calls],
                },
                r,
            )
            return {}

        self._stage(r, "judge", judge)
        s = self.ws.read_json("judgements.json", r)["summary"]
        decision, reason = decide(
            s["preference_b"],
            s["judged"],
            s["items"],
            margin=self.cfg.decision.margin,
            min_judged=self.cfg.decision.min_judged,
        )
        self._decide(r, incumbent, decision, reason, s)

    def _decide(
        self, r: int, incumbent: int, decision: str, reason: str, s: Mapping[str, Any] | None
    ) -> None:
        def record() -> dict[str, Any]:
            after = r if decision == "adopt" else incumbent
            rec = {
                "round": r,
                "decision": decision,
                "reason": reason,
                "incumbent_before": incumbent,
                "incumbent_after": after,
                "preference_challenger": s["preference_b"] if s else None,
                "judged": s["judged"] if s else 0,
                "items": s["items"] if s else 0,
                "margin": self.cfg.decision.margin,
                "min_judged": self.cfg.decision.min_judged,
                "time": now_utc(),
            }
            self.ws.write_json("decision.json", rec, r)
            self.state.data["incumbent"] = after
            return {"decision": decision}

        self._stage(r, "decide", record)
        pref = s["preference_b"] if s else None
        shown = (
            f"P(challenger better) {pref:.3f}, judged {s['judged']}/{s['items']}; "
            if s and pref is not None
            else ""
        )
        self.log(f"round {r}: {shown}{decision} ({reason})")

    # -- held-out check ---------------------------------------------------------------------------
    def heldout(self) -> dict[str, Any] | None:
        """Initial vs best prompt on questions the optimizer never saw (gold used only here)."""
        hc = self.cfg.heldout
        if not hc.enabled:
            return None
        best = int(self.state.data["incumbent"])
        st = self.state.round(0)
        if self.state.done(0, "heldout") and st.get("heldout_best_round") == best:
            return self.ws.read_json("heldout.json")
        if "heldout" in st["done"]:  # a resumed run found a new best prompt: evaluate again
            st["done"].remove("heldout")
        items = [self.qa[i] for i in range(len(self.qa)) if hc.from_qa and i not in set(self.sample_indices)]
        items += list(hc.questions)
        if hc.checker is not None:
            func = resolve_callable(hc.checker.function, "heldout.checker.function")
            options = dict(hc.checker.options)
            scorer = f"checker {hc.checker.function}"

            def score(answer: str, item: Any) -> bool | None:
                v = func(answer, question=item.question, **options)
                return None if v is None else bool(v)
        else:
            from selfimprove.prompt_opt.checks import reference_check

            scorer = "reference answers (whole-word match)"

            def score(answer: str, item: Any) -> bool | None:
                return reference_check(answer, item.answer) if item.answer else None

        if not items:
            result = {"best_round": best, "scorer": scorer, "questions": 0, "note": "no held-out questions"}
            self.ws.write_json("heldout.json", result)
            self.state.mark(0, "heldout", heldout_best_round=best)
            return result
        stop = self._over_budget()
        if stop:
            raise _BudgetStop(stop)
        qs = [it.question for it in items]
        seed = self.seeds["executor"] + ROUND_STRIDE * HELDOUT_ROUND
        self.log(
            f"held-out check: {len(qs)} questions, initial prompt (round 1) and best prompt (round {best})"
        )
        initial = self.answer(self.cfg.prompt, qs, seed, "heldout")
        best_answers = initial if best == 1 else self.answer(self.round_prompt(best), qs, seed, "heldout")

        def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
            verdicts = [score(rec["answer"], it) for rec, it in zip(records, items, strict=True)]
            scored = [v for v in verdicts if v is not None]
            return {
                "pass_rate": sum(scored) / len(scored) if scored else None,
                "passed": sum(scored),
                "scored": len(scored),
                "verdicts": verdicts,
            }

        ini, bst = summarize(initial), summarize(best_answers)
        result = {
            "best_round": best,
            "scorer": scorer,
            "questions": len(qs),
            "initial": {k: v for k, v in ini.items() if k != "verdicts"},
            "best": {k: v for k, v in bst.items() if k != "verdicts"},
            "per_question": [
                {
                    "question": q,
                    "initial_answer": a["answer"],
                    "initial_pass": vi,
                    "best_answer": b["answer"],
                    "best_pass": vb,
                }
                for q, a, b, vi, vb in zip(
                    qs, initial, best_answers, ini["verdicts"], bst["verdicts"], strict=True
                )
            ],
        }
        self.ws.write_json("heldout.json", result)
        self.state.mark(0, "heldout", heldout_best_round=best)

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        self.log(
            f"held-out check ({scorer}): initial prompt {pct(ini['pass_rate'])} -> best prompt "
            f"{pct(bst['pass_rate'])} of {len(qs)} questions"
        )
        return result

    # -- summary ----------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """One record per decided round."""
        out = []
        cost = self.state.data["cost"]
        for r in self.state.rounds():
            if r == 0 or not self.state.done(r, "decide"):
                continue
            d = self.ws.read_json("decision.json", r)
            entry: dict[str, Any] = {"round": r, "decision": d["decision"], "reason": d["reason"]}
            entry["incumbent_after"] = d.get("incumbent_after", 1)
            if r > 1:
                attempts = self.state.round(r).get("proposal_attempts", [])
                entry["proposal_attempts"] = len(attempts)
                entry["proposal_outcomes"] = [a["outcome"] for a in attempts]
            if self.state.done(r, "judge"):
                s = self.ws.read_json("judgements.json", r)["summary"]
                entry.update(
                    preference_challenger=s["preference_b"],
                    judged=s["judged"],
                    items=s["items"],
                    wins_challenger=s["wins_b"],
                    wins_incumbent=s["wins_a"],
                    ties=s["ties"],
                    judge_calls=s["calls"],
                    judge_failed_calls=s["failed_calls"],
                    position_consistency=s["position_consistency"],
                )
            if self.ws.path("prompt.txt", r).exists() and d["decision"] != "no_proposal":
                prompt = self.round_prompt(r)
                entry["prompt"] = prompt
                entry["prompt_words"] = len(prompt.split())
            roles = cost.get(str(r), {})
            entry["calls"] = sum(c["calls"] for c in roles.values())
            entry["tokens"] = sum(c["prompt_tokens"] + c["completion_tokens"] for c in roles.values())
            out.append(entry)
        return out

    def cost_report(self) -> dict[str, Any]:
        """Calls, tokens (and money, where prices are given) per round and role, and totals."""
        ledger = self.state.data["cost"]
        prices = {role: getattr(self.cfg, role).price for role in ROLES}

        def money(role: str, c: Mapping[str, int]) -> float | None:
            p = prices[role]
            if p is None:
                return None
            return (c["prompt_tokens"] * p.input + c["completion_tokens"] * p.output) / 1e6

        per_round = {}
        by_role = {role: _empty_cost() for role in ROLES}
        for key in sorted(ledger, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)):
            per_round[key] = {}
            for role, c in ledger[key].items():
                per_round[key][role] = {**c, "money": money(role, c)}
                for k in by_role[role]:
                    by_role[role][k] += c[k]
        total = self.totals()
        role_money = {role: money(role, c) for role, c in by_role.items()}
        priced = [m for m in role_money.values() if m is not None]
        return {
            "per_round": per_round,
            "by_role": {role: {**c, "money": role_money[role]} for role, c in by_role.items()},
            "total": {**total, "money": sum(priced) if priced else None},
            "prices_per_million_tokens": {r: (p.model_dump() if p else None) for r, p in prices.items()},
        }

    def write_results(self, questions: Sequence[str]) -> None:
        """``prompts/results.json`` in MetaGPT's format, rebuilt from the round records."""
        entries = []
        for r in self.state.rounds():
            if r == 0 or not self.state.done(r, "decide"):
                continue
            d = self.ws.read_json("decision.json", r)
            if d["decision"] == "no_proposal":
                answers, prompt, tokens = [], "", 0
                qs: Sequence[str] = []
            else:
                recs = self.ws.read_json("answers.json", r)
                answers = [rec["answer"] for rec in recs]
                prompt = self.round_prompt(r)
                tokens = sum(rec["completion_tokens"] for rec in recs)
                qs = questions
            succeed = d["decision"] in ("initial", "adopt")
            entries.append(
                results_entry(r, qs, answers, prompt, succeed, tokens, d["time"], decision=d["decision"])
            )
        self.ws.write_results(entries)

    def finish(self, questions: Sequence[str], heldout: dict[str, Any] | None) -> dict[str, Any]:
        """Write results.json, cost.json, summary.json and best_prompt.txt; return the summary."""
        self.write_results(questions)
        cost = self.cost_report()
        self.ws.write_json("cost.json", cost)
        best = int(self.state.data["incumbent"])
        best_prompt = self.round_prompt(best)
        self.ws.write_text("best_prompt.txt", best_prompt + "\n")
        history = self.history()
        summary = {
            "name": self.cfg.name,
            "description": self.cfg.description,
            "initial_prompt": self.cfg.prompt,
            "best_round": best,
            "best_prompt": best_prompt,
            "rounds_completed": max((h["round"] for h in history), default=0),
            "rounds_planned": self.cfg.rounds + 1,
            "stopped": self.state.data.get("stopped"),
            "reference_guided": self.cfg.reference_guided,
            "sample": {"indices": self.sample_indices, "questions": list(questions)},
            "history": history,
            "heldout": {k: v for k, v in heldout.items() if k != "per_question"} if heldout else None,
            "cost": cost["total"],
        }
        self.ws.write_json("summary.json", summary)
        return summary

    def run(self) -> dict[str, Any]:
        """All rounds (resuming finished ones), the held-out check, the summary."""
        self.state.data["stopped"] = None
        questions = self.sample()
        heldout = None
        try:
            self.round_one(questions)
            for r in range(2, self.cfg.rounds + 2):
                self.round(r, questions)
            heldout = self.heldout()
            self.state.data["finished"] = True
        except _BudgetStop as stop:
            self.state.data["stopped"] = str(stop)
            self.log(f"stopped: {stop}; raise the budget and pass --resume to go on")
            if self.state.done(0, "heldout"):
                heldout = self.ws.read_json("heldout.json")
        self.state.save()
        if self.state.done(1, "decide"):
            return self.finish(questions, heldout)
        return {"stopped": self.state.data["stopped"], "best_round": None}


class _BudgetStop(Exception):
    """The budget is spent: the run stops cleanly before the next step."""


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _as_config(task: Any, overrides: Sequence[str]) -> PromptOptConfig:
    if isinstance(task, PromptOptConfig):
        if overrides:
            return task_from_dict(task.to_dict(), overrides, name=task.name or "task")
        return task
    if isinstance(task, Mapping):
        return task_from_dict(task, overrides)
    if isinstance(task, (str, Path)):
        return load_task(task, overrides)
    raise InputError(
        f"optimize_prompt: task must be a task file path, a dict or a PromptOptConfig, got {type(task).__name__}"
    )


def optimize_prompt(
    task: str | Path | Mapping[str, Any] | PromptOptConfig,
    workspace: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    generators: Mapping[str, Generator] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
    report: bool = True,
) -> PromptOptResult:
    """Optimize the task's prompt without references; return the best prompt and its history.

    ``task``: a task file (MetaGPT's SPO format plus optional settings), a dict of the same, or
    a loaded :class:`PromptOptConfig`; ``overrides`` are ``key.sub=value`` strings. ``workspace``
    holds every record (see :mod:`selfimprove.prompt_opt.workspace`); ``resume=True`` continues
    a workspace (``force=True`` even when the settings changed). ``generators`` maps roles
    ("optimizer", "executor", "evaluator") to already built generators, used instead of building
    them from the config; the caller closes those.
    """
    cfg = _as_config(task, overrides)
    ws = Workspace(workspace)
    logger = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    engines = _Engines(cfg, generators)
    with folder_lock(ws.root, what="workspace"):
        state, resumed = open_state(
            ws.root,
            cfg.fingerprint(),
            resume=resume,
            force=force,
            stages=STAGES,
            what="workspace",
            incumbent=1,
        )
        ws.write_text("config.yaml", dump_task(cfg))
        fields = {
            "name": cfg.name,
            "job": "prompt_opt",
            "config_hash": cfg.fingerprint(),
            "seeds": {"run": cfg.seed},
        }
        fields["roles"] = {role: dataclasses.asdict(role_spec(cfg, role)) for role in ROLES}
        write_manifest(ws.root, fields, command=command, resumed=resumed)
        state.save()
        runner = _Run(cfg, ws, state, engines, logger, progress)
        try:
            summary = runner.run()
        finally:
            engines.close()
        if report and summary.get("best_round") is not None:
            from selfimprove.prompt_opt.report import write_report

            write_report(ws.root)
    cost = read_cost(ws.root)
    return PromptOptResult(
        best_prompt=summary.get("best_prompt", cfg.prompt),
        best_round=summary.get("best_round") or 1,
        initial_prompt=cfg.prompt,
        history=summary.get("history", []),
        cost=cost,
        heldout=summary.get("heldout"),
        stopped=summary.get("stopped"),
        workspace=ws.root,
        summary=summary,
    )


def read_cost(workspace: str | Path) -> dict[str, Any]:
    """``cost.json`` of a workspace (empty when the run has not finished a round)."""
    ws = Workspace(workspace)
    return ws.read_json("cost.json") if ws.path("cost.json").exists() else {}


__all__ = [
    "DECISIONS",
    "STAGES",
    "PromptOptResult",
    "Proposal",
    "decide",
    "draw_sample",
    "executor_messages",
    "format_answers",
    "format_references",
    "optimize_prompt",
    "optimizer_messages",
    "parse_proposal",
    "read_cost",
]
