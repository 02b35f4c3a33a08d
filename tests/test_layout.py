"""The library's layout: wings in layers, no import cycles, no long classes.

`make test` runs lint-imports on the real package (pyproject.toml [tool.importlinter]); these
tests show that its contracts fail where they should, on a copy of the package with one bad
import added.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"
LONGEST_CLASS = 130  # lines, the class statement to its last line


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "symvae", tmp_path / "symvae",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(root: Path, module: str, target: str) -> None:
    """A function-level import: lint-imports counts those too."""
    path = root / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n\ndef _added():\n    import {target}  # noqa: F401\n")


def test_the_package_keeps_its_contracts():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_up_the_layers_fails(copy):
    add_import(copy, "symvae.model.nets", "symvae.learn.train")
    result = lint(copy)
    assert result.returncode == 1
    assert "symvae.model is not allowed to import symvae.learn" in result.stdout
    assert "symvae.model.nets -> symvae.learn.train" in result.stdout


def test_a_cycle_inside_a_wing_fails(copy):
    add_import(copy, "symvae.model.pixels", "symvae.model.hvae")  # hvae imports pixels
    result = lint(copy)
    assert result.returncode == 1
    assert "No cycles are allowed in symvae.model" in result.stdout


def test_a_module_outside_the_layers_fails(copy):
    (copy / "symvae" / "stray.py").write_text('"""A module no layer names."""\n')
    result = lint(copy)
    assert result.returncode == 1
    assert "symvae.stray" in result.stdout


def class_lengths(root: Path) -> dict[str, int]:
    lengths = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                name = f"{path.relative_to(root.parent)}:{node.name}"
                lengths[name] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_class_is_long():
    lengths = class_lengths(REPO / "symvae")
    assert "symvae/learn/train.py:Trainer" in lengths  # the one that once was 268 lines
    assert {k: n for k, n in lengths.items() if n > LONGEST_CLASS} == {}
