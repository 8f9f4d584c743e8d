"""The prompt-optimization report: Markdown + HTML from a workspace's files.

It reads only what the run wrote (``summary.json``, ``cost.json``, ``heldout.json``,
``config.yaml``, ``manifest.json``), so it works on a finished or stopped run and on a workspace
copied from another machine.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.runs.io import read_json, write_text_atomic
from selfimprove.runs.report import html_page, html_table, markdown_table


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _short(text: str | None, n: int = 70) -> str:
    if not text:
        return "-"
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 3] + "..."


def round_rows(history: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The per-round table: decision, win rate of the challenger, judge counts, cost, prompt."""
    rows = [
        [
            "round",
            "decision",
            "P(challenger better)",
            "challenger wins",
            "incumbent wins",
            "ties",
            "judged / compared",
            "failed judge calls",
            "optimizer attempts",
            "calls",
            "tokens",
            "prompt",
        ]
    ]
    for h in history:
        judged = h.get("judged")
        rows.append(
            [
                str(h["round"]),
                h["decision"],
                _num(h.get("preference_challenger")),
                _num(h.get("wins_challenger")),
                _num(h.get("wins_incumbent")),
                _num(h.get("ties")),
                f"{judged} / {h['items']}" if judged is not None else "-",
                _num(h.get("judge_failed_calls")),
                _num(h.get("proposal_attempts")),
                _num(h.get("calls")),
                _num(h.get("tokens")),
                _short(h.get("prompt")).replace("|", "/"),
            ]
        )
    return rows


def cost_rows(cost: Mapping[str, Any]) -> list[list[str]]:
    """Calls and tokens per role (and money when prices were given)."""
    rows = [["role", "calls", "failed calls", "input tokens", "output tokens", "money"]]
    for role, c in cost.get("by_role", {}).items():
        money = c.get("money")
        rows.append(
            [
                role,
                str(c["calls"]),
                str(c["failed_calls"]),
                str(c["prompt_tokens"]),
                str(c["completion_tokens"]),
                "-" if money is None else f"{money:.4f}",
            ]
        )
    t = cost.get("total")
    if t:
        money = t.get("money")
        rows.append(
            [
                "total",
                str(t["calls"]),
                str(t["failed_calls"]),
                str(t["prompt_tokens"]),
                str(t["completion_tokens"]),
                "-" if money is None else f"{money:.4f}",
            ]
        )
    return rows


def write_report(workspace: str | Path) -> dict[str, str]:
    """Write ``report.md`` and ``report.html`` for a workspace; return their paths."""
    d = Path(workspace)
    if not (d / "summary.json").exists():
        raise InputError(f"{d} is not a prompt-optimization workspace with results: summary.json is missing")
    summary = read_json(d / "summary.json")
    cost = read_json(d / "cost.json") if (d / "cost.json").exists() else {}
    heldout = read_json(d / "heldout.json") if (d / "heldout.json").exists() else None
    manifest = read_json(d / "manifest.json") if (d / "manifest.json").exists() else {}
    config_text = (d / "config.yaml").read_text(encoding="utf-8") if (d / "config.yaml").exists() else ""
    history = summary.get("history", [])
    name = summary.get("name") or d.name

    facts = [
        f"Workspace: `{d}`",
        f"Rounds completed: {summary.get('rounds_completed')} of {summary.get('rounds_planned')}",
        f"Stopped early: {summary['stopped']}" if summary.get("stopped") else "Stopped early: no",
        f"Best prompt: round {summary.get('best_round')}",
        "Reference-guided: yes (the optimizer saw reference answers)"
        if summary.get("reference_guided")
        else "Reference-free: no reference answer reached the optimizer or the judge",
        f"Config hash: `{manifest.get('config_hash', '?')}`; packages: "
        + ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items()),
    ]
    held = []
    if heldout and heldout.get("questions"):
        held = [
            f"On {heldout['questions']} held-out questions ({heldout['scorer']}): initial prompt "
            f"{_pct(heldout['initial']['pass_rate'])} ({heldout['initial']['passed']}/{heldout['initial']['scored']}), "
            f"best prompt (round {heldout['best_round']}) {_pct(heldout['best']['pass_rate'])} "
            f"({heldout['best']['passed']}/{heldout['best']['scored']})."
        ]
    rounds = round_rows(history)
    costs = cost_rows(cost)

    md = [f"# Prompt optimization report: {name}", ""]
    md += [*(f"- {h}" for h in held), ""] if held else []
    md += ["## Best prompt", "", "```text", summary.get("best_prompt", "").rstrip(), "```", ""]
    md += ["## Initial prompt", "", "```text", summary.get("initial_prompt", "").rstrip(), "```", ""]
    md += [
        "## Rounds",
        "",
        "P(challenger better): the mean judge preference for the round's prompt over the incumbent on "
        "the sample questions, both orders (0.5 = even).",
        "",
        markdown_table(rounds),
        "",
    ]
    md += ["## Cost", "", markdown_table(costs), ""] if len(costs) > 1 else []
    md += ["## Run", "", *(f"- {f}" for f in facts), ""]
    md += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]

    body = [f"<h1>Prompt optimization report: {html.escape(name)}</h1>"]
    if held:
        body.append("<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in held) + "</ul>")
    body.append(f"<h2>Best prompt</h2><pre>{html.escape(summary.get('best_prompt', ''))}</pre>")
    body.append(f"<h2>Initial prompt</h2><pre>{html.escape(summary.get('initial_prompt', ''))}</pre>")
    body.append("<h2>Rounds</h2>" + html_table(rounds))
    if len(costs) > 1:
        body.append("<h2>Cost</h2>" + html_table(costs))
    body.append(
        "<h2>Run</h2><ul>" + "".join(f"<li>{html.escape(f.replace('`', ''))}</li>" for f in facts) + "</ul>"
    )
    body.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>")

    md_path, html_path = d / "report.md", d / "report.html"
    write_text_atomic(md_path, "\n".join(md))
    write_text_atomic(html_path, html_page(f"Prompt optimization: {name}", "\n".join(body)))
    return {"md": str(md_path), "html": str(html_path)}


__all__ = ["cost_rows", "round_rows", "write_report"]
