"""A real local Ray for integration tests: one head node per module (start-up costs seconds), stopped by PID."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from largebatch.raylib import init_ray, shutdown_ray

    assert not ray.is_initialized()
    info = init_ray(None, num_cpus=2)
    yield info
    shutdown_ray()


@pytest.fixture(scope="module")
def examples_importable():
    """A user's module (examples/) is found through PYTHONPATH, on the driver and (inherited by the Ray head) the
    workers."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([old] if old else []))
    sys.path.insert(0, str(REPO_ROOT))
    yield
    sys.path.remove(str(REPO_ROOT))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
