"""Connecting to Ray: a local instance by default, `--address`/RAY_ADDRESS for a cluster. Only place ray.init runs.

Token auth (Ray >= 2.59): a client must use the same RAY_AUTH_MODE as the cluster. We never change it: the
environment decides, and a mismatch becomes one clear line (README "Run on a cluster" says what to set).
"""
from __future__ import annotations

import os
from typing import Any, Optional

from largebatch.errors import BadInput

# Each ray.train.report waits for the controller's poll (2 s by default); short epochs need a faster poll.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def _train_env() -> dict[str, str]:
    return {k: os.environ.get(k, v) for k, v in TRAIN_ENV.items()}


def init_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
             resources: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Start or join Ray. Returns {'address', 'local', 'cpus', 'gpus'} for the study record."""
    import ray

    env = _train_env()
    os.environ.update(env)  # a local instance's workers inherit the driver's environment
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return cluster_info(address)
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, resources=resources or None)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise BadInput(f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head` or "
                       f"drop --address to run locally", field="--address") from None
    except Exception as e:  # AuthenticationError and friends: name the fix, not the stack
        if "auth" in type(e).__name__.lower() or "token" in str(e).lower():
            raise BadInput(f"Ray rejected the connection to {address!r}: {str(e).splitlines()[0]}; set RAY_AUTH_MODE "
                           f"(and RAY_AUTH_TOKEN) to match the cluster", field="--address") from None
        raise
    return cluster_info(address)


def cluster_info(address: Optional[str]) -> dict[str, Any]:
    import ray

    res = ray.cluster_resources()
    return {"address": address or "local", "local": not address, "cpus": int(res.get("CPU", 0)),
            "gpus": int(res.get("GPU", 0)), "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "resources": {k: v for k, v in res.items() if not k.startswith("node:") and "memory" not in k}}


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
