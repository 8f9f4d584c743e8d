"""BENCHMARKS.md is generated from benchmarks/results/*/summary.md and kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", REPO / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_md_is_generated_from_the_summaries():
    summarize = _summarize()
    assert summarize.main(["--check"]) == 0, "run python benchmarks/summarize.py"
    text = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    for path in sorted((REPO / "benchmarks" / "results").glob("*/summary.md")):
        meta, _ = summarize.read_summary(path)
        assert f"## {meta['question']}" in text


def test_a_summary_without_its_facts_is_refused(tmp_path):
    summarize = _summarize()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "summary.md").write_text("---\nquestion: Q\norder: 1\n---\nbody\n")
    with pytest.raises(summarize.SummaryError, match="lacks date, commit, machine, command"):
        summarize.render(tmp_path)
    (tmp_path / "exp" / "summary.md").write_text("---\nquestion Q\n---\n")
    with pytest.raises(summarize.SummaryError, match=r"summary.md:2: expected 'key: value'"):
        summarize.render(tmp_path)


def test_sections_follow_their_order(tmp_path):
    summarize = _summarize()
    for name, order in (("b", 2), ("a", 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.md").write_text(
            f"---\nquestion: Q{name}\norder: {order}\ndate: d\ncommit: c\nmachine: m\ncommand: x\n---\n| t |\n"
        )
    text = summarize.render(tmp_path)
    assert text.index("## Qb") < text.index("## Qa")
    assert "- **Command:** `x`" in text
