"""Servers that go away mid-study (docs/design.md §10), as real processes on 127.0.0.1 stopped by PID:

- `mlflow server` (SQLite backend) stopped after the first trial logged an epoch and started again on the same port
  and store 20+ s later: the trials keep training, and every epoch of every trial is in MLflow exactly once;
- `moto_server` (S3) stopped before the report upload: the report stays on local disk and the driver says where.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from largebatch.config import load_study
from largebatch.raylib import free_port, stop_process
from netwait import wait_http

VENV_BIN = Path(sys.executable).parent
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "largebatch-test-key", "AWS_SECRET_ACCESS_KEY": "largebatch-test-secret-value",
             "AWS_DEFAULT_REGION": "us-east-1"}

# baseline + 2 points, one at a time; epochs of a second or two, so the outage spans several of them
STUDY = {
    "name": "it-mlflow-outage",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 3000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 5}},
    "search": {"data.global_batch_size": {"grid": [32, 64]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
              "max_failures": 0},
    "baseline": {"data.global_batch_size": 16},
    "report": {"tolerance": 5.0},
}
EPOCHS = 5
PER_EPOCH = ("val_loss", "val_acc", "train_loss", "lr", "steps", "wall_s")


class MlflowServer:
    """`mlflow server` on a fixed port and SQLite store, so it can be stopped and started again as the same server."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url, self.proc, self.starts = f"http://127.0.0.1:{self.port}", None, 0

    def start(self) -> None:
        self.starts += 1
        log = self.root / f"mlflow-{self.starts}.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", (self.root / "artifacts").as_uri()],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=self.root)
        wait_http(self.url + "/health", 120, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def mlflow_server(tmp_path):
    srv = MlflowServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _children(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("largebatch.kind") == "trial"]


@pytest.mark.slow
def test_mlflow_down_mid_study_every_epoch_logged_once(local_ray, mlflow_server, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    from largebatch.tune.driver import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = load_study(path)
    out: dict = {}

    def run():
        try:
            out["report"] = run_study(study, source=str(path), study_text=path.read_text(),
                                      run_root=str(tmp_path / "runs"), mlflow_uri=mlflow_server.url, live=False)
        except BaseException as e:  # surfaced below
            out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    client = MlflowClient(mlflow_server.url)
    deadline = time.time() + 300
    while time.time() < deadline and th.is_alive():  # the first trial's first epoch is in MLflow
        kids = _children(client, STUDY["name"])
        if kids and client.get_metric_history(kids[0].info.run_id, "val_loss"):
            first = kids[0].info.run_id
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no epoch logged in time: {out}")
    mlflow_server.stop()
    t_down = time.time()
    time.sleep(20)  # trials train on while the server is gone
    assert th.is_alive(), out  # the driver did not die of it
    mlflow_server.start()
    t_up = time.time()
    down_s = t_up - t_down
    th.join(600)
    assert not th.is_alive(), "the study did not finish"
    assert "error" not in out, repr(out.get("error"))
    report = out["report"]
    kids = _children(client, STUDY["name"])
    assert len(kids) == 3 and report["counts"]["completed"] == 3, (report["counts"], [k.info.run_name for k in kids])
    for kid in kids:
        assert kid.data.tags["status"] == "completed" and kid.info.status == "FINISHED", kid.info.run_name
        for key in PER_EPOCH:
            steps = sorted(m.step for m in client.get_metric_history(kid.info.run_id, key))
            assert steps == list(range(EPOCHS)), (kid.info.run_name, key, steps)
    # the first trial trained on through the outage: epochs it ran meanwhile reached MLflow only after the restart,
    # and no epoch waited for the server (wall_s counts time blocked in logging; an epoch here takes a second or two)
    assert any(m.timestamp / 1000 >= t_up for m in client.get_metric_history(first, "val_loss"))
    wall = [m.value for m in sorted(client.get_metric_history(first, "wall_s"), key=lambda m: m.step)]
    gaps = [b - a for a, b in zip(wall, wall[1:])]
    assert max(gaps) < 10, f"an epoch waited for MLflow: {gaps} (outage {down_s:.0f} s)"
    parent = client.get_run(report["study"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/report.md" in artifacts
    printed = capfd.readouterr()
    assert "not logged:" not in printed.out, printed.out[-2000:]
    assert down_s > 20


# ---------------------------------------------------------------- S3
@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    port = free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **DUMMY_AWS}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, 60, proc, log)
        for k, v in {**DUMMY_AWS, "AWS_ENDPOINT_URL": url, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="lb-runs")
        proc.url = url
        yield proc
    finally:
        stop_process(proc)


def test_s3_down_at_the_report_upload_keeps_the_report_local(s3_server, tmp_path, capsys):
    """The upload step of a study's end (tune/finish.py finish_study) against a real S3 server: once up (the report
    lands next to the trials), once stopped (the report stays on local disk, one line says so and where)."""
    from types import SimpleNamespace

    from largebatch.config import baseline_trial
    from largebatch.tracking import Tracker
    from largebatch.tune.finish import finish_study
    from largebatch.tune.runtime import StudyRuntime

    smoke = Path(__file__).resolve().parents[2] / "tune_spaces" / "digits-smoke.yaml"
    study = load_study(smoke)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("s3-outage", (tmp_path / "art").as_uri())
    grid = [SimpleNamespace(config={"arm": "baseline", "seed": 0, "overrides": {}}, checkpoint=None, error=None,
                            metrics={"trial_id": "a", "status": "completed", "is_final": True, "best_val_acc": 0.9,
                                     "wall_s": 1.0, "steps": 40}, path="/x/a")]

    def finish(run_name: str) -> str:
        parent = tracker.start_run(exp, run_name)
        rt = StudyRuntime(base_tree=study.base.model_dump(mode="json"),
                          baseline_tree=baseline_trial(study, str(smoke)).model_dump(mode="json"), source=str(smoke),
                          seeds=(0,), workers_per_trial=2, cpus_per_worker=1, use_gpu=False, max_failures=0,
                          train_sizes={0: 1437}, tracking_uri=tracker.uri, experiment_id=exp, parent_run_id=parent,
                          run_name=run_name, storage_path="s3://lb-runs/studies")
        finish_study(tracker, grid, rt, study, marked=None, study_s=3.0, n_trials=1, slots=1, exp_name="s3-outage",
                     run_root=str(tmp_path / "runs"), mlflow_uri=None)
        return capsys.readouterr().out

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.url)
    printed = finish("up-20260101-000000")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lb-runs")["Contents"]]
    assert "studies/up-20260101-000000/report/report.md" in keys and "not logged" not in printed
    assert "report: s3://lb-runs/studies/up-20260101-000000/report/report.md" in printed

    stop_process(s3_server)
    t0 = time.time()
    printed = finish("down-20260101-000000")
    local = tmp_path / "runs" / "down-20260101-000000" / "report"
    assert (local / "report.md").is_file() and (local / "report.html").is_file()
    line = next(ln for ln in printed.splitlines() if ln.startswith("[largebatch] not logged:"))
    assert "report upload to s3://lb-runs/studies/down-20260101-000000/report" in line and str(local) in line, line
    assert "cannot reach the S3 endpoint" in line and f"report: {local}/report.md" in printed
    assert time.time() - t0 < 60  # bounded: boto3's timeouts and retries, not minutes
    assert tracker.client.get_run(tracker.client.search_runs([exp])[0].info.run_id).info.status == "FINISHED"
