"""Label-free preference trainers vs SFT and GRPO at the same generation budget, through the product runner.

For every family, method and seed, one run of ``selfimprove run`` (``selfimprove.loop.runner``)
in its own subprocess, from ``configs/sc_dpo.yaml`` with the family's shipped base model and the
method's overrides (``METHODS``). Every method samples ``generation.n`` answers for each of the
same ``task.train_size`` fresh prompts per round (same prompts, same sampling seeds), votes on
them without labels, and evaluates on the same held-out prompts; only what is built from the
vote and how it trains differ:

- ``sft``: majority-filtered SFT (samples agreeing with a clear majority, as ``configs/rejection_sft.yaml``);
- ``sc_dpo``: self-consistency DPO, a majority-answer sample chosen over a minority-answer one;
- ``dpo_spo_gap``: + SPO's degree term, gap-based (``degree_weight``, the vote-share gap);
- ``dpo_spo_paper``: + SPO's degree term as its paper builds it (``degree_paper_weight``);
- ``dpo_nll``: + NLL on the chosen response (``nll_weight``);
- ``d2o``: D2O, the chosen and up to 4 further majority samples as positives against the minority one;
- ``ttrl_grpo``: TTRL, GRPO with agreement with the voted pseudo-label as the reward;
- ``sft_gold``, ``dpo_gold``, ``grpo_gold``: the SUPERVISED gold-reward twins of ``sft``,
  ``sc_dpo`` and ``ttrl_grpo`` (``GOLD_TWINS``; they read the train prompts' gold answers).

The collapse guard only warns (``loop.guard.action=warn``), so every method runs every round.
Run folders: ``RUN_ROOT/<family>/s<seed>/<method>`` (log beside it as ``<method>.log``); a
finished run with the same config is not redone, an unfinished one resumes, so the benchmark can
be stopped and started again with the same command. Results: Markdown (``--out``) and the raw
per-round metrics (``<out stem>_raw.jsonl``), both rebuilt from the run folders.

    nice -n 10 python benchmarks/bench_preference.py --seeds 0 --rounds 1 --families string_ops
    python benchmarks/bench_preference.py --report-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_selftrain import (  # noqa: E402
    Job,
    execute,
    fmt_stat,
    gold_overrides,
    machine_info,
    mean_sd,
    round_seconds,
    run_status,
)

FAMILIES = {"string_ops": 40, "arithmetic": 64}  # family -> generation.max_tokens
_DPO = "{strategy: majority_vs_minority, max_pairs_per_prompt: 2, min_margin: 0.25}"
_DPO_COMMON = ["training.method=dpo", "training.batch_size=8", f"data.dpo={_DPO}"]
METHODS: dict[str, tuple[str, list[str]]] = {
    "sft": (
        "majority-filtered SFT",
        [
            "training.method=sft",
            "data.sft={select: majority, min_majority_ratio: 0.5, max_per_prompt: null, dedupe: false}",
            "training.learning_rate=0.001",
            "training.epochs=2",
            "training.batch_size=16",
            "training.trl={}",
        ],
    ),
    "sc_dpo": ("self-consistency DPO", [*_DPO_COMMON, "training.trl={beta: 0.1}"]),
    "dpo_spo_gap": (
        "DPO + SPO degree, gap-based",
        [*_DPO_COMMON, "training.trl={beta: 0.1, degree_weight: 1.0, degree_mode: regress}"],
    ),
    "dpo_spo_paper": (
        "DPO + SPO degree, paper's construction",
        [*_DPO_COMMON, "training.trl={beta: 0.1, degree_paper_weight: 0.5, degree_paper_levels: 3}"],
    ),
    "dpo_nll": ("DPO + NLL on chosen", [*_DPO_COMMON, "training.trl={beta: 0.1, nll_weight: 0.2}"]),
    "d2o": (
        "D2O (K <= 5 positives)",
        [
            "training.method=dpo",
            "training.batch_size=8",
            "data.dpo={strategy: majority_vs_minority, max_pairs_per_prompt: 2, min_margin: 0.25, d2o_positives: 4}",
            "training.trl={beta: 0.1, loss_type: d2o}",
        ],
    ),
    "ttrl_grpo": (
        "TTRL GRPO",
        [
            "training.method=grpo",
            "scoring.rewards=[{name: pseudo_label}]",
            "data.grpo={columns: [pseudo_label], drop_unanimous: true}",
            "training.learning_rate=0.0005",
            "training.batch_size=16",
            "training.trl={beta: 0.0}",
        ],
    ),
}
PREFERENCE = ("sc_dpo", "dpo_spo_gap", "dpo_spo_paper", "dpo_nll", "d2o")
# SUPERVISED gold-reward twins (read the gold answers of the train prompts): the label-free method's
# run with bench_selftrain.gold_overrides applied, i.e. SFT on the samples the gold verifier accepts,
# DPO with a correct sample chosen over a wrong one, GRPO with the gold verifier as the reward. One
# DPO twin stands for every DPO variant (their label-free difference is the loss, not the pairs).
GOLD_TWINS = {"sft_gold": "sft", "dpo_gold": "sc_dpo", "grpo_gold": "ttrl_grpo"}
CHOICES = [*METHODS, *GOLD_TWINS]


def describe(method: str) -> str:
    """The method's row label in the reports."""
    if method in GOLD_TWINS:
        return f"{METHODS[GOLD_TWINS[method]][0]}, gold reward (SUPERVISED)"
    return METHODS[method][0]


def common_overrides(family: str, seed: int, args: argparse.Namespace) -> list[str]:
    """Overrides every method of one (family, seed) shares: model, task, budget, seeds, guard."""
    return [
        f"model.path=builtin:{family}",
        f"task.name={family}",
        "task.level=1",
        f"task.train_size={args.train_size}",
        "task.resample_each_round=true",
        f"task.eval_size={args.eval_size}",
        f"task.seed={seed}",
        f"generation.n={args.n}",
        f"generation.max_tokens={FAMILIES[family]}",
        f"evaluation.n={args.n}",
        f"evaluation.k=[1, {args.n}]",
        f"training.learning_rate={args.dpo_lr}",
        f"loop.rounds={args.rounds}",
        f"loop.seed={seed}",
        "loop.on_empty_data=skip",
        "loop.guard.action=warn",
    ]


def plan(args: argparse.Namespace) -> list[Job]:
    """Every (family, seed, method) run with its validated config (errors surface before any run)."""
    from selfimprove.loop.config import load_config

    jobs = []
    for seed in args.seeds:
        for family in args.families:
            for method in args.methods:
                label_free = GOLD_TWINS.get(method, method)
                overrides = common_overrides(family, seed, args) + METHODS[label_free][1]
                cfg = load_config(args.config, overrides)
                if cfg.supervised:
                    raise SystemExit(f"{label_free}: the label-free method has supervised set")
                if method in GOLD_TWINS:
                    overrides = overrides + gold_overrides(cfg)[0]
                    cfg = load_config(args.config, overrides)
                run_dir = Path(args.run_root) / family / f"s{seed}" / method
                job = Job(family, seed, method, run_dir, overrides, cfg.fingerprint(), cfg.training.method)
                job.status = run_status(run_dir, job.fingerprint, args.rounds)
                jobs.append(job)
    return jobs


LAST_STEPS = 3  # the change of the log-probs at the end of a round: mean over its last logged steps


def _beta(run_dir: Path) -> float:
    """``training.trl.beta`` of the run (its config.yaml; DPO's default 0.1)."""
    import yaml

    path = run_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    return float(((cfg or {}).get("training") or {}).get("trl", {}).get("beta", 0.1))


def logp_trend(run_dir: Path, rnd: int) -> dict[str, float]:
    """How round ``rnd``'s DPO training moved the chosen and rejected log-probs.

    ``<side>_first`` / ``<side>_last``: the summed log-prob under the policy, batch mean, at the
    first and the last logged step (different batches, so their difference mixes the training
    with the batches' content). ``<side>_delta``: log pi - log pi_ref on the same batch (TRL's
    ``rewards/<side>`` over beta; the reference is the policy the round started from), mean of the
    last ``LAST_STEPS`` steps: the change the round's training made, free of batch content.
    """
    path = run_dir / f"round_{rnd:02d}" / "adapter" / "train_result.json"
    if not path.exists():
        return {}
    history = json.loads(path.read_text()).get("history", {})
    out = {}
    beta = _beta(run_dir) if history.get("rewards/chosen") else None
    for side in ("chosen", "rejected"):
        values = history.get(f"logps/{side}") or []
        if values:
            out[f"{side}_first"], out[f"{side}_last"] = float(values[0]), float(values[-1])
        rewards = (history.get(f"rewards/{side}") or [])[-LAST_STEPS:]
        if rewards and beta:
            out[f"{side}_delta"] = sum(rewards) / len(rewards) / beta
    for key in ("loss/degree_paper", "degree_paper/accuracy", "d2o/positives"):
        if history.get(key):
            out[f"{key}_last"] = float(history[key][-1])
    return out


def collect(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One record per (family, seed, method, round) from each run folder."""
    recs = []
    for job in jobs:
        path = job.run_dir / "metrics.jsonl"
        if not path.exists():
            continue
        state = json.loads((job.run_dir / "state.json").read_text())
        for line in path.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                r = int(m["round"])
                recs.append(
                    {
                        "task": job.task,
                        "seed": job.seed,
                        "method": job.arm,
                        "round": r,
                        "finished": bool(state.get("finished")),
                        "metrics": m,
                        "logps": logp_trend(job.run_dir, r) if r > 0 else {},
                        "run_dir": str(job.run_dir),
                    }
                )
    return recs


def _values(recs: Sequence[Mapping[str, Any]], task: str, method: str, rnd: int, key: str) -> list:
    return [
        r["metrics"].get(key) for r in recs if (r["task"], r["method"], r["round"]) == (task, method, rnd)
    ]


def _gain(recs: Sequence[Mapping[str, Any]], task: str, method: str, rnd: int) -> list[float]:
    """Per seed: pass@1 of round ``rnd`` minus the seed's round 0."""
    out = []
    for seed in sorted({r["seed"] for r in recs if r["task"] == task and r["method"] == method}):
        at = {
            r["round"]: r["metrics"].get("eval/pass@1")
            for r in recs
            if (r["task"], r["method"], r["seed"]) == (task, method, seed)
        }
        if at.get(0) is not None and at.get(rnd) is not None:
            out.append(at[rnd] - at[0])
    return out


def task_section(recs: Sequence[Mapping[str, Any]], task: str, methods: Sequence[str], n: int) -> list[str]:
    """The per-round table and the log-prob table of one family."""
    rounds = sorted({r["round"] for r in recs if r["task"] == task})
    last = max(rounds) if rounds else 0
    lines = [
        f"### {task}",
        "",
        f"| method | round | seeds | pass@1 | maj@{n} | pass@{n} | pass@1 gain | train rows | s/round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for rnd in rounds:
            p1 = _values(recs, task, method, rnd, "eval/pass@1")
            if not [v for v in p1 if v is not None]:
                continue
            secs = [
                round_seconds(r["metrics"])
                for r in recs
                if (r["task"], r["method"], r["round"]) == (task, method, rnd)
            ]
            gain = fmt_stat(_gain(recs, task, method, rnd)) if rnd else ""
            rows = _values(recs, task, method, rnd, "data/rows")
            lines.append(
                f"| {method} | {rnd} | {mean_sd(p1)[2]} | {fmt_stat(p1)} "
                f"| {fmt_stat(_values(recs, task, method, rnd, f'eval/maj@{n}'))} "
                f"| {fmt_stat(_values(recs, task, method, rnd, f'eval/pass@{n}'))} | {gain} "
                f"| {fmt_stat(rows, scale=1, digits=0) if rnd else ''} | {fmt_stat(secs, scale=1, digits=0)} |"
            )
    lines += [
        "",
        f"Preference trainers (mean over seeds; round {last} last): Δ chosen / Δ rejected = log π - log "
        f"π_ref of the chosen / rejected responses on the same batch (π_ref: the policy the round started "
        f"from), mean of the last {LAST_STEPS} steps: does the margin grow while the chosen log-prob "
        "falls? first / last: the summed log-prob under the policy at the first and the last step "
        "(other batches).",
        "",
        "| method | round | Δ chosen | Δ rejected | Δ margin | chosen first | chosen last | rejected first "
        "| rejected last | extra |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        if method not in (*PREFERENCE, "dpo_gold"):
            continue
        for rnd in rounds[1:]:
            lp = [
                r["logps"]
                for r in recs
                if (r["task"], r["method"], r["round"]) == (task, method, rnd) and r["logps"]
            ]
            if not lp:
                continue

            def avg(key: str, lp: list = lp) -> float | None:
                return mean_sd([x.get(key) for x in lp])[0]

            deltas = [avg("chosen_delta"), avg("rejected_delta")]
            deltas.append(None if None in deltas else deltas[0] - deltas[1])
            cells = [avg(k) for k in ("chosen_first", "chosen_last", "rejected_first", "rejected_last")]
            extra = "; ".join(
                f"{k.removesuffix('_last')} {avg(k):.2f}"
                for k in ("loss/degree_paper_last", "degree_paper/accuracy_last", "d2o/positives_last")
                if avg(k) is not None
            )
            lines.append(
                f"| {method} | {rnd} | "
                + " | ".join("-" if v is None else f"{v:+.2f}" for v in deltas)
                + " | "
                + " | ".join("-" if v is None else f"{v:.2f}" for v in cells)
                + f" | {extra} |"
            )
    return lines + [""]


def render(recs: Sequence[Mapping[str, Any]], args: argparse.Namespace, meta: Mapping[str, Any]) -> str:
    """The Markdown results file."""
    lines = [
        "# Label-free preference trainers vs SFT and GRPO (same generation budget)",
        "",
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['date']}; **commit:** {meta['commit']}",
        f"- **Machine:** {meta['machine']['nproc']} CPUs, {meta['lscpu']} (`lscpu`), GPU: {meta['machine']['gpus']}; "
        f"load average at the report: {meta['load']}",
        f"- **Budget (every method):** {args.train_size} fresh train prompts x {args.n} samples per round, "
        f"{args.rounds} rounds, eval on {args.eval_size} held-out prompts x {args.n} samples; base config "
        f"`{args.config}` with the method's overrides (benchmarks/bench_preference.py, METHODS).",
        "- Values: percent, mean ± sd over the seeds that reached the round (`seeds` column); round 0 is the "
        "base model. s/round: the sum of the round's stage times (round 0, and the first round of a run "
        "that was extended with a later `--rounds`, include the engine's start-up); other jobs shared the "
        "two cores, so seconds compare only roughly.",
        "",
    ]
    for task in args.families:
        lines += task_section(recs, task, args.methods, args.n)
    return "\n".join(lines) + "\n"


def _lscpu_model() -> str:
    """The ``Model name`` line of ``lscpu``."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")),
        "unknown",
    )


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", default="configs/sc_dpo.yaml", help="base recipe the method overrides apply to"
    )
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--methods", nargs="+", default=CHOICES, choices=CHOICES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("-n", type=int, default=8, help="samples per prompt (train vote and evaluation)")
    p.add_argument(
        "--dpo-lr",
        type=float,
        default=5e-4,
        help="learning rate of the DPO-family methods (5e-3 collapsed self-consistency DPO on arithmetic: "
        "benchmarks/results/preference/)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--run-root", default="/tmp/bench_preference")
    p.add_argument("--out", default="benchmarks/results/preference/preference.md")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    jobs = plan(args)
    bad = [j for j in jobs if j.status == "mismatch"]
    if bad and not args.report_only:  # a report only reads the folders (their configs are in them)
        print(
            f"error: {bad[0].run_dir} was started with other settings; choose another --run-root",
            file=sys.stderr,
        )
        return 2
    if not args.report_only:
        todo = [j for j in jobs if j.status != "done"]
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            codes = list(pool.map(lambda j: execute(j, args.config, poll_seconds=5.0), todo))
        for job, code in zip(todo, codes, strict=True):
            if code:
                print(f"warning: {job.task}/s{job.seed}/{job.arm} exited {code}", file=sys.stderr)
    recs = collect(jobs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/bench_preference.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _git_commit(),
        "machine": machine_info(),
        "lscpu": _lscpu_model(),
        "load": " ".join(f"{x:.2f}" for x in __import__("os").getloadavg()),
    }
    out.write_text(render(recs, args, meta))
    raw = out.with_name(out.stem + "_raw.jsonl")
    raw.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    print(f"wrote {out} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
