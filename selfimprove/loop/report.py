"""The run report: Markdown + HTML with plots of every round, written from a run folder's files.

It reads only what the runner wrote (``metrics.jsonl``, ``summary.json``, ``config.yaml``,
``manifest.json``), so it works on a finished, stopped or still-running run, and on a run folder
copied from another machine.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.errors import InputError
from selfimprove.runs.io import read_json, read_jsonl, write_bytes_atomic, write_text_atomic
from selfimprove.runs.report import html_table as _html_table
from selfimprove.runs.report import markdown_table as _md_table

# (metric key, legend label) per plot.
ACCURACY_PLOT = "accuracy.png"
AGREEMENT_PLOT = "agreement.png"
LENGTH_PLOT = "length.png"
TRAINING_PLOT = "training.png"


def _ks(history: Sequence[Mapping[str, Any]]) -> list[int]:
    ks = set()
    for m in history:
        for key in m:
            if key.startswith("eval/maj@"):
                ks.add(int(key.split("@")[1]))
    return sorted(ks)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for m in history:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(int(m["round"]))
            ys.append(float(v))
    return xs, ys


def _plot(
    path: Path,
    history: Sequence[Mapping[str, Any]],
    lines: Sequence[tuple[str, str]],
    title: str,
    ylabel: str,
    *,
    best: int | None,
    collapsed: Sequence[int],
    unit_range: bool = False,
    percent: bool = False,
    hline: tuple[float, str] | None = None,
) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    drawn = False
    for key, label in lines:
        xs, ys = _series(history, key)
        if not xs:
            continue
        if percent:
            ys = [100 * y for y in ys]
        # Train-split diagnostics are dashed: they are not held-out numbers.
        style = "--" if key.startswith("train/") else "-"
        ax.plot(xs, ys, marker="o", linewidth=2, linestyle=style, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y:.0f}" if percent else f"{y:.2f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    rounds = sorted({int(m["round"]) for m in history})
    if hline is not None:
        y = 100 * hline[0] if percent else hline[0]
        ax.axhline(y, color="grey", linestyle=":", linewidth=1.5, label=hline[1])
    for r in collapsed:
        ax.axvspan(r - 0.4, r + 0.4, color="red", alpha=0.12, lw=0)
    if best is not None:
        ax.axvline(
            best, color="green", linestyle="--", linewidth=1.2, label=f"best round (label-free): {best}"
        )
    ax.set_xticks(rounds)
    ax.set_xlabel("round (0 = base model)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if unit_range:
        ax.set_ylim(-3 if percent else -0.03, 103 if percent else 1.03)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return True


def _table(
    history: Sequence[Mapping[str, Any]], ks: Sequence[int], best: int | None, collapsed: Sequence[int]
) -> list[list[str]]:
    kmax = max(ks) if ks else None
    cols = [("round", "round"), ("pass@1", "eval/pass@1")]
    if kmax:
        cols += [(f"maj@{kmax}", f"eval/maj@{kmax}"), (f"pass@{kmax}", f"eval/pass@{kmax}")]
    cols += [
        ("majority ratio", "eval/majority_ratio"),
        ("answer entropy", "eval/answer_entropy"),
        ("distinct answers", "eval/distinct_answers"),
        ("mean length", "eval/mean_length"),
        ("pseudo-label acc.", "train/label_accuracy"),
        ("train rows", "data/rows"),
        ("train loss", "train/loss"),
        ("note", "note"),
    ]
    rows = [[c[0] for c in cols]]
    for m in history:
        row = []
        for _title, key in cols:
            v = m.get(key)
            if key == "note":
                notes = [str(v)] if v else []
                if m["round"] == best:
                    notes.append("best (label-free)")
                if m["round"] in collapsed and "collapse" not in " ".join(notes):
                    notes.append("collapse")
                row.append("; ".join(notes))
            elif v is None:
                row.append("-")
            elif key in ("round", "data/rows"):
                row.append(str(int(v)))
            elif isinstance(v, float):
                row.append(f"{v:.3f}")
            else:
                row.append(str(v))
        rows.append(row)
    return rows


def _headline(history: Sequence[Mapping[str, Any]], ks: Sequence[int], best: int | None) -> list[str]:
    base = next((m for m in history if m["round"] == 0), None)
    last = history[-1] if history else None
    out = []
    if (
        base is not None
        and last is not None
        and last is not base
        and "eval/pass@1" in base
        and "eval/pass@1" in last
    ):
        d = 100 * (last["eval/pass@1"] - base["eval/pass@1"])
        out.append(
            f"Held-out pass@1 went from {100 * base['eval/pass@1']:.1f}% (base model) to "
            f"{100 * last['eval/pass@1']:.1f}% after round {last['round']} ({d:+.1f} points)."
        )
        for k in ks[-1:]:
            key = f"eval/maj@{k}"
            if key in base and key in last:
                out.append(f"maj@{k}: {100 * base[key]:.1f}% -> {100 * last[key]:.1f}%.")
        const = base.get("eval/constant_baseline")
        if isinstance(const, float):
            out.append(
                f"Always giving the eval split's most common answer would score {100 * const:.1f}%: "
                "pass@1 near that line means the model is not reading the question."
            )
    if best is not None:
        chosen = next((m for m in history if m["round"] == best), None)
        if chosen and "eval/pass@1" in chosen:
            out.append(
                f"The guard's label-free pick is round {best} (pass@1 {100 * chosen['eval/pass@1']:.1f}%, "
                f"checked against gold only here, after the choice)."
            )
    return out


def _warnings(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The run's warnings (from its start's checks) and every round's (truncated votes, ...), once each."""
    from selfimprove.loop.runner import round_warnings

    out = [str(w) for w in summary.get("warnings", [])]
    for m in history:
        for w in round_warnings(m):
            # The start already explained an empty eval split, with its cause.
            same = w.split(":")[0]
            if not any(x.startswith(same) for x in out):
                out.append(w)
    return out


def write_report(run_dir: str | Path) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and ``report/*.png`` for a run folder; return their paths."""
    d = Path(run_dir)
    metrics_path = d / "metrics.jsonl"
    if not metrics_path.exists():
        raise InputError(f"{d} is not a run folder with results: {metrics_path.name} is missing")
    history = sorted(read_jsonl(metrics_path), key=lambda m: m["round"])
    if not history:
        raise InputError(f"{metrics_path}: no finished round yet")
    summary = read_json(d / "summary.json") if (d / "summary.json").exists() else {}
    manifest = read_json(d / "manifest.json") if (d / "manifest.json").exists() else {}
    config_text = (d / "config.yaml").read_text() if (d / "config.yaml").exists() else ""
    best = summary.get("best_round")
    collapsed = summary.get("collapsed_rounds", [])
    ks = _ks(history)
    kmax = max(ks) if ks else None

    plots_dir = d / "report"
    plots: list[tuple[str, str]] = []
    acc_lines = [("eval/pass@1", "pass@1")]
    if kmax:
        acc_lines += [(f"eval/maj@{kmax}", f"maj@{kmax}"), (f"eval/pass@{kmax}", f"pass@{kmax}")]
    acc_lines.append(("train/label_accuracy", "pseudo-label accuracy (train split)"))
    common = {"best": best, "collapsed": collapsed}
    const = history[0].get("eval/constant_baseline")
    if _plot(
        plots_dir / ACCURACY_PLOT,
        history,
        acc_lines,
        "Held-out accuracy per round",
        "% correct",
        unit_range=True,
        percent=True,
        hline=(const, "constant answer (most common gold)") if isinstance(const, float) else None,
        **common,
    ):
        plots.append((ACCURACY_PLOT, "Accuracy on the evaluation split (gold used only for this)"))
    if _plot(
        plots_dir / AGREEMENT_PLOT,
        history,
        [
            ("eval/majority_ratio", "majority ratio"),
            ("eval/answer_entropy", "answer entropy (nats)"),
            ("eval/no_answer_rate", "no-answer rate"),
            ("eval/answer_diversity", "distinct majority answers / prompt"),
        ],
        "Self-agreement per round (label-free)",
        "value",
        **common,
    ):
        plots.append(
            (
                AGREEMENT_PLOT,
                "Majority ratio and answer entropy (a policy that becomes consistent shows ratio -> 1, entropy -> 0;"
                " one whose answer stops depending on the question also loses distinct majority answers)",
            )
        )
    if _plot(
        plots_dir / LENGTH_PLOT,
        history,
        [
            ("eval/mean_length", "mean completion length (tokens)"),
            ("eval/distinct_answers", "distinct answers per prompt"),
        ],
        "Length and diversity per round",
        "value",
        **common,
    ):
        plots.append((LENGTH_PLOT, "Mean completion length and distinct answers per prompt"))
    if _plot(
        plots_dir / TRAINING_PLOT,
        history,
        [("train/loss", "train loss (last step)"), ("train/reward_mean", "mean reward")],
        "Training per round",
        "value",
        **common,
    ):
        plots.append((TRAINING_PLOT, "Training loss and mean reward of the round's rollouts"))

    table = _table(history, ks, best, collapsed)
    name = summary.get("name") or manifest.get("name") or d.name
    supervised = summary.get("supervised", manifest.get("supervised", False))
    headline = _headline(history, ks, best)
    warnings = _warnings(summary, history)
    guard_lines = []
    for g in summary.get("guard", []):
        if g.get("collapsed"):
            guard_lines.append(f"round {g['round']}: " + "; ".join(g["reasons"]))
    facts = [
        f"Run folder: `{d}`",
        f"Rounds completed: {summary.get('rounds_completed', history[-1]['round'])}",
        f"Stopped early: {summary['stopped']}" if summary.get("stopped") else "Stopped early: no",
        f"Best round (label-free rule: {summary.get('best_round_rule', 'n/a')}): {best}",
        f"Best adapter: `{summary.get('best_adapter')}`"
        if summary.get("best_adapter")
        else "Best adapter: the base model",
        f"Config hash: `{manifest.get('config_hash', '?')}`; packages: "
        + ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items()),
    ]

    md = [f"# Self-training report: {name}", ""]
    if supervised:
        md += ["> **SUPERVISED baseline**: this run's reward used gold labels.", ""]
    else:
        md += [
            "Label-free run: training never saw a gold label; gold answers were used only to evaluate.",
            "",
        ]
    md += [*(f"- {h}" for h in headline), ""] if headline else []
    md += ["## Warnings", "", *(f"- **{w}**" for w in warnings), ""] if warnings else []
    md += ["## Rounds", "", _md_table(table), ""]
    md += ["## Plots", ""]
    for fname, caption in plots:
        md += [f"![{caption}](report/{fname})", "", f"*{caption}*", ""]
    md += ["## Collapse guard", ""]
    md += [f"- {x}" for x in guard_lines] if guard_lines else ["No round was flagged."]
    md += ["", "## Run", "", *(f"- {f}" for f in facts), ""]
    md += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    md_text = "\n".join(md)

    css = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:6px 0}"
        "pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}.sup{background:#fee;padding:8px;border:1px solid #c00}"
        ".plots{display:grid;grid-template-columns:1fr 1fr;gap:10px}figcaption{font-size:12px;color:#555}"
        ".warn{background:#fff6e0;border:1px solid #d90;padding:8px 8px 8px 28px}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title><style>{css}</style></head><body>"
    ]
    parts.append(f"<h1>Self-training report: {html.escape(name)}</h1>")
    if supervised:
        parts.append("<p class='sup'><b>SUPERVISED baseline</b>: this run's reward used gold labels.</p>")
    else:
        parts.append(
            "<p>Label-free run: training never saw a gold label; gold answers were used only to evaluate.</p>"
        )
    if headline:
        parts.append("<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in headline) + "</ul>")
    if warnings:
        parts.append(
            "<h2>Warnings</h2><ul class='warn'>"
            + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
            + "</ul>"
        )
    parts.append("<h2>Rounds</h2>" + _html_table(table))
    parts.append("<h2>Plots</h2><div class='plots'>")
    for fname, caption in plots:
        parts.append(
            f"<figure><img src='report/{fname}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</div><h2>Collapse guard</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in guard_lines) + "</ul>"
        if guard_lines
        else "<p>No round was flagged.</p>"
    )
    parts.append(
        "<h2>Run</h2><ul>" + "".join(f"<li>{html.escape(f.replace('`', ''))}</li>" for f in facts) + "</ul>"
    )
    parts.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre></body></html>")

    md_path, html_path = d / "report.md", d / "report.html"
    write_text_atomic(md_path, md_text)
    write_text_atomic(html_path, "\n".join(parts))
    return {"md": str(md_path), "html": str(html_path), "plots": json.dumps([p for p, _ in plots])}


__all__ = ["write_report"]
