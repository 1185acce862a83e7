"""`ray job submit` of a study to a real two-node Ray cluster on 127.0.0.1: DDP ranks on both nodes."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_job_submit_runs_the_study_across_two_nodes(ray_cluster, s3_server, mlflow_server):
    env = {**os.environ, **ray_cluster.env, "RAY_API_SERVER_ADDRESS": ray_cluster.dashboard}
    runtime_env = {"excludes": [".venv", "runs", "data", ".git", "*.db"]}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard, "--working-dir", str(REPO),
           "--entrypoint-num-cpus", "0", "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "-m", "largebatch", "tune", "tune_spaces/digits-smoke.yaml", "--name", "e2e-cluster",
           "--storage", "s3://lb-runs/cluster", "--mlflow", mlflow_server.url, "--set", "budget.epochs=2",
           "--set", "search.scaling.rule={grid: [linear]}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("e2e-cluster")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("largebatch.kind") == "trial"]
    assert len(children) == 3  # baseline + B=128, 512 with the linear rule
    for c in children:
        assert c.data.tags["status"] == "completed"
        # 1 CPU per node and 2 workers per trial: DDP ranks must have been placed on both nodes
        assert c.data.tags["num_nodes"] == "2", c.data.tags.get("node_ids")
        assert len(set(c.data.tags["node_ids"].split(","))) == 2
