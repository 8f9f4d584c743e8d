"""A run's record across rounds: the metrics of every finished round, the collapse guard's decisions, the summary."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

from selfimprove.loop.config import GuardConfig, RunConfig
from selfimprove.loop.folder import RunState, round_dir
from selfimprove.loop.guard import best_round, check_collapse, guard_settings
from selfimprove.runs.io import read_json


def round_history(run_dir: Path, state: RunState) -> list[dict[str, Any]]:
    """Metrics of every finished round, in round order (a round the guard flagged notes "collapse")."""
    out = []
    for r in sorted(int(k) for k in state.data["rounds"]):
        p = round_dir(run_dir, r) / "metrics.json"
        if p.exists() and state.done(r, "metrics"):
            m = read_json(p)
            guard = next((g for g in state.data["guard"] if g["round"] == r), None)
            if guard and guard["collapsed"]:
                m["note"] = (m.get("note", "") + " collapse").strip()
            out.append(m)
    return out


def apply_guard(
    gcfg: GuardConfig,
    state: RunState,
    r: int,
    m: Mapping[str, Any],
    history: Callable[[], list[dict[str, Any]]],
    log: Callable[[str], None],
) -> str | None:
    """The collapse guard on round ``r``'s metrics ``m``: "stop", "rollback" or None.

    The decision is recorded in ``state`` once (a resumed run reuses it); ``history()`` gives the
    reference round (round 0, the base model, when evaluated).
    """
    if not gcfg.enabled or r == 0:
        return None
    if any(g["round"] == r for g in state.data["guard"]):
        decision = next(g for g in state.data["guard"] if g["round"] == r)
    else:
        hist = history()
        ref = next((h for h in hist if h["round"] == 0), hist[0] if hist else None)
        if ref is None or ref["round"] == r:
            return None
        decision = check_collapse(ref, m, round=r, **guard_settings(gcfg)).to_dict()
        state.data["guard"].append(decision)
        state.save()
    if not decision["collapsed"]:
        return None
    log(f"round {r}: collapse guard: " + "; ".join(decision["reasons"]))
    if gcfg.action == "warn":
        return None
    if gcfg.action == "rollback" and state.data.get("rollbacks", 0) < gcfg.max_rollbacks:
        return "rollback"
    return "stop"


def roll_back(state: RunState, r: int, log: Callable[[str], None]) -> None:
    """After the guard flagged round ``r``: the next round starts from the last healthy round's adapter.

    The last healthy round is the latest earlier round with metrics that the guard did not flag
    (the base model when there is none). Recorded once in ``state`` (a resumed run does not roll
    back twice).
    """
    if state.round(r).get("rolled_back"):
        return
    collapsed = {g["round"] for g in state.data["guard"] if g["collapsed"]}
    healthy = next(
        (
            state.round(prev).get("adapter")
            for prev in range(r - 1, 0, -1)
            if prev not in collapsed and state.done(prev, "metrics")
        ),
        None,
    )
    state.data["rollbacks"] = state.data.get("rollbacks", 0) + 1
    state.data["adapter"] = healthy
    state.round(r)["rolled_back"] = True
    state.save()
    log(f"round {r}: rolled back to {healthy or 'the base model'}")


def run_summary(
    config: RunConfig,
    state: RunState,
    hist: list[dict[str, Any]],
    absolute: Callable[[str | None], str | None],
    warnings: list[str],
    skip: Set[str],
) -> dict[str, Any]:
    """Mark ``state`` finished and return the run summary (``absolute`` turns a state adapter path absolute)."""
    collapsed = [g["round"] for g in state.data["guard"] if g["collapsed"]]
    best, score = best_round(hist, collapsed)
    best_adapter = None
    if best is not None and best > 0:
        best_adapter = absolute(state.round(best).get("adapter"))
    state.data["finished"] = True
    state.save()
    return {
        "completed": True,  # written only when the loop has ended (all rounds, or stopped)
        "name": config.name,
        "supervised": config.supervised,
        "rounds_completed": max((h["round"] for h in hist), default=0),
        "stopped": state.data.get("stopped"),
        "best_round": best,
        "best_round_score": score,
        "best_round_rule": "highest mean majority ratio on eval prompts among rounds the guard did not flag (no gold)",
        "best_adapter": best_adapter,
        "final_adapter": absolute(state.data.get("adapter")),
        "collapsed_rounds": collapsed,
        "guard": state.data["guard"],
        # What the start's checks found: warnings, and prompts left out as too long.
        "warnings": list(warnings),
        "skipped_prompts": sorted(skip),
        "history": hist,
    }
