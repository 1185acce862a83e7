"""A real local Ray for integration tests: one head node per module (start-up costs seconds), stopped by PID."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from largebatch.raylib import init_ray, shutdown_ray

    assert not ray.is_initialized()
    info = init_ray(None, num_cpus=2)
    yield info
    shutdown_ray()
