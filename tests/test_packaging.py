"""A non-editable install (`pip install .`) ships only the packages pyproject lists."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join((name, *init.parent.relative_to(ROOT / folder).parts))
        for name, folder in tool["package-dir"].items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert {"caml_rl", "caml_rl.visualize", "caml_rl.envs"} <= found  # the walk sees sub-packages
    assert found - set(tool["packages"]) == set(), "add these to pyproject's [tool.setuptools] packages"
