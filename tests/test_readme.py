"""The README's Python example runs as written (in a scratch folder that sees the repository's configs/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The first ```python block after the README's "Use it from Python" heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block under 'Use it from Python'"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_example_runs_and_improves(tmp_path):
    code = readme_python_example()
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"pass@1 (\d\.\d{3}) -> (\d\.\d{3})", line)
    assert m, f"unexpected last line: {line!r}"
    before, after = float(m.group(1)), float(m.group(2))
    # The shipped string_ops model answers right about half the time; one label-free round lifts it.
    assert 0.3 < before < 0.65
    assert after > before
    assert (tmp_path / "runs" / "demo_from_python" / "report.md").is_file()
