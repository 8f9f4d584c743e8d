"""The distillation report: Markdown + HTML from a run folder's files.

Tables: labelling, held-out accuracy (teacher, student before, each selection variant after, with
the share of the teacher's lead the student recovered), and the selection's statistics. The
teacher's accuracy on kept vs dropped inputs is measured with the train split's gold answers,
read here and only here: it describes a selection, it never makes one.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.runs.io import read_json, read_jsonl, write_text_atomic
from selfimprove.runs.report import html_page, html_table, markdown_table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def recovered(after: float | None, before: float | None, teacher: float | None) -> float | None:
    """Share of the teacher's lead over the student that training recovered: (after-before)/(teacher-before)."""
    if after is None or before is None or teacher is None or teacher <= before:
        return None
    return (after - before) / (teacher - before)


def teacher_accuracy_by_selection(
    run_dir: Path, task: Any, gold: Mapping[str, str]
) -> dict[str, dict[str, float | int | None]]:
    """Per variant: the teacher labels' accuracy on the kept and on the dropped inputs (report only)."""
    labels = [r for r in read_jsonl(run_dir / "labels.jsonl") if r["teacher_label"] is not None]
    correct = {
        r["prompt_id"]: task.check(r["teacher_label"], gold[r["prompt_id"]])
        for r in labels
        if r["prompt_id"] in gold
    }
    out: dict[str, dict[str, float | int | None]] = {}
    for sel_file in sorted((run_dir / "variants").glob("*/selection.jsonl")):
        kept = {r["prompt_id"] for r in read_jsonl(sel_file)}
        k = [correct[p] for p in correct if p in kept]
        d = [correct[p] for p in correct if p not in kept]
        out[sel_file.parent.name] = {
            "kept_accuracy": sum(k) / len(k) if k else None,
            "dropped_accuracy": sum(d) / len(d) if d else None,
            "kept": len(k),
            "dropped": len(d),
        }
    out["_all"] = {
        "kept_accuracy": sum(correct.values()) / len(correct) if correct else None,
        "kept": len(correct),
    }
    return out


def metric_keys(summary: Mapping[str, Any]) -> list[str]:
    """The pass@/maj@ keys present in the run's evaluations, in a stable order."""
    keys: list[str] = []
    evals = [summary.get("teacher"), summary.get("student_before")]
    evals += [v.get("evaluate") for v in summary.get("variants", [])]
    for m in evals:
        for k in m or {}:
            if k.startswith(("pass@", "maj@")) and k not in keys:
                keys.append(k)
    return sorted(keys, key=lambda k: (k != "pass@1", k))


def eval_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Held-out accuracy of the teacher, the student before, and the student after each variant."""
    keys = metric_keys(summary)
    rows = [["model", *keys, "answer rate", "recovered (pass@1)"]]
    teacher = summary.get("teacher") or {}
    before = summary.get("student_before") or {}

    def row(name: str, m: Mapping[str, Any] | None, rec: float | None = None) -> list[str]:
        m = m or {}
        if "skipped" in m:
            return [name, *(["-"] * len(keys)), "-", m["skipped"]]
        return [
            name,
            *(_pct(m.get(k)) for k in keys),
            _pct(m.get("answer_rate")),
            _pct(rec) if rec is not None else "-",
        ]

    if teacher:
        rows.append(row("teacher", teacher))
    if before:
        rows.append(row("student before", before))
    for v in summary.get("variants", []):
        m = v.get("evaluate")
        if m is None:
            continue
        rec = recovered(m.get("pass@1"), before.get("pass@1"), teacher.get("pass@1"))
        rows.append(row(f"student after {v['key']}", m, rec))
    return rows


def selection_rows(summary: Mapping[str, Any], gold_stats: Mapping[str, Any] | None) -> list[list[str]]:
    """Per variant: size, kept, passed the keep rule, filled, means, weights, teacher accuracy (gold)."""
    rows = [
        [
            "variant",
            "size",
            "selected",
            "passed rule",
            "filled",
            "mean confidence",
            "mean need",
            "weights (min-max)",
            "train rows",
            "steps",
            "teacher acc. kept",
            "teacher acc. dropped",
        ]
    ]
    for v in summary.get("variants", []):
        s = v.get("select") or {}
        t = v.get("train") or {}
        g = (gold_stats or {}).get(v["key"], {})
        weights = "-" if s.get("weight_min") is None else f"{s['weight_min']:.2f}-{s['weight_max']:.2f}"
        rows.append(
            [
                v["key"],
                _num(s.get("size")),
                _num(s.get("selected")),
                _num(s.get("passed")),
                _num(s.get("filled")),
                _num(s.get("confidence_mean")),
                _num(s.get("need_mean")),
                weights,
                _num(t.get("rows")),
                _num(t.get("steps")),
                _pct(g.get("kept_accuracy")),
                _pct(g.get("dropped_accuracy")),
            ]
        )
    return rows


def svg_bars(values: Sequence[tuple[str, float]], title: str, width: int = 640) -> str:
    """A horizontal bar chart (values in [0, 1]) as inline SVG."""
    bar, gap, left = 18, 6, 220
    height = 30 + len(values) * (bar + gap)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='12'>"]
    parts.append(f"<text x='0' y='14' font-weight='bold'>{html.escape(title)}</text>")
    span = width - left - 60
    for i, (name, v) in enumerate(values):
        y = 24 + i * (bar + gap)
        w = max(0.0, min(1.0, v)) * span
        parts.append(f"<text x='0' y='{y + 13}'>{html.escape(name)}</text>")
        parts.append(f"<rect x='{left}' y='{y}' width='{w:.1f}' height='{bar}' fill='#4a7bd0'/>")
        parts.append(f"<text x='{left + w + 4:.1f}' y='{y + 13}'>{100 * v:.1f}%</text>")
    parts.append("</svg>")
    return "".join(parts)


def write_report(run_dir: str | Path, cfg: Any = None, task: Any = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` of a run folder; returns their paths."""
    from selfimprove.distill.config import load_config
    from selfimprove.distill.runner import load_task

    run_dir = Path(run_dir)
    summary = read_json(run_dir / "results.json")
    if cfg is None:
        cfg = load_config(run_dir / "config.yaml")
    gold_stats = None
    if cfg.evaluation.enabled:
        task = task if task is not None else load_task(cfg)
        t = cfg.task
        # Report only: the train split's gold grades the teacher's labels on kept vs dropped inputs.
        _prompts, train_gold = task.make_split("train", n=t.unlabeled_size, seed=t.seed, level=t.level)
        gold_stats = teacher_accuracy_by_selection(run_dir, task, train_gold)
    label = summary.get("label") or {}
    label_rows = [
        [
            "inputs",
            "labelled",
            "no answer (abstained)",
            "teacher samples",
            "mean vote share",
            "with label prob.",
            "teacher label accuracy (gold)",
        ],
        [
            _num(label.get("inputs")),
            _num(label.get("labelled")),
            _num(label.get("abstained")),
            _num(label.get("teacher_samples")),
            _num(label.get("vote_share_mean")),
            _pct(label.get("label_prob_share")),
            _pct((gold_stats or {}).get("_all", {}).get("kept_accuracy")),
        ],
    ]
    erows = eval_rows(summary)
    srows = selection_rows(summary, gold_stats)
    title = f"Distillation report: {summary.get('name')}"
    intro = (
        f"Teacher `{cfg.teacher.model}` ({cfg.teacher.backend}, k={cfg.teacher.k}) -> student `{cfg.student.model}`; "
        f"task `{cfg.task.name or cfg.task.file}`; selection confidence `{cfg.selection.confidence}`, need "
        f"`{cfg.selection.need}`, keep rule `{cfg.selection.threshold}`, weights `{cfg.selection.weight}`; "
        f"training target `{cfg.training.target}`."
    )
    note = (
        "Teacher accuracy on kept / dropped inputs uses the train split's gold answers, for this report only; "
        "the selection never sees them."
    )
    md = [f"# {title}", "", intro, "", "## Labelling", "", markdown_table(label_rows), ""]
    md += ["## Held-out accuracy", "", markdown_table(erows), ""]
    md += ["## Selection", "", markdown_table(srows), "", note, ""]
    write_text_atomic(run_dir / "report.md", "\n".join(md))
    bars = [(r[0], float(r[1].rstrip("%")) / 100) for r in erows[1:] if len(r) > 1 and r[1].endswith("%")]
    body = f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
    body += "<h2>Labelling</h2>" + html_table(label_rows)
    body += "<h2>Held-out accuracy</h2>" + html_table(erows)
    if bars:
        body += "<p>" + svg_bars(bars, f"held-out {erows[0][1]}") + "</p>"
    body += "<h2>Selection</h2>" + html_table(srows) + f"<p>{html.escape(note)}</p>"
    write_text_atomic(run_dir / "report.html", html_page(title, body))
    return run_dir / "report.md", run_dir / "report.html"


__all__ = [
    "eval_rows",
    "recovered",
    "selection_rows",
    "svg_bars",
    "teacher_accuracy_by_selection",
    "write_report",
]
