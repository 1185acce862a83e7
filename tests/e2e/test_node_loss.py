"""A node lost mid-study (issue #27 item 4), on Ray nodes on loopback (`ray start` each, fake CPUs), MLflow server on
PostgreSQL, trial storage on S3 (moto_server).

- A worker node's raylet SIGKILLed while trials run on it: those trials continue on the other nodes from their last
  checkpoint on S3 (the only place a fresh node can get it), no epoch is lost or logged twice (MLflow's per-epoch
  history of every child run), and the study finishes: exit 0, the report counts every trial.
- The head going away mid-study (its whole process tree SIGKILLed, as a machine lost): the driver exits non-zero
  with the one-paragraph resume hint; `largebatch tune --resume` against a new head on the same address finishes
  the study, each epoch still once. (A driver killed on a healthy cluster is tests/integration/test_reliability.py
  `test_killed_driver_resumes_without_rerunning_finished_trials`; this is the cluster under it going away.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import VENV_BIN, run_cli, scale_study, start_sim_cluster, trial_runs
from largebatch.raylib import descendants, is_running

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EPOCHS = 8


def _study(name: str, n_trials: int, concurrent: int) -> dict:
    """Trials of several seconds (the whole digits training set, small batches, EPOCHS epochs, a checkpoint each)."""
    raw = scale_study(name, n_trials, EPOCHS, concurrent)
    raw["base"]["data"] = {"dataset": "digits", "global_batch_size": 16}
    raw["base"]["optim"]["base_batch_size"] = 16
    raw["baseline"] = {"data.global_batch_size": 8}
    return raw


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _node_ids(env: dict, address: str) -> dict[str, str]:
    """{custom resource node<i>: that node's Ray NodeID}, asked of the cluster by a client of its own."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] for k in n['Resources'] "
            "if k.startswith('node') and k[4:].isdigit()}))" % address)
    r = subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _epochs(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))


def _wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout_s: float):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, f"the driver ended before {what}: {log.read_text()[-4000:]}"
        got = check()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"no {what} in {timeout_s} s: {log.read_text()[-4000:]}")


def _driver(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.Popen([str(VENV_BIN / "largebatch"), *args], env=merged, cwd=cwd, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _tune_reported_epochs(s3_server, prefix: str, trial_dir: str) -> list[int]:
    """The epochs in the Tune trial folder's result.json on S3 (s3://lb-runs/<prefix>/<run>/<trial_dir>/)."""
    objects = s3_server.client.list_objects_v2(Bucket="lb-runs", Prefix=f"{prefix}/").get("Contents", [])
    [key] = [o["Key"] for o in objects if o["Key"].endswith(f"/{trial_dir}/result.json")]
    body = s3_server.client.get_object(Bucket="lb-runs", Key=key)["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines() if line.strip()]
    return [int(r["epoch"]) for r in rows if r.get("epoch") is not None]


def _assert_every_epoch_once(client, runs, n_trials: int) -> None:
    assert len(runs) == n_trials, [r.info.run_name for r in runs]
    assert len({r.data.tags["largebatch.trial_index"] for r in runs}) == n_trials
    for run in runs:
        assert run.data.tags["status"] == "completed", (run.info.run_name, run.data.tags.get("reason"))
        assert _epochs(client, run) == list(range(EPOCHS)), (run.info.run_name, _epochs(client, run))


def test_a_worker_node_killed_mid_study_loses_no_epoch(s3_server, mlflow_pg_server, short_tmp):
    n_trials, name = 6, "e2e-node-loss"
    root = Path(tempfile.mkdtemp(prefix="nodeloss-", dir=short_tmp))
    study = root / "study.yaml"
    study.write_text(yaml.safe_dump(_study(name, n_trials, concurrent=6)))
    cluster = start_sim_cluster(root, s3_server.env, n_nodes=3, cpus=3)
    log = root / "driver.log"
    try:
        ids = _node_ids(cluster.env, cluster.address)
        victim_tag = "node2"  # a worker node (node0 is the head, where the driver runs)
        env = {**cluster.env, "LARGEBATCH_CACHE": str(root / "cache")}
        proc = _driver(["tune", str(study), "--address", cluster.address, "--storage", "s3://lb-runs/nodeloss",
                        "--mlflow", mlflow_pg_server.url, "--no-check"], env, root, log)
        try:
            def on_victim():  # trials running on the victim node, each with an epoch or more logged, none finished
                client, runs = trial_runs(mlflow_pg_server.url, name)
                there = [r for r in runs if r.data.tags.get("node_ids") == ids[victim_tag]
                         and r.data.tags.get("status") == "running"]
                logged = {r.info.run_id: _epochs(client, r) for r in there}
                if there and all(1 <= len(e) <= EPOCHS - 3 for e in logged.values()):
                    return logged
                return None

            before = _wait_for("trials mid-run on the victim node", on_victim, proc, log, 600)
            node = cluster.procs[int(victim_tag[4:])]
            [raylet] = [p for p in descendants(node.pid) if "raylet/raylet" in _cmdline(p)]
            os.kill(raylet, signal.SIGKILL)
            t_kill = time.time()
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not is_running(raylet)
    finally:
        cluster.stop()
    out = log.read_text()
    assert rc == 0, out[-6000:]

    client, runs = trial_runs(mlflow_pg_server.url, name)
    _assert_every_epoch_once(client, runs, n_trials)
    for run in (r for r in runs if r.info.run_id in before):
        # it went on elsewhere: its last run was on another node, and it logged epochs after the kill
        assert run.data.tags["node_ids"] != ids[victim_tag], run.info.run_name
        after = [m for m in client.get_metric_history(run.info.run_id, "val_acc") if m.timestamp / 1000 > t_kill]
        assert after and min(m.step for m in after) >= len(before[run.info.run_id]) - 1, (before, after)
        # from its checkpoint, not from the start: Tune's record of the trial on S3 (result.json, one line per
        # report, appended across its runs) has each epoch up to the kill once, epoch 0 included
        reported = _tune_reported_epochs(s3_server, "nodeloss", run.data.tags["largebatch.trial_dir"])
        assert reported.count(0) == 1 and sorted(set(reported)) == list(range(EPOCHS)), reported
    [local] = list(root.glob(f"runs/{name}-*/report/report.json"))
    report = json.loads(local.read_text())
    assert report["counts"]["total"] == report["counts"]["completed"] == n_trials, report["counts"]
    print(f"\n[node-loss] {len(before)} trial(s) on the killed node, epochs logged before the kill: "
          f"{list(before.values())}")


def test_the_head_lost_mid_study_stops_with_the_resume_hint_and_resume_finishes(s3_server, mlflow_pg_server,
                                                                                 short_tmp):
    n_trials, name = 6, "e2e-head-loss"
    root = Path(tempfile.mkdtemp(prefix="headloss-", dir=short_tmp))
    study = root / "study.yaml"
    study.write_text(yaml.safe_dump(_study(name, n_trials, concurrent=3)))
    args = ["tune", str(study), "--storage", "s3://lb-runs/headloss", "--mlflow", mlflow_pg_server.url, "--no-check"]
    (root / "a").mkdir()
    first = start_sim_cluster(root / "a", s3_server.env, n_nodes=2, cpus=3)
    log = root / "first.log"
    try:
        # Ray's own wait for a lost GCS is 60 s; a shorter one keeps the test short (the path is the same)
        env = {**first.env, "LARGEBATCH_CACHE": str(root / "cache"), "RAY_gcs_rpc_server_reconnect_timeout_s": "30"}
        proc = _driver([*args, "--address", first.address], env, root, log)
        try:
            def some_done():
                client, runs = trial_runs(mlflow_pg_server.url, name)
                done = [r for r in runs if r.data.tags.get("status") == "completed"]
                running = [r for r in runs if r.data.tags.get("status") == "running" and _epochs(client, r)]
                return (done, running) if done and running else None

            _wait_for("a finished trial and a running one", some_done, proc, log, 600)
            head = first.procs[0]
            tree = descendants(head.pid) | {head.pid}
            for pid in tree:  # the head machine gone at once
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        first.stop()
    out = log.read_text()
    assert rc not in (0, None), out[-4000:]
    assert "Continue the study with:" in out, out[-4000:]
    hint = out[out.index("Continue the study with:"):].splitlines()[1].strip()
    assert hint.endswith("--resume"), hint
    assert "Traceback" not in out, out[-4000:]

    # a head back (a new cluster on loopback) and --resume against it
    (root / "b").mkdir()
    second = start_sim_cluster(root / "b", s3_server.env, n_nodes=2, cpus=3)
    try:
        env = {**second.env, "LARGEBATCH_CACHE": str(root / "cache")}
        r = run_cli([*args, "--address", second.address, "--resume"], env, cwd=root, timeout=900)
    finally:
        second.stop()
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "resuming" in r.stdout
    client, runs = trial_runs(mlflow_pg_server.url, name)
    _assert_every_epoch_once(client, runs, n_trials)
    [local] = list(root.glob(f"runs/{name}-*/report/report.json"))
    report = json.loads(local.read_text())
    assert report["counts"]["total"] == report["counts"]["completed"] == n_trials, report["counts"]
