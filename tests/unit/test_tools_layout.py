"""Deployment checks are a developer tool beside the package, not in it; requires-python says what is built."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_tools_are_not_in_the_wheel():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(REPO), include=include)
    assert "largebatch" in packages
    assert not [p for p in packages if p == "tools" or p.startswith("tools.")]
    assert not (REPO / "largebatch" / "deploy").exists()


def test_package_never_imports_the_tools():
    for path in (REPO / "largebatch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tools" or n.startswith("tools.") for n in names), path


def test_requires_python_matches_what_is_built_and_run():
    spec = PYPROJECT["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", spec).groups())
    assert sys.version_info[:2] >= minimum
    # the images and launcher configs run py311: the floor may not promise an older Python than that
    assert "py311" in (REPO / "Dockerfile").read_text() and minimum == (3, 11)
