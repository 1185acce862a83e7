"""Dockerfile lint (no Docker engine here): multi-stage, Ray base pinned to pyproject's Ray, torch pinned and
installed before the package, non-root user; .dockerignore keeps environments, runs and data out."""
from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tools.deploy.pins import read_pins

REPO = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued RUN
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


INSTRUCTIONS = _instructions(REPO / "Dockerfile")


def _args(build_args: dict[str, str] | None = None) -> dict[str, str]:
    """ARG defaults (all stages), overridden by build args as `docker build --build-arg` would."""
    values = {}
    for keyword, args in INSTRUCTIONS:
        if keyword == "ARG":
            name, _, default = args.partition("=")
            values.setdefault(name, default)
    return {**values, **(build_args or {})}


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], m[0]), text)


def _froms(build_args=None) -> list[str]:
    values = _args(build_args)
    return [_expand(args.split()[0], values) for keyword, args in INSTRUCTIONS if keyword == "FROM"]


def test_multi_stage():
    froms = [args for keyword, args in INSTRUCTIONS if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(" AS " in f.upper() for f in froms), "name every stage"
    assert any(keyword == "COPY" and "--from=" in args for keyword, args in INSTRUCTIONS)


def test_base_image_is_pinned_to_pyprojects_ray():
    ray = read_pins(REPO).ray
    assert _args()["RAY_VERSION"] == ray
    assert set(_froms()) == {f"rayproject/ray:{ray}-py311"}
    # the documented GPU variant
    assert set(_froms({"RAY_IMAGE_SUFFIX": "-gpu"})) == {f"rayproject/ray:{ray}-py311-gpu"}


def _runs() -> list[str]:
    return [_expand(args, _args()) for keyword, args in INSTRUCTIONS if keyword == "RUN"]


def test_torch_pinned_and_installed_before_the_package():
    torch = read_pins(REPO).torch
    assert _args()["TORCH_VERSION"] == torch
    runs = _runs()
    torch_at = next(i for i, r in enumerate(runs) if re.search(rf"pip install .*\btorch=={re.escape(torch)}\b", r))
    package_at = next(i for i, r in enumerate(runs)
                      if re.search(r"pip install\b.*(\s\.(\s|$)|\.whl)", r) and "torch==" not in r)
    assert torch_at < package_at
    # the package's wheel is built from `.` in the builder stage
    assert any(re.search(r"pip (wheel|install)\b.*\s\.$", r) for r in runs)


def test_runs_as_non_root():
    users = [i for i, (keyword, _) in enumerate(INSTRUCTIONS) if keyword == "USER"]
    assert users, "no USER: the image would run as whatever the base image sets"
    last_user = INSTRUCTIONS[users[-1]][1].split(":")[0]
    assert last_user not in ("root", "0")
    # numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser
    assert last_user.isdigit()
    last_run = max(i for i, (keyword, _) in enumerate(INSTRUCTIONS) if keyword == "RUN")
    assert users[-1] > last_run, "the image must end as the non-root user"


def _dockerignore() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _ignored(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p) for p in _dockerignore())


@pytest.mark.parametrize("path", [".venv", "runs", "data", "mlruns", "mlflow.db", "runs/x/mlflow.db"])
def test_dockerignore_excludes(path):
    assert _ignored(path)


def test_copy_sources_exist_and_are_not_ignored():
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    for keyword, args in INSTRUCTIONS:
        if keyword != "COPY" or "--from=" in args:
            continue
        sources = [s for s in shlex.split(args) if not s.startswith("--")][:-1]
        for source in sources:
            rel = source.rstrip("/")
            assert not _ignored(rel), f".dockerignore drops {rel}, which COPY needs"
            if rel == readme:
                continue  # pyproject's readme; the build needs it, its content is not ours to check here
            assert (REPO / rel).exists(), f"COPY {rel}: not in the repo"
