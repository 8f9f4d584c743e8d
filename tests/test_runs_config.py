"""The shared parts every job uses: the config loader on any schema, the schema docs generator, and
the run folder (lock, manifest, state with job-declared stages, resume refusals)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from selfimprove.config import Section, load, validate
from selfimprove.config.docs import iter_fields, schema_markdown, update_docs
from selfimprove.errors import ConfigError
from selfimprove.runs import RunState, folder_lock, open_state, write_manifest


class Item(Section):
    """An item."""

    size: int = Field(1, ge=1, description="Size.")


class Inner(Section):
    """Inner section."""

    rate: float = Field(0.5, description="A rate.")
    mode: str = Field("a", description="A mode.")


class Schema(Section):
    """A job's config."""

    name: str = Field(description="Name.")
    inner: Inner = Field(default_factory=Inner, description="Inner settings.")
    items: list[Item] = Field(default_factory=list, description="Items.")


def test_loader_works_on_any_schema(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("name: x\ninner:\n  rtae: 2\n")
    with pytest.raises(ConfigError) as exc:
        load(p, Schema)
    msg = str(exc.value)
    assert "job.yaml:3: inner.rtae: unknown key (did you mean 'rate'?); allowed here: mode, rate" in msg
    p.write_text("name: x\nitems:\n  - size: 0\n")
    msg = str(pytest.raises(ConfigError, load, p, Schema).value)
    assert "job.yaml:3: items[0].size" in msg and "greater than or equal to 1" in msg
    cfg = load(p, Schema, ["items=[{size: 3}]", "inner.rate=0.25"])
    assert cfg.items[0].size == 3 and cfg.inner.rate == 0.25
    msg = str(pytest.raises(ConfigError, load, p, Schema, ["inner.mode=[1"]).value)
    assert "override 'inner.mode=[1': the value is not valid YAML" in msg
    seen = []

    def check(c, where):
        seen.append(where(("inner", "rate")))

    validate(Schema, {"name": "y"}, overrides=["inner.rate=1"], check=check)
    assert seen == ["command-line override 'inner.rate=1': "]


def test_docs_generator_on_any_schema(tmp_path):
    rows = list(iter_fields(Schema, inline=(Item,)))
    assert [r[0] for r in rows] == ["name", "inner", "inner.rate", "inner.mode", "items", "items[].size"]
    assert rows[0][2] == "(required)" and rows[1][1] == "section"
    table = schema_markdown(Schema, inline=(Item,))
    assert "| `items[].size` | `int` | `1` | Size. |" in table
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- schema:start -->\nold\n<!-- schema:end -->\nend\n")
    assert update_docs(page, Schema, inline=(Item,)) and not update_docs(page, Schema, inline=(Item,))
    assert page.read_text().startswith("intro\n<!-- schema:start -->\n| key |")


def test_run_state_declares_stages_and_records_them(tmp_path):
    state, resumed = open_state(tmp_path / "f", "abc", resume=False, stages=("one", "two"), extra=1)
    assert not resumed and state.data["extra"] == 1
    state.mark(1, "one", 0.5, note="x")
    with pytest.raises(ValueError, match="not one of this job's stages: one, two"):
        state.mark(1, "three")
    again = RunState.load(tmp_path / "f" / "state.json", ("one", "two"))
    assert again.done(1, "one") and not again.done(1, "two") and again.round(1)["note"] == "x"
    assert again.round(1)["seconds"] == {"one": 0.5} and again.rounds() == [1]


def test_open_state_refusals(tmp_path):
    d = tmp_path / "f"
    state, _ = open_state(d, "abc", resume=False)
    state.save()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        open_state(d, "abc", resume=False)
    with pytest.raises(ConfigError, match="the config differs"):
        open_state(d, "xyz", resume=True)
    forced, resumed = open_state(d, "xyz", resume=True, force=True)
    assert resumed and forced.data["forced"] == [{"from": "abc", "to": "xyz"}]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="cannot resume .* no state.json"):
        open_state(other, "abc", resume=True)


def test_manifest_appends_starts(tmp_path):
    write_manifest(tmp_path, {"name": "a", "config_hash": "h"}, command=["x", "1"], resumed=False)
    m = write_manifest(tmp_path, {"name": "a", "config_hash": "h"}, command=["x", "2"], resumed=True)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m and [s["command"] for s in m["starts"]] == [["x", "1"], ["x", "2"]]
    assert m["created"] == m["starts"][0]["time"] and "python" in m and m["name"] == "a"


def test_folder_lock_refuses_a_second_process(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from selfimprove.runs import folder_lock\n"
        f"with folder_lock(Path({str(tmp_path)!r}), what='workspace'):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(
            ConfigError,
            match=rf"workspace {tmp_path} is in use by another selfimprove process \(pid {proc.pid}\)",
        ):
            with folder_lock(Path(tmp_path), what="workspace"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(Path(tmp_path)):  # the kernel dropped the dead holder's lock
        pass


def test_atomic_dir_swaps_in_a_complete_folder_or_leaves_the_old_one(tmp_path):
    from selfimprove.runs.io import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-") and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("killed mid-build")
    assert (target / "a.txt").read_text() == "one"  # the old folder is untouched
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or old folder left
