"""The self-training loop: rounds of generate -> score -> build -> train -> evaluate, resumable.

``run(config, run_dir)`` is the Python API behind ``selfimprove run``. Each round:

1. **generate**: ``generation.n`` samples per prompt of the label-free train split with the current
   adapter (the base model in round 1), appended to ``round_XX/rollouts.jsonl`` in whole prompt
   groups (the rollout store), so a kill loses at most the batch in flight.
2. **score**: extract answers, vote (pseudo-label, vote share, majority ratio), compute the
   configured reward terms (TRL call shape) -> ``scores.jsonl``. No gold is loaded in this stage.
3. **build**: SFT rows / DPO pairs / GRPO prompts -> ``train_data.jsonl`` (+ ``build_stats.json``).
   A round without data says why, skips training (the adapter stays) and goes on or stops.
4. **train**: a LoRA adapter into ``adapter.tmp/``, renamed to ``adapter/`` when complete.
5. **evaluate**: samples on the eval split (``eval/rollouts.jsonl``); gold answers are read here
   and only here for pass@1, maj@k and pass@k; label-free diagnostics beside them.
6. **metrics**: ``metrics.json`` per round, ``metrics.jsonl`` for the run, TensorBoard events,
   the collapse guard, and the round table on the terminal.

Every finished stage is recorded in ``state.json`` (written atomically), so ``resume=True`` picks
up after a crash or ``kill -9`` at any point without redoing finished stages. One generator engine
is built per process, lazily (a resumed run whose generation is done never starts one), and
adapters are passed to it by path (hot-swapped).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import ConfigError
from selfimprove.generate.store import RolloutStore, generate_rollouts
from selfimprove.loop.components import (
    build_rewards,
    gold_reward_labels,
    round_sampling,
    task_extractor,
    user_reward_terms,
)
from selfimprove.loop.config import RunConfig
from selfimprove.loop.engines import Engines
from selfimprove.loop.folder import (
    STAGES,
    RunState,
    StartRecord,
    check_run_dir,
    given_objects,
    prepare_run_dir,
    resolve_run_dir,
    round_dir,
)
from selfimprove.loop.history import apply_guard, roll_back, round_history, run_summary
from selfimprove.loop.inputs import check_inputs, eval_split, load_task, train_gold, train_prompts
from selfimprove.loop.round_metrics import round_metrics
from selfimprove.loop.scoring import build_round_data, score_round, train_round
from selfimprove.loop.table import round_table, round_warnings
from selfimprove.models.loading import resolve_model
from selfimprove.runs.folder import folder_lock
from selfimprove.runs.io import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from selfimprove.runs.metrics import MetricsLog


class _Run:
    """One run in one process: the config, the run folder, the lazily built generator."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        progress: bool,
        log: Callable[[str], None],
        generator: Any = None,
        task: Any = None,
        rewards: Sequence[Any] | None = None,
    ):
        """Resolve the model, load the task and check every prompt; nothing is written yet."""
        self.cfg = config
        self.dir = run_dir
        self.state: RunState = None  # type: ignore[assignment]  # set once the run folder is prepared
        self.progress = progress
        self.log = log
        self.model_path = resolve_model(config.model.path, progress=progress)
        self.task = task if task is not None else load_task(config)
        self.user_terms = user_reward_terms(config, rewards) if rewards is not None else None
        self.gold_rewards = (
            gold_reward_labels(config)
            if self.user_terms is None
            else [name for name, _fn, _w, gold in self.user_terms if gold]
        )
        self.skip, self.warnings = check_inputs(config, self.task, self.model_path)
        self.engines = Engines(config, self.model_path, log, policy=generator)
        self.metrics_log = MetricsLog(run_dir, tensorboard=config.output.tensorboard, log=log)

    def close(self) -> None:
        """Shut the engines down and flush TensorBoard."""
        self.engines.close()
        self.metrics_log.close()

    def _generate(self, out_dir: Path, prompts, sampling, adapter: str | None) -> list[dict[str, Any]]:
        """Rollouts into ``out_dir``'s store; the engine starts only if some prompt is unfinished."""
        return generate_rollouts(
            lambda: self.engines.policy,
            prompts,
            sampling,
            RolloutStore(out_dir),
            adapter=self._abs(adapter),
            batch_size=self.cfg.generation.batch_size,
            progress=self.progress,
        )

    def _abs(self, adapter: str | None) -> str | None:
        """An adapter path from state.json (relative to the run folder) as an absolute path."""
        if adapter is None:
            return None
        p = Path(adapter)
        return str(p if p.is_absolute() else (self.dir / p).resolve())

    def reward_terms(self) -> list[tuple[str, Callable[..., list], float, bool]]:
        """(name, function, weight, reads_gold): the functions given to run(), else the config's rewards."""
        return self.user_terms if self.user_terms is not None else build_rewards(self.cfg, self.task)

    def stage_generate(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        prompts = train_prompts(self.cfg, self.task, r, self.skip)
        recs = self._generate(rdir, prompts, round_sampling(self.cfg, "train", r), adapter)
        return {"tokens": sum(int(x.get("completion_tokens") or 0) for x in recs), "rollouts": len(recs)}

    def stage_score(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        rollouts = read_jsonl(rdir / "rollouts.jsonl")
        paraphrase_labels = (
            self._paraphrase_labels(r, rdir, adapter) if self.cfg.scoring.paraphrase.enabled else None
        )
        judge = (lambda recs: self._judge(recs, adapter, r)) if self.cfg.scoring.judge is not None else None
        scored, judge_report = score_round(
            self.cfg,
            self.task,
            r,
            rollouts,
            paraphrase_labels=paraphrase_labels,
            judge=judge,
            terms=self.reward_terms(),
        )
        if judge_report is not None:
            # Read back by round_metrics (judge/failure_rate, judge/position_consistency, ...).
            write_json_atomic(rdir / "judge_report.json", judge_report)
        write_jsonl_atomic(rdir / "scores.jsonl", scored)
        return {"scored": len(scored)}

    def _judge(
        self, rollouts: Sequence[Mapping[str, Any]], adapter: str | None, r: int = 0
    ) -> tuple[list[float | None], dict[str, Any]]:
        """Self-rewarding: the judge (by default the policy with its current adapter) scores every rollout.

        ``pointwise``: a rubric score per rollout. ``pairwise``: per prompt, each rollout's mean
        soft win probability against the prompt's other rollouts (both orders judged, failures
        left out; None without a valid comparison). Returns the scores in rollout order and the
        judge's report (counts, failure rate, position consistency) with NaN as None.
        """
        from selfimprove.score.judging import build_rollout_judge, judge_rollouts

        jc = self.cfg.scoring.judge
        policy = jc.model == "policy"
        gen = self.engines.policy if policy else self.engines.other(jc.model)
        judge, opponents = build_rollout_judge(
            jc.kind,
            gen,
            jc.options,
            adapter=self._abs(adapter) if policy else None,
            seed=self.cfg.loop.seed * 1000 + r,
            progress=self.progress,
            where="scoring.judge.options",
        )
        return judge_rollouts(judge, rollouts, opponents=opponents, seed=f"{self.cfg.loop.seed}|{r}")

    def _paraphrase_labels(self, r: int, rdir: Path, adapter: str | None) -> dict[str, str | None]:
        """Co-Reward: the policy's voted answer on a paraphrase of each train question."""
        from selfimprove.score.paraphrase import paraphrased_prompts, voted_labels

        pc = self.cfg.scoring.paraphrase

        def writer():
            # Made once, by the base model (or paraphrase.model), and kept: every round votes on the same rewrites.
            if pc.model is None:
                return self.engines.policy, lambda: None
            return self.engines.other(pc.model), lambda: self.engines.release(pc.model)

        prompts = train_prompts(self.cfg, self.task, r, self.skip)
        para_prompts = paraphrased_prompts(
            prompts, self.dir / "paraphrases.jsonl", writer, template=pc.template, log=self.log
        )
        if not para_prompts:
            return {}
        sampling = round_sampling(self.cfg, "paraphrase", r)
        recs = self._generate(rdir / "paraphrase", para_prompts, sampling, adapter)
        return voted_labels(recs, task_extractor(self.cfg, self.task))

    def stage_build(self, r: int, rdir: Path) -> dict[str, Any]:
        scored = [s for s in read_jsonl(rdir / "scores.jsonl") if s.get("in_train", True)]
        rows, stats = build_round_data(self.cfg, scored, r, gold_rewards=self.gold_rewards)
        write_jsonl_atomic(rdir / "train_data.jsonl", rows)
        write_json_atomic(rdir / "build_stats.json", stats.to_dict())
        info = {"rows": len(rows), "build": stats.summary()}
        if stats.empty:
            info["empty"] = stats.why_empty()
        return info

    def stage_train(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        rows = read_jsonl(rdir / "train_data.jsonl")
        tmp = rdir / "adapter.tmp"
        final = rdir / "adapter"
        if tmp.exists():
            shutil.rmtree(tmp)  # a half-trained adapter from a killed run: train again
        init = self._abs(adapter) if self.cfg.training.init == "continue" else None
        terms = self.reward_terms() if self.cfg.training.method == "grpo" else ()
        gold = train_gold(self.cfg, self.task, r) if any(g for *_x, g in terms) else None
        result = train_round(
            self.cfg,
            self.model_path,
            rows,
            tmp,
            r,
            adapter_init=init,
            terms=terms,
            gold=gold,
            progress=self.progress,
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        from selfimprove.train.adapters import set_adapter_round

        set_adapter_round(final, r)
        losses = [x for x in result.loss_history if x is not None]
        return {
            # Relative to the run folder, so a moved or copied run folder still resumes.
            "adapter": final.relative_to(self.dir).as_posix(),
            "train_loss": losses[-1] if losses else None,
            "train_loss_first": losses[0] if losses else None,
            "train_steps": result.steps,
            "train_tokens": result.tokens,
        }

    def stage_evaluate(self, r: int, rdir: Path, adapter: str | None) -> dict[str, Any]:
        prompts, _gold = eval_split(self.cfg, self.task, self.skip)
        sampling = round_sampling(self.cfg, "eval", r)
        recs = self._generate(rdir / "eval", [dict(p) for p in prompts], sampling, adapter)
        return {
            "eval_rollouts": len(recs),
            "tokens_eval": sum(int(x.get("completion_tokens") or 0) for x in recs),
        }

    def _stage(self, r: int, stage: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        if self.state.done(r, stage):
            return self.state.round(r)
        self.log(f"round {r}: {stage}")
        start = time.perf_counter()
        info = fn(*args) or {}
        self.state.mark(r, stage, time.perf_counter() - start, **info)
        return self.state.round(r)

    def _finish_round(self, r: int, rdir: Path) -> dict[str, Any]:
        def metrics() -> dict[str, Any]:
            m = round_metrics(self.cfg, self.task, r, rdir, self.state.round(r), self.skip)
            write_json_atomic(rdir / "metrics.json", m)
            return {}

        self._stage(r, "metrics", metrics)
        m = read_json(rdir / "metrics.json")
        # A resumed run passing a finished round writes nothing (no duplicate TensorBoard points).
        self.metrics_log.write(self.history())
        return m

    def history(self) -> list[dict[str, Any]]:
        """Metrics of every finished round, in round order."""
        return round_history(self.dir, self.state)

    def _guard(self, r: int, m: Mapping[str, Any]) -> str | None:
        """Apply the collapse guard to round ``r``; return "stop", "rollback" or None."""
        return apply_guard(self.cfg.loop.guard, self.state, r, m, self.history, self.log)

    def summarize(self) -> dict[str, Any]:
        """Mark the run finished and write summary.json (best round, adapters, guard events, history)."""
        summary = run_summary(self.cfg, self.state, self.history(), self._abs, self.warnings, self.skip)
        write_json_atomic(self.dir / "summary.json", summary)
        return summary

    def run_loop(self) -> dict[str, Any]:
        cfg = self.cfg
        ks = cfg.evaluation.k
        st = self.state
        if cfg.evaluation.base:
            rdir = round_dir(self.dir, 0)
            self._stage(0, "evaluate", self.stage_evaluate, 0, rdir, None)
            self._finish_round(0, rdir)
            self.log(round_table(self.history(), ks))
        for r in range(1, cfg.loop.rounds + 1):
            if st.data.get("stopped"):
                break
            rdir = round_dir(self.dir, r)
            rdir.mkdir(parents=True, exist_ok=True)
            rs = st.round(r)
            # The adapter this round starts from is fixed when the round starts (resume-safe).
            if "adapter_in" not in rs:
                rs["adapter_in"] = st.data.get("adapter")
                st.save()
            adapter_in = rs["adapter_in"]
            self._stage(r, "generate", self.stage_generate, r, rdir, adapter_in)
            self._stage(r, "score", self.stage_score, r, rdir, adapter_in)
            info = self._stage(r, "build", self.stage_build, r, rdir)
            if info.get("rows", 0) == 0:
                if not st.done(r, "train"):
                    self.log(
                        f"round {r}: no training data ({info.get('empty') or info.get('build')}); training skipped"
                    )
                    st.mark(r, "train", 0.0, skipped_training=True, adapter=adapter_in)
                if cfg.loop.on_empty_data == "stop":
                    self._stage(r, "evaluate", dict)
                    self._finish_round(r, rdir)
                    st.data["stopped"] = f"round {r} produced no training data (loop.on_empty_data: stop)"
                    st.save()
                    break
            else:
                self._stage(r, "train", self.stage_train, r, rdir, adapter_in)
            adapter_out = st.round(r).get("adapter")
            self._stage(r, "evaluate", self.stage_evaluate, r, rdir, adapter_out)
            m = self._finish_round(r, rdir)
            if st.data.get("adapter") != adapter_out and not st.round(r).get("rolled_back"):
                st.data["adapter"] = adapter_out
                st.save()
            self.log(round_table(self.history(), ks))
            action = self._guard(r, m)
            if action == "rollback":
                roll_back(st, r, self.log)
            elif action == "stop":
                st.data["stopped"] = f"collapse guard stopped the loop after round {r}"
                st.save()
                break
        return self.summarize()


def run(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    generator: Any = None,
    task: Any = None,
    rewards: Sequence[Callable[..., Any] | tuple[Callable[..., Any], float]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the rounds of ``config`` in ``run_dir``; return the run summary.

    ``config``: a :class:`RunConfig` or a plain dict of the same keys (``load_config`` checks it).
    ``generator``: an already running engine on the same base model (e.g. a ``VLLMGenerator`` with
    LoRA enabled) to use instead of building one; the caller keeps ownership and closes it.
    ``task``: a :class:`selfimprove.tasks.Task` object to use instead of the config's ``task``
    section (its ``make_split``, ``extract`` and ``check``). ``rewards``: reward functions in TRL's
    call shape (or ``(function, weight)`` pairs) to use instead of ``scoring.rewards``. Neither is
    part of the config's hash; the run records their names (task class and name, reward functions
    and weights) and a resume with other ones is refused unless ``force``.
    """
    if isinstance(config, Mapping):
        from selfimprove.loop.config import load_config

        config = load_config(config)
    if not isinstance(config, RunConfig):
        raise ConfigError(
            f"run() takes a RunConfig or a dict (see selfimprove.load_config), got {type(config).__name__}"
        )
    out = resolve_run_dir(config, run_dir)
    logger = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    # Every check before the run folder is touched: the folder (reads only), the model, the task
    # and its data files, every prompt against the model's tokenizer (the config and its options
    # were checked when it loaded). A start refused here leaves the folder as it was, or absent.
    given = given_objects(task, rewards)
    check_run_dir(config, out, resume, force, given)
    runner = _Run(config, out, progress, logger, generator=generator, task=task, rewards=rewards)
    if generator is not None:
        served = Path(str(getattr(generator, "model_dir", getattr(generator, "model", "")))).resolve()
        if served != Path(runner.model_path).resolve():
            raise ConfigError(
                f"the generator serves {served}, but model.path resolves to {runner.model_path}"
            )
    for warning in runner.warnings:
        logger(f"WARNING: {warning}")
    record = StartRecord(out)
    with folder_lock(out) as lock:
        runner.state = prepare_run_dir(config, out, resume, force, command, given)
        try:
            try:
                return runner.run_loop()
            finally:
                runner.close()
        except Exception:
            if record.computed_nothing():
                record.undo(lock)
                logger(f"the start failed before computing anything: {out} is left as it was")
            raise


__all__ = [
    "STAGES",
    "RunState",
    "resolve_run_dir",
    "round_dir",
    "round_table",
    "round_warnings",
    "run",
]
