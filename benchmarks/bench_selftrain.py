"""Label-free self-training vs the SUPERVISED gold-verifier baseline, same budget, through the product runner.

For every task and seed, two runs of ``selfimprove run`` (``selfimprove.loop.runner.run``), each in
its own subprocess (one engine per run, memory freed between runs):

- **labelfree**: the recipe as given (``--config``), with ``task.name``, ``model.path``,
  ``task.seed`` and ``loop.seed`` set for the seed;
- **gold** (SUPERVISED baseline, reads the gold answers of the train split): the identical run
  plus ``supervised: true`` and the ``gold_verifier`` reward; the data rule becomes the gold
  analogue of the recipe's (see ``gold_overrides``):
    - SFT: ``data.sft.select=verifier``, ``verifier_key=gold_verifier`` (keep the samples the gold
      verifier accepts), no majority-ratio filter (rejection sampling with a verifier);
    - DPO: best (correct) vs worst (wrong) by the verifier reward (``strategy: best_vs_worst``,
      ``score_key: reward``, ``min_margin: 0.5``), judge off;
    - GRPO: the verifier is the reward (as ``configs/gt_grpo_baseline.yaml``), judge/paraphrase off.

Both arms start from the same base model and evaluate on the same eval prompts: the runner draws
the eval split from ``task.name``/``task.level``/``task.eval_size``/``task.seed`` only, and samples
it with seed ``loop.seed * 1000 + 500 + round``, so round 0 (the base model) is the same
measurement in both arms. The train prompts of round r (``task.seed`` [+ r]) and the sampling
seeds are the same too; only what is selected/rewarded differs.

Run folders: ``RUN_ROOT/<task>/s<seed>/<arm>`` (subprocess log beside it as ``<arm>.log``). A run
whose ``state.json`` says ``finished`` (and has ``summary.json``) with the same config hash is not
redone; an unfinished one is continued with ``--resume``, so the benchmark can be interrupted and
started again with the same command. A run folder started with other settings is refused (choose
another ``--run-root``). Results: a Markdown file (``--out``) and the raw per-round metrics as JSON
lines beside it (``<out stem>_raw.jsonl``), both rebuilt from the run folders.

``--gold-from RAW.jsonl`` changes only the label-free recipe against an already measured gold arm:
the gold runs are not made, their per-round metrics come from that earlier raw file, and the
comparison is refused unless every seed's round 0 (the base model) is identical in both.

    python benchmarks/bench_selftrain.py                                  # demo recipe, seeds 0 1 2
    python benchmarks/bench_selftrain.py --tasks counting arithmetic --rounds 3 --dry-run
    python benchmarks/bench_selftrain.py --seeds 0 --rounds 1 --set task.train_size=16 \\
        --set task.eval_size=16 --set generation.n=4 --set evaluation.n=4 --run-root /tmp/bst --out /tmp/bst.md
    python benchmarks/bench_selftrain.py --report-only                    # tables from existing runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("labelfree", "gold")
GOLD_REWARD = "gold_verifier"  # registry name in selfimprove.score.rewards (marked supervised there)
# The runner stores each reward term's values under rewards[<term name>] (the name when unique).
GOLD_REWARD_KEY = GOLD_REWARD


# ---------------------------------------------------------------------------------------------
# Planning: overrides per arm, run folders, completion
# ---------------------------------------------------------------------------------------------


def gold_overrides(cfg: Any) -> tuple[list[str], str]:
    """The overrides that turn a label-free config into its SUPERVISED gold-verifier analogue, and a description."""
    method = cfg.training.method
    out = ["supervised=true", f"scoring.rewards=[{{name: {GOLD_REWARD}}}]"]
    if cfg.scoring.min_majority_ratio > 0:
        # The gold arm trains on every prompt: a label-free recipe's abstaining vote must not
        # remove prompts from its ground-truth twin (GRPO drops prompts without a pseudo-label).
        out.append("scoring.min_majority_ratio=0.0")
    if cfg.scoring.judge is not None:
        out.append("scoring.judge=null")
    if cfg.scoring.paraphrase.enabled:
        out.append("scoring.paraphrase.enabled=false")
    if method == "sft":
        out += [
            "data.sft.select=verifier",
            f"data.sft.verifier_key={GOLD_REWARD_KEY}",
            "data.sft.min_majority_ratio=0.0",
        ]
        what = (
            "SFT on the samples the gold verifier accepts (`data.sft.select=verifier`, "
            f"`verifier_key={GOLD_REWARD_KEY}`, no majority-ratio filter): rejection sampling with a verifier"
        )
    elif method == "dpo":
        pairs = int(cfg.data.dpo.get("max_pairs_per_prompt", 1))
        out.append(
            "data.dpo={strategy: best_vs_worst, score_key: reward, min_margin: 0.5, "
            f"max_pairs_per_prompt: {pairs}, degree: null}}"
        )
        what = (
            "DPO with a correct sample (gold verifier 1) as chosen and a wrong one (0) as rejected "
            "(`best_vs_worst` on the verifier reward, margin >= 0.5), no judge"
        )
    else:
        out.append("data.grpo={columns: [pseudo_label]}")
        what = "GRPO with the gold verifier as the reward (as configs/gt_grpo_baseline.yaml)"
    return out, what


def arm_overrides(task: str, model: str, seed: int, rounds: int | None, extra: Sequence[str]) -> list[str]:
    """Overrides shared by both arms of one (task, seed)."""
    out = [f"task.name={task}", f"model.path={model}", f"task.seed={seed}", f"loop.seed={seed}"]
    if rounds is not None:
        out.append(f"loop.rounds={rounds}")
    return out + list(extra)


@dataclass
class Job:
    """One run of the runner: a (task, seed, arm) with its overrides and run folder."""

    task: str
    seed: int
    arm: str
    run_dir: Path
    overrides: list[str]
    fingerprint: str
    method: str
    gold_rule: str = ""
    status: str = field(default="new")  # new | resume | done | mismatch

    def command(self, config: str) -> list[str]:
        """The subprocess command line (``python -m selfimprove.cli run ...``)."""
        cmd = [sys.executable, "-m", "selfimprove.cli", "run", config, *self.overrides]
        cmd += ["--run-dir", str(self.run_dir), "--no-progress", "--no-report"]
        if self.status == "resume":
            cmd.append("--resume")
        return cmd


def run_status(run_dir: Path, fingerprint: str, rounds: int | None = None) -> str:
    """``new`` (no run), ``done`` (finished, same config), ``resume`` (started, same config) or ``mismatch``.

    With ``rounds``, a run that finished fewer rounds (and was not stopped by its guard) is
    ``resume``: ``loop.rounds`` is not in the fingerprint, so the runner extends it.
    """
    state_path = run_dir / "state.json"
    if not state_path.exists():
        return "new"
    state = json.loads(state_path.read_text())
    if state.get("fingerprint") != fingerprint:
        return "mismatch"
    if state.get("finished") and (run_dir / "summary.json").exists():
        done = [int(r) for r, rs in state.get("rounds", {}).items() if "metrics" in rs.get("done", [])]
        if rounds is not None and not state.get("stopped") and max(done, default=0) < rounds:
            return "resume"
        return "done"
    return "resume"


def plan(args: argparse.Namespace) -> list[Job]:
    """Every (task, seed, arm) run with its validated config (validation errors surface here, before any run)."""
    from selfimprove.loop.config import load_config

    base_cfg = load_config(args.config)
    tasks = args.tasks or [base_cfg.task.name]
    models = dict(args.model)
    jobs = []
    for task in tasks:
        model = models.get(task, f"builtin:{task}")
        for seed in args.seeds:
            common = arm_overrides(task, model, seed, args.rounds, args.set)
            lf_cfg = load_config(args.config, common)
            if lf_cfg.supervised:
                raise SystemExit(f"{args.config} is a supervised config; give a label-free recipe")
            gold_extra, rule = gold_overrides(lf_cfg)
            for arm, overrides in (("labelfree", common), ("gold", common + gold_extra)):
                cfg = load_config(args.config, overrides)
                run_dir = Path(args.run_root) / task / f"s{seed}" / arm
                job = Job(task, seed, arm, run_dir, overrides, cfg.fingerprint(), cfg.training.method)
                job.gold_rule = rule
                job.status = run_status(run_dir, job.fingerprint)
                jobs.append(job)
    return jobs


def execute(job: Job, config: str, poll_seconds: float = 1.0) -> int:
    """Run one job as a subprocess writing ``<arm>.log`` beside the run folder; echo the log to stdout.

    The child writes its log file itself and the parent only follows the file, so the run does not
    depend on the benchmark process: killing the benchmark leaves the run going (it used to die
    of SIGPIPE at its next write to the parent's pipe), and the run-folder lock keeps a restarted
    benchmark from writing into it at the same time.
    """
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = job.run_dir.parent / f"{job.arm}.log"
    cmd = job.command(config)
    print(f"\n=== {job.task} seed {job.seed} {job.arm} ({job.status}): {shlex.join(cmd)}", flush=True)
    prefix = f"[{job.task}/s{job.seed}/{job.arm}] "
    with log_path.open("a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} {shlex.join(cmd)}\n")
        log.flush()
        start = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with log_path.open("r", errors="replace") as follow:
        follow.seek(start)
        at_line_start = True
        while True:
            done = proc.poll() is not None  # read after the exit too: the last lines
            for line in follow.read().splitlines(keepends=True):
                sys.stdout.write((prefix if at_line_start else "") + line)
                at_line_start = line.endswith(("\n", "\r"))
            sys.stdout.flush()
            if done:
                return proc.returncode
            time.sleep(poll_seconds)


# ---------------------------------------------------------------------------------------------
# Collecting results from run folders
# ---------------------------------------------------------------------------------------------


def collect(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One record per (task, seed, arm, round) from each run folder's metrics.jsonl and summary.json."""
    recs = []
    for job in jobs:
        metrics_path = job.run_dir / "metrics.jsonl"
        if not metrics_path.exists():
            continue
        summary_path = job.run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        state = json.loads((job.run_dir / "state.json").read_text())
        for line in metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            m = json.loads(line)
            recs.append(
                {
                    "task": job.task,
                    "seed": job.seed,
                    "arm": job.arm,
                    "supervised": job.arm == "gold",
                    "round": int(m["round"]),
                    "run_dir": str(job.run_dir),
                    "finished": bool(state.get("finished")) and bool(summary),
                    "best_round": summary.get("best_round"),
                    "stopped": summary.get("stopped"),
                    "metrics": m,
                }
            )
    return recs


def borrowed_gold(path: Path, recs: Sequence[Mapping[str, Any]], jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """The gold arm's records of ``jobs``' tasks and seeds from an earlier raw JSONL.

    Only comparable when both arms start from the same base model and evaluate the same prompts
    with the same sampling seeds; round 0 (the base model, before any training) is then the same
    measurement, so every seed's round-0 eval metrics must equal those of this run's label-free arm.
    """
    from selfimprove.runs.io import read_jsonl

    if not path.is_file():
        raise ValueError("no such file")
    wanted = {(j.task, j.seed) for j in jobs}
    gold = [
        {**r, "borrowed_from": str(path)}
        for r in read_jsonl(path)  # a corrupt line: InputError naming the file and line
        if r.get("arm") == "gold" and (r.get("task"), r.get("seed")) in wanted
    ]
    missing = sorted(wanted - {(r["task"], r["seed"]) for r in gold})
    if missing:
        raise ValueError(f"no gold-arm rounds for {', '.join(f'{t} seed {s}' for t, s in missing)}")
    for r in gold:
        if r["round"] != 0:
            continue
        mine = next(
            (x for x in recs if (x["task"], x["seed"], x["round"]) == (r["task"], r["seed"], 0)), None
        )
        if mine is None:
            continue  # this seed's label-free run has not evaluated the base model yet
        keys = sorted(k for k in r["metrics"] if k.startswith("eval/") and k in mine["metrics"])
        diff = [k for k in keys if r["metrics"][k] != mine["metrics"][k]]
        if not keys or diff:
            shown = ", ".join(f"{k} {r['metrics'][k]} vs {mine['metrics'][k]}" for k in diff[:3])
            raise ValueError(
                f"{r['task']} seed {r['seed']}: round 0 (the base model) differs from this run's "
                f"({shown or 'no common eval metrics'}): another base model, eval split or sampling seed"
            )
    return gold


def round_seconds(m: Mapping[str, Any]) -> float | None:
    """Seconds of a round: the sum of its ``time/<stage>`` entries (engine start-up included where it happened)."""
    vals = [v for k, v in m.items() if k.startswith("time/") and isinstance(v, (int, float))]
    return float(sum(vals)) if vals else None


# ---------------------------------------------------------------------------------------------
# Arithmetic (pure; tested in tests/test_bench_selftrain.py)
# ---------------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation or None for one value, count) of the non-missing values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return statistics.fmean(vals), sd, len(vals)


def fmt_stat(
    values: Sequence[float | None], scale: float = 100.0, digits: int = 1, of: int | None = None
) -> str:
    """``mean ± sd`` (scaled), ``-`` when missing; ``(n=k)`` when fewer than ``of`` values."""
    mean, sd, n = mean_sd(values)
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    if sd is not None:
        text += f" ± {sd * scale:.{digits}f}"
    if of is not None and n < of:
        text += f" (n={n})"
    return text


def pass1(recs: Sequence[Mapping[str, Any]], task: str, seed: int, arm: str, rnd: int) -> float | None:
    """eval/pass@1 of one round of one run, None when absent."""
    for r in recs:
        if (r["task"], r["seed"], r["arm"], r["round"]) == (task, seed, arm, rnd):
            return r["metrics"].get("eval/pass@1")
    return None


def gains(recs: Sequence[Mapping[str, Any]], task: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Per arm and seed: pass@1 gain over round 0 after the last round, and at the run's label-free best round."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    runs = sorted({(r["arm"], r["seed"]) for r in recs if r["task"] == task})
    for arm, seed in runs:
        rs = [r for r in recs if (r["task"], r["arm"], r["seed"]) == (task, arm, seed)]
        base = pass1(recs, task, seed, arm, 0)
        last = max(r["round"] for r in rs)
        best = rs[0].get("best_round")
        info: dict[str, Any] = {"last_round": last, "best_round": best, "base": base}
        end = pass1(recs, task, seed, arm, last)
        info["gain_last"] = end - base if (end is not None and base is not None and last > 0) else None
        at_best = pass1(recs, task, seed, arm, best) if best is not None else None
        info["gain_best"] = at_best - base if (at_best is not None and base is not None) else None
        out.setdefault(arm, {})[seed] = info
    return out


def recovery(
    lf: Mapping[int, float | None], gold: Mapping[int, float | None]
) -> tuple[float | None, dict[int, float | None]]:
    """Label-free gain as a share of the gold gain: ratio of the means over common seeds, and per seed.

    A ratio is None where the gold gain is not positive (no gain to recover).
    """
    seeds = sorted(s for s in set(lf) & set(gold) if lf[s] is not None and gold[s] is not None)
    per_seed = {s: (lf[s] / gold[s] if gold[s] > 0 else None) for s in seeds}  # type: ignore[operator]
    if not seeds:
        return None, per_seed
    mean_gold = statistics.fmean(gold[s] for s in seeds)  # type: ignore[misc]
    mean_lf = statistics.fmean(lf[s] for s in seeds)  # type: ignore[misc]
    return (mean_lf / mean_gold if mean_gold > 0 else None), per_seed


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:+.1f}" if signed else f"{v * 100:.0f}%"


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def task_section(
    recs: Sequence[Mapping[str, Any]], task: str, kmax: int, n_seeds: int, gold_rule: str
) -> list[str]:
    """The table and gain lines of one task."""
    rs = [r for r in recs if r["task"] == task]
    seeds = sorted({r["seed"] for r in rs})
    lines = [f"## {task} (seeds {', '.join(map(str, seeds))})", ""]
    lines.append(
        f"Arms: **labelfree** = the recipe as given; **gold** = SUPERVISED baseline (reads gold labels): {gold_rule}. "
        "Values: percent (rows and seconds: counts), mean ± sd over seeds; `(n=k)`: only k seeds reached the round."
    )
    lines.append("")
    lines.append(
        f"| arm | round | pass@1 | maj@{kmax} | pass@{kmax} | majority ratio (eval) | label acc (train) "
        "| train rows | s/round |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for arm in ARMS:
        rounds = sorted({r["round"] for r in rs if r["arm"] == arm})
        for rnd in rounds:
            sel = [r["metrics"] for r in rs if r["arm"] == arm and r["round"] == rnd]
            name = "gold (SUPERVISED)" if arm == "gold" else arm
            lines.append(
                f"| {name} | {rnd} "
                f"| {fmt_stat([m.get('eval/pass@1') for m in sel], of=n_seeds)} "
                f"| {fmt_stat([m.get(f'eval/maj@{kmax}') for m in sel])} "
                f"| {fmt_stat([m.get(f'eval/pass@{kmax}') for m in sel])} "
                f"| {fmt_stat([m.get('eval/majority_ratio') for m in sel])} "
                f"| {fmt_stat([m.get('train/label_accuracy') for m in sel])} "
                f"| {fmt_stat([m.get('data/rows') for m in sel], scale=1, digits=0)} "
                f"| {fmt_stat([round_seconds(m) for m in sel], scale=1, digits=0)} |"
            )
    lines.append("")
    g = gains(recs, task)
    lf, gd = g.get("labelfree", {}), g.get("gold", {})
    for arm, per in (("labelfree", lf), ("gold (SUPERVISED)", gd)):
        if not per:
            continue
        head = _gain_head([per[s]["gain_last"] for s in sorted(per)])
        lasts = ", ".join(
            f"s{s}: {_pct(per[s]['gain_last'], True)} (round {per[s]['last_round']})" for s in sorted(per)
        )
        lines.append(f"- {arm}: pass@1 gain after the last round: {head} points (per seed: {lasts})")
    if lf:
        head = _gain_head([lf[s]["gain_best"] for s in sorted(lf)])
        per = ", ".join(
            f"s{s}: {_pct(lf[s]['gain_best'], True)} (round {lf[s]['best_round']})" for s in sorted(lf)
        )
        lines.append(
            f"- labelfree at the runner's label-free best round (summary.json `best_round`: highest eval "
            f"majority ratio among rounds the guard did not flag; no gold): {head} points (per seed: {per})"
        )
    if lf and gd:
        for label, key in (
            ("after the last round", "gain_last"),
            ("at its label-free best round", "gain_best"),
        ):
            ratio, per_seed = recovery(
                {s: v[key] for s, v in lf.items()}, {s: v["gain_last"] for s, v in gd.items()}
            )
            per = ", ".join(f"s{s}: {_pct(v)}" for s, v in per_seed.items())
            lines.append(
                f"- label-free {label} recovers **{_pct(ratio)}** of the gold arm's mean pass@1 gain "
                f"(gold after its last round; ratio of the means; per seed: {per or '-'}; `-` where the gold gain is not positive)"
            )
    # Round 0 is the same measurement in both arms (same base model, prompts and seeds): check.
    for seed in seeds:
        a, b = pass1(recs, task, seed, "labelfree", 0), pass1(recs, task, seed, "gold", 0)
        if a is not None and b is not None and abs(a - b) > 1e-9:
            lines.append(
                f"- note: seed {seed}: round 0 pass@1 differs between the arms ({a:.4f} vs {b:.4f}): "
                "the engine's sampling was not reproducible"
            )
    stopped = sorted({(r["arm"], r["seed"], r["stopped"]) for r in rs if r.get("stopped")})
    for arm, seed, why in stopped:
        lines.append(f"- {arm} seed {seed} stopped early: {why}")
    unfinished = sorted({(r["arm"], r["seed"]) for r in rs if not r["finished"]})
    for arm, seed in unfinished:
        lines.append(f"- {arm} seed {seed}: run not finished (partial results)")
    lines.append("")
    return lines


def _gain_head(vals: Sequence[float | None]) -> str:
    """Mean ± sd of per-seed pass@1 gains in signed points ("-" when there is none)."""
    mean, sd, _n = mean_sd(vals)
    spread = f" ± {sd * 100:.1f}" if sd is not None else ""
    return f"{mean * 100:+.1f}{spread}" if mean is not None else "-"


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, load average, GPU names (nvidia-smi when present)."""
    from selfimprove.models.base_model import cpu_name

    cpu = cpu_name()
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpus = ""
    return {"nproc": nproc, "cpu": cpu, "gpus": gpus.replace("\n", "; ") or "none"}


def render(
    recs: Sequence[Mapping[str, Any]],
    jobs: Sequence[Job],
    meta: Mapping[str, Any],
) -> str:
    """The whole Markdown file."""
    lines = ["# Label-free self-training vs the gold-verifier baseline (through `selfimprove run`)", ""]
    lines.append(f"- **Command:** `{meta['command']}`")
    lines.append(f"- **Date:** {meta['start']} to {meta['end']} (UTC)")
    m = meta["machine"]
    lines.append(
        f"- **Machine:** {m['nproc']} CPUs (`nproc`), {m['cpu']}, GPU: {m['gpus']}; load average "
        f"(1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}"
    )
    if meta.get("packages"):
        pk = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
        lines.append(f"- **Packages** (manifest.json of `{meta['packages_from']}`): {pk}")
    lines.append(
        f"- **Config:** `{meta['config']}`; extra overrides on both arms: `{' '.join(meta['extra']) or '-'}`"
    )
    lines.append(
        f"- **Run folders:** `{meta['run_root']}/<task>/s<seed>/<arm>`; raw per-round metrics: `{meta['raw']}`"
    )
    if meta.get("gold_from"):
        lines.append(
            f"- **Gold arm not rerun:** its per-round metrics come from `{meta['gold_from']}` (an earlier "
            "run of this benchmark; its round 0 equals this run's on every seed: same base model, eval "
            "prompts and sampling seeds). Its overrides are that file's; the train prompts of each "
            "round are drawn from the same seeds."
        )
    lines.append(
        "- Seconds per round = sum of the round's `time/<stage>` (generate, score, build, train, evaluate); "
        "each run starts its own engine, so round 0 (and round 1 of a resumed run) include engine start-up."
    )
    lines.append("")
    done = {(j.task, j.seed, j.arm) for j in jobs}
    for task in dict.fromkeys(j.task for j in jobs):
        first = next(j for j in jobs if j.task == task)
        lf_job = next((j for j in jobs if j.task == task and j.arm == "labelfree"), first)
        gold_job = next((j for j in jobs if j.task == task and j.arm == "gold"), first)
        gold_extra = [o for o in gold_job.overrides if o not in lf_job.overrides]
        n_seeds = len({s for (t, s, _a) in done if t == task})
        kmax = meta["kmax"].get(task, 8)
        if not any(r["task"] == task for r in recs):
            lines += [f"## {task}", "", "No finished rounds yet.", ""]
            continue
        lines += task_section(recs, task, kmax, n_seeds, first.gold_rule)
        gold_text = (
            f"gold: see `{meta['gold_from']}`"
            if meta.get("gold_from")
            else f"gold adds `{' '.join(gold_extra)}`"
        )
        lines.append(
            f"Overrides (seed {lf_job.seed} shown; the seed keys change per seed): labelfree "
            f"`{' '.join(lf_job.overrides)}`; {gold_text}."
        )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _model_arg(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(
            f"--model {text!r}: expected TASK=PATH (e.g. counting=builtin:counting)"
        )
    return task, path


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/demo.yaml", help="a label-free recipe YAML")
    p.add_argument(
        "--tasks", nargs="+", default=None, help="bundled task families (default: the config's task)"
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="task.seed and loop.seed of each run"
    )
    p.add_argument("--rounds", type=int, default=None, help="loop.rounds (default: the config's)")
    p.add_argument(
        "--model",
        type=_model_arg,
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="base model of a task (repeatable; default builtin:<task>)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="key.sub=value",
        help="extra override for both arms (repeatable)",
    )
    p.add_argument(
        "--run-root", default="runs/bench_selftrain", help="run folders go to RUN_ROOT/<task>/s<seed>/<arm>"
    )
    p.add_argument("--out", default="benchmarks/results/selftrain.md", help="Markdown results file")
    p.add_argument(
        "--raw", default=None, help="raw per-round JSONL (default: beside --out, <stem>_raw.jsonl)"
    )
    p.add_argument(
        "--gold-from",
        default=None,
        metavar="RAW.jsonl",
        help="do not run the gold arm: take its per-round metrics from an earlier raw JSONL of this "
        "benchmark (same tasks, seeds and base models; refused unless every seed's round 0 equals)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands (and each run's state) and exit"
    )
    p.add_argument(
        "--report-only", action="store_true", help="run nothing; write the results from the run folders"
    )
    args = p.parse_args(argv)

    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = _loadavg()
    from selfimprove.errors import ConfigError, InputError

    try:
        jobs = plan(args)
    except ConfigError as exc:
        print(f"bench_selftrain: {exc}", file=sys.stderr)
        return 2
    if args.gold_from:
        jobs = [j for j in jobs if j.arm != "gold"]
    bad = [j for j in jobs if j.status == "mismatch"]
    for j in jobs if args.dry_run else bad:
        print(f"# {j.task} seed {j.seed} {j.arm}: {j.status}")
        print(shlex.join(j.command(args.config)))
    if args.dry_run:
        return 0
    if bad:
        print(
            f"{len(bad)} run folder(s) above were started with other settings (config hash differs); "
            "choose another --run-root or remove them",
            file=sys.stderr,
        )
        return 2
    failed = []
    if not args.report_only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for job in jobs:
            if job.status == "done":
                print(
                    f"=== {job.task} seed {job.seed} {job.arm}: finished already ({job.run_dir})", flush=True
                )
                continue
            rc = execute(job, args.config)
            if rc != 0:
                print(f"=== {job.task} seed {job.seed} {job.arm}: failed (exit {rc})", flush=True)
                failed.append(job)
    from selfimprove.loop.config import load_config

    recs = collect(jobs)
    if args.gold_from:
        try:
            recs += borrowed_gold(Path(args.gold_from), recs, jobs)
        except (ValueError, InputError) as exc:
            print(f"bench_selftrain: --gold-from {args.gold_from}: {exc}", file=sys.stderr)
            return 2
    out = Path(args.out)
    raw = Path(args.raw) if args.raw else out.with_name(f"{out.stem}_raw.jsonl")
    kmax = {}
    for j in jobs:
        if j.task not in kmax:
            kmax[j.task] = max(load_config(args.config, j.overrides).evaluation.k)
    packages, packages_from = {}, ""
    for j in jobs:
        manifest = j.run_dir / "manifest.json"
        if manifest.exists():
            packages = json.loads(manifest.read_text()).get("packages", {})
            packages_from = str(j.run_dir)
            break
    meta = {
        "command": command,
        "start": start,
        "end": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": _loadavg(),
        "packages": packages,
        "packages_from": packages_from,
        "config": args.config,
        "extra": args.set,
        "run_root": args.run_root,
        "raw": str(raw),
        "kmax": kmax,
        "gold_from": args.gold_from,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(recs, jobs, meta))
    raw.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    print(f"results: {out}; raw per-round metrics: {raw}")
    if failed:
        print("failed runs: " + ", ".join(f"{j.task}/s{j.seed}/{j.arm}" for j in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
