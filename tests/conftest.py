"""Shared fixtures: the repository root and the study files every test that validates studies iterates over."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# tools/ (deployment checks) is not part of the installed package: import it from this checkout.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# globbed, not listed: a new tune_spaces/*.yaml is validated by the tests without anyone editing them
STUDY_FILES = sorted((REPO_ROOT / "tune_spaces").glob("*.yaml"))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def study_files() -> list[Path]:
    return list(STUDY_FILES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # a test that asks for `study_file` runs once per tune_spaces/*.yaml, with the file name as its id
    if "study_file" in metafunc.fixturenames:
        metafunc.parametrize("study_file", STUDY_FILES, ids=[p.name for p in STUDY_FILES])


@pytest.fixture(scope="module", autouse=True)
def state_api_head(request):
    """A module that finds actors through Ray's state API (ray.util.state) needs the dashboard's state module, which
    the light local head leaves out: its local heads are Ray's whole head (LARGEBATCH_RAY_DASHBOARD=1). Autouse at
    module scope, so it is set before the module's own fixtures start a head."""
    from largebatch.raylib import DASHBOARD_ENV

    if "ray.util.state" not in Path(str(request.fspath)).read_text():
        yield
        return
    old = os.environ.get(DASHBOARD_ENV)
    os.environ[DASHBOARD_ENV] = "1"
    yield
    if old is None:
        os.environ.pop(DASHBOARD_ENV, None)
    else:
        os.environ[DASHBOARD_ENV] = old
