"""Many trials on many nodes, by simulation (issue #27 item 3): four Ray nodes on loopback (`ray start` each, 4 fake
CPUs and a custom resource standing for accelerators), a study of 101 short trials, 8 at a time, MLflow server on
PostgreSQL, trial storage on S3 (moto_server). Every trial is recorded exactly once (one child run per trial, each
epoch once), they ran on every node, and the report counts them all.

Timing on the 2-core CI machine: see the printed line (`-s`); bench/cluster_scale.py measures the driver's overhead.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import max_overlap, run_cli, scale_study, start_sim_cluster, trial_runs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

N_TRIALS, EPOCHS, CONCURRENT, NODES = 101, 2, 8, 4


def test_a_hundred_trials_on_four_nodes_are_each_recorded_once(s3_server, mlflow_pg_server, short_tmp):
    root = Path(tempfile.mkdtemp(prefix="scale-", dir=short_tmp))
    study = root / "scale.yaml"
    study.write_text(yaml.safe_dump(scale_study("e2e-scale", N_TRIALS, EPOCHS, CONCURRENT)))
    t0 = time.time()
    cluster = start_sim_cluster(root, s3_server.env, n_nodes=NODES)
    try:
        up_s = time.time() - t0
        env = {**cluster.env, "LARGEBATCH_CACHE": str(root / "cache")}
        t1 = time.time()
        r = run_cli(["tune", str(study), "--address", cluster.address, "--storage", "s3://lb-runs/scale",
                     "--mlflow", mlflow_pg_server.url, "--no-check"], env, cwd=root, timeout=1200)
        study_cmd_s = time.time() - t1
    finally:
        cluster.stop()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert f"{N_TRIALS} trials, {CONCURRENT} at a time" in out, out[:3000]

    client, runs = trial_runs(mlflow_pg_server.url, "e2e-scale")
    # one child run per trial: 101 runs, 101 distinct trial numbers, each completed
    assert len(runs) == N_TRIALS, len(runs)
    assert len({r.data.tags["largebatch.trial_index"] for r in runs}) == N_TRIALS
    assert len({r.data.tags["largebatch.trial_id"] for r in runs}) == N_TRIALS
    assert sorted({r.data.tags["status"] for r in runs}) == ["completed"]
    assert len({r.data.params["optim.base_lr"] for r in runs if r.data.tags["arm"] == "search"}) == N_TRIALS - 1
    for run in runs:  # each epoch once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(EPOCHS)), (run.info.run_name, steps)
    # spread over the cluster, several at once
    nodes = {r.data.tags["node_ids"] for r in runs}
    assert len(nodes) == NODES, nodes
    overlap = max_overlap([(r.info.start_time, r.info.end_time) for r in runs])
    assert overlap >= CONCURRENT, overlap

    # the report: the one the study wrote, and the one `largebatch report` rebuilds from PostgreSQL
    [local] = list(root.glob("runs/e2e-scale-*/report/report.json"))
    written = json.loads(local.read_text())
    rep = run_cli(["report", "--experiment", "e2e-scale", "--mlflow", mlflow_pg_server.url, "--json"], {}, cwd=root,
                  timeout=300)
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-3000:]
    rebuilt = json.loads(rep.stdout[rep.stdout.index("{"):])
    for report in (written, rebuilt):
        assert report["counts"]["total"] == report["counts"]["completed"] == N_TRIALS, report["counts"]
    assert written["counts"] == rebuilt["counts"]
    s = written["study"]
    print(f"\n[scale] {NODES} nodes up in {up_s:.0f} s; study command {study_cmd_s:.0f} s; search {s['study_s']:.0f} s "
          f"for {N_TRIALS} trials ({s['study_s'] / N_TRIALS:.2f} s/trial at {CONCURRENT} at a time), "
          f"sum of trial time {s['trial_s']:.0f} s; at most {overlap} trials open at once")
