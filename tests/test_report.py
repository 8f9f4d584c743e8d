"""The run report: Markdown + HTML + PNG plots from a run folder's files (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.errors import InputError
from selfimprove.loop.report import write_report


def _fake_run(d: Path, supervised: bool = False) -> None:
    """A run folder as the runner writes it: three rounds, round 2 flagged by the guard."""
    d.mkdir(parents=True)
    hist = []
    for r, (p1, maj, ratio, ent, length) in enumerate(
        [(0.30, 0.45, 0.50, 1.10, 40.0), (0.42, 0.55, 0.70, 0.70, 35.0), (0.44, 0.52, 0.995, 0.02, 12.0)]
    ):
        m = {
            "round": r,
            "eval/pass@1": p1,
            "eval/maj@8": maj,
            "eval/pass@8": min(1.0, maj + 0.2),
            "eval/majority_ratio": ratio,
            "eval/answer_entropy": ent,
            "eval/distinct_answers": 3.0 - r,
            "eval/mean_length": length,
            "eval/no_answer_rate": 0.1,
            "eval/constant_baseline": 0.25,
        }
        if r:
            m.update({"train/label_accuracy": 0.5 + 0.1 * r, "data/rows": 40 - r, "train/loss": 1.0 / r})
        hist.append(m)
    hist[2]["note"] = "collapse"
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in hist))
    summary = {
        "name": "fake-run",
        "supervised": supervised,
        "rounds_completed": 2,
        "stopped": "collapse guard stopped the loop after round 2",
        "best_round": 1,
        "best_round_rule": "highest mean majority ratio among unflagged rounds",
        "best_adapter": str(d / "round_01" / "adapter"),
        "collapsed_rounds": [2],
        "guard": [
            {"round": 1, "collapsed": False, "reasons": []},
            {"round": 2, "collapsed": True, "reasons": ["answer entropy fell to 2% of the reference"]},
        ],
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "manifest.json").write_text(json.dumps({"config_hash": "abc123", "packages": {"trl": "1.16.0"}}))
    (d / "config.yaml").write_text("name: fake-run\ntraining:\n  method: sft\n")


def test_report_files_and_content(tmp_path):
    d = tmp_path / "run"
    _fake_run(d)
    paths = write_report(d)
    md = Path(paths["md"]).read_text()
    page = Path(paths["html"]).read_text()
    for png in ("accuracy.png", "agreement.png", "length.png", "training.png"):
        p = d / "report" / png
        assert p.stat().st_size > 10_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"report/{png}" in md and f"report/{png}" in page
    assert "# Self-training report: fake-run" in md
    assert "30.0% (base model) to 44.0% after round 2 (+14.0 points)" in md
    assert "maj@8: 45.0% -> 52.0%" in md
    assert "label-free pick is round 1" in md
    assert "most common answer would score 25.0%" in md
    # The round table: one header, one separator, three rounds; best and collapse marked.
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| round | pass@1 | maj@8 | pass@8 | majority ratio")
    assert rows[2].startswith("| 1 | 0.420 | 0.550") and "best (label-free)" in rows[2]
    assert "collapse" in rows[3]
    assert "answer entropy fell to 2% of the reference" in md and "Label-free run" in md
    assert "```yaml\nname: fake-run" in md and "config_hash" not in md and "abc123" in md
    assert "<table>" in page and "<img src='report/accuracy.png'" in page and "fake-run" in page
    assert not list(d.glob(".*.tmp")) and not list((d / "report").glob(".*"))


def test_supervised_runs_are_marked(tmp_path):
    d = tmp_path / "run"
    _fake_run(d, supervised=True)
    paths = write_report(d)
    assert "SUPERVISED baseline" in Path(paths["md"]).read_text()
    assert "SUPERVISED baseline" in Path(paths["html"]).read_text()


def test_report_of_non_run_folder(tmp_path):
    with pytest.raises(InputError, match="metrics.jsonl is missing"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(InputError, match="no finished round"):
        write_report(tmp_path)


def test_report_cli(tmp_path, capsys):
    from selfimprove.cli import main

    _fake_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
