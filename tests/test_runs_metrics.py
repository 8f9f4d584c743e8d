"""The metrics log every job writes: metrics.jsonl replaced atomically, TensorBoard events without duplicates."""

from __future__ import annotations

import json

import pytest

from selfimprove.runs.metrics import MetricsLog


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_metrics_log_writes_jsonl_and_events_once(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path, step_key="budget")
    first = [{"budget": 16, "pass@1": 0.25, "note": "x", "ok": True}]
    assert log.write(first) is True
    assert log.write(first) is False  # nothing new: file and events untouched
    assert log.write(first + [{"budget": 32, "pass@1": 0.5}]) is True
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["budget"] for x in lines] == [16, 32]
    scalars = _scalars(tmp_path / "tensorboard")
    # Numbers only (no strings, no booleans, not the step key); one point per step.
    assert set(scalars) == {"pass@1"}
    assert scalars["pass@1"] == [(16, 0.25), (32, 0.5)]


def test_metrics_log_without_tensorboard_still_writes_jsonl(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    assert log.write([{"round": 0, "pass@1": 0.1}])
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"round": 0, "pass@1": 0.1}
