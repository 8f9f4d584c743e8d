"""The public names of the package: each resolves to what its module defines, and importing stays light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = [
    "selfimprove",
    "selfimprove.train",
    "selfimprove.distill",
    "selfimprove.prompt_opt",
    "selfimprove.runs",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    mod = importlib.import_module(package)
    assert mod.__all__, package
    submodules = {m.name for m in pkgutil.iter_modules(mod.__path__)}
    assert not submodules & set(mod.__all__), (
        "an export named like a submodule is replaced when it is imported"
    )
    for name in mod.__all__:
        value = getattr(mod, name)
        assert not isinstance(value, type(sys)), f"{package}.{name} is a module, not the exported object"
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = mod.no_such_name


def test_an_exported_function_is_not_shadowed_by_a_submodule():
    # No exported name is also a submodule's name: importing the submodule would replace the export.
    import selfimprove.distill.selection  # noqa: F401
    from selfimprove.distill import select
    from selfimprove.distill.selection import select as defined

    assert select is defined


def test_import_selfimprove_loads_no_ml_framework():
    code = (
        "import sys, selfimprove, selfimprove.train, selfimprove.distill; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'vllm', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
