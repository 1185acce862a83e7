"""S3 down mid-trial (docs/design.md §10, issue #15) against a real S3 API server process (moto_server) on
127.0.0.1, reached through AWS_ENDPOINT_URL only; the checkpoints go there as `--storage s3://...` sends them.

The server is stopped while a trial trains and started again on the same port once the trial has trained through
three checkpoints S3 could not take. moto keeps its
objects in memory, so the test copies them out just before the stop and back just after the start: a real S3
outage loses nothing either. Then the process that trains is SIGKILLed and must resume from the newest checkpoint
persisted after the restart. Asserted: the trial trains on through the outage and the study completes; every epoch
is in MLflow exactly once; checkpoints reach S3 again after the restart; the restarted trial continues from the
newest of them; nothing is left in the local folder of checkpoints S3 did not take.

Each case runs one study of one trial on a local Ray head started after the S3 settings are in the environment
(§8: pyarrow reads the endpoint when Ray starts)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from largebatch.raylib import free_port, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

VENV_BIN = Path(sys.executable).parent
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "largebatch-test-key", "AWS_SECRET_ACCESS_KEY": "largebatch-test-secret-value",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
BUCKET, PREFIX = "lb-runs", "outage"
EPOCHS, EVERY = 20, 2
# one trial, a checkpoint every other epoch (kept, all of them: the test reads them back), epochs of a couple of
# seconds, so the outage spans several checkpoints and S3 can be stopped, and the trial killed, between two of them
STUDY = {
    "name": "e2e-s3-outage",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 12000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": EPOCHS},
             "checkpoint": {"every_epochs": EVERY, "num_to_keep": 100}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_failures": 2, "profile": False},
}
PER_EPOCH = ("val_loss", "val_acc", "train_loss", "lr", "steps", "wall_s")
RETRY_S = 5  # how long a trial's last checkpoint waits for S3 (LARGEBATCH_STORAGE_RETRY_S; 60 by default)


class S3Server:
    """moto_server on a fixed port, stopped (by PID) and started again on it."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc, self.starts = root, free_port(), None, 0
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = self.root / f"moto-{self.starts}.log"
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     env={**os.environ, **DUMMY_AWS}, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        stop_process(self.proc)

    @property
    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def objects(self) -> dict[str, bytes]:
        s3, out = self.client, {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for o in page.get("Contents", []):
                out[o["Key"]] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        return out

    def put_back(self, objects: dict[str, bytes]) -> None:
        s3 = self.client
        s3.create_bucket(Bucket=BUCKET)
        for key, body in objects.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    def registered(self, study: str) -> bool:
        """Every checkpoint of the study on S3 is in Ray Train's checkpoint-manager snapshot: the controller has
        registered them all (it writes the snapshot to storage as it registers each one)."""
        s3, names, snapshot = self.client, {k.rsplit("/", 1)[1] for k in self.checkpoints(study)}, ""
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{study}-"):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/checkpoint_manager_snapshot.json"):
                    snapshot += s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().decode()
        return bool(names) and all(n in snapshot for n in names)

    def checkpoints(self, study: str) -> dict[str, int]:
        """{checkpoint folder: the last epoch it holds} for every complete checkpoint of the study's runs."""
        s3, out = self.client, {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{study}-"):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/history.json"):
                    body = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
                    out[o["Key"].rsplit("/", 1)[0]] = json.loads(body)["history"][-1]["epoch"]
        return out


@pytest.fixture(scope="module")
def s3_ray(tmp_path_factory):
    """The S3 server, then a local Ray head whose processes see it (and keep unpersisted checkpoints in tmp)."""
    root = tmp_path_factory.mktemp("s3-outage")
    srv = S3Server(root)
    env = {**DUMMY_AWS, "AWS_ENDPOINT_URL": srv.url, "LARGEBATCH_CACHE": str(root / "cache"),
           "LARGEBATCH_STORAGE_RETRY_S": str(RETRY_S), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    srv.start()
    try:
        srv.client.create_bucket(Bucket=BUCKET)
        import ray

        from largebatch.raylib import init_ray, shutdown_ray

        assert not ray.is_initialized()
        init_ray(None, num_cpus=2)
        try:
            yield srv
        finally:
            shutdown_ray()
    finally:
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_up(s3_ray):
    """The module's server running with its bucket, whatever an earlier case left (one that failed mid-outage)."""
    srv = s3_ray
    if srv.proc.poll() is not None:
        srv.start()
    try:
        srv.client.create_bucket(Bucket=BUCKET)
    except srv.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return srv


def _wait(what: str, cond, th: threading.Thread, out: dict, timeout_s: float = 300, every: float = 0.3):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        assert th.is_alive(), f"the study ended while waiting for {what}: {out}"
        time.sleep(every)
    pytest.fail(f"no {what} in {timeout_s} s: {out}")


def _checkpointed(srv: S3Server, study: str, in_process: bool, n: int = 1) -> bool:
    """At least n checkpoints on S3, each registered by Ray, the newest just now (callers poll this): the next one
    is an epoch or two away. Ray Train's controller writes its snapshot to storage as it registers a checkpoint and
    fails the run if it cannot (train/persist.py), so S3 is not stopped between a copy and its registration; Tune's
    driver takes an in-process trial's checkpoint before the trial goes on."""
    return len(srv.checkpoints(study)) >= n and (in_process or srv.registered(study))


def _study_in_thread(study_dict: dict, tmp_path: Path) -> tuple[threading.Thread, dict, str]:
    from largebatch.config import load_study
    from largebatch.tune.driver import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict))
    study = load_study(path)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out: dict = {}

    def run():
        try:
            out["report"] = run_study(study, source=str(path), study_text=path.read_text(),
                                      run_root=str(tmp_path / "runs"), storage=f"s3://{BUCKET}/{PREFIX}",
                                      mlflow_uri=mlflow_uri, live=False)
        except BaseException as e:  # surfaced by the test
            out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out, mlflow_uri


def _trial_runs(mlflow_uri: str, experiment: str) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    return client, sorted((r for r in runs if r.data.tags.get("largebatch.kind") == "trial"),
                          key=lambda r: r.info.start_time)


def _every_epoch_once(client, run_id: str, epochs: int) -> None:
    for key in PER_EPOCH:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), (key, steps)


def _kept_epoch(kept: list[Path]) -> int:
    return max(int(p.name.split("-")[1]) for p in kept)  # epoch-00007: the checkpoint after epoch 7 (1-based)


def _kept(study: str) -> list[Path]:
    """The study's local copies of checkpoints S3 did not take."""
    from largebatch.train.persist import kept_root

    return [p for p in kept_root().glob(f"{study}-*/**/epoch-*") if p.is_dir()]


def _training_process(in_process: bool) -> int:
    """The PID of the one process that trains: Tune's trial actor (in-process) or the Train worker, in our cluster
    (its address given: left to find one, the state API may pick another Ray on a shared machine, which refuses our
    token)."""
    import ray
    from ray.util.state import list_actors

    name = "ImplicitFunc" if in_process else "RayTrainWorker"
    address = ray.get_runtime_context().gcs_address
    actors = [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")]) if name in a.class_name]
    assert len(actors) == 1, actors
    return actors[0].pid


# In-process trials only. A Ray Train (TorchTrainer) run fails if S3 goes away between a checkpoint's copy and the
# controller registering it (its checkpoint snapshot write is not retryable: docs/design.md §8), and a test that
# stops S3 from outside cannot keep out of that window: a full CI run hit it once in the ray_train variant. The
# Train path's own keep-and-retry is covered by the run whose last checkpoint S3 never takes (below) and, with a
# fake storage, by tests/unit/test_checkpoint_persist.py.
@pytest.mark.parametrize("in_process", [True], ids=["in_process"])
def test_s3_down_mid_trial_loses_no_epoch_and_checkpoints_resume(s3_up, tmp_path, in_process):
    from largebatch.train.persist import UNPERSISTED_TAG

    srv = s3_up
    name = f"{STUDY['name']}-{'inproc' if in_process else 'train'}"
    th, out, mlflow_uri = _study_in_thread({**STUDY, "name": name,
                                            "tuner": {**STUDY["tuner"], "in_process": in_process}}, tmp_path)
    # ---- S3 goes away once the trial has persisted two checkpoints, between two of them
    _wait("two checkpoints on S3", lambda: _checkpointed(srv, name, in_process, 2), th, out)
    before = srv.objects()
    srv.stop()
    t_down = time.time()
    # the trial trains on while S3 is gone: S3 comes back after three checkpoints it did not take (the local folder
    # holds the newest alone), and not before 5 s
    first = _wait("a checkpoint kept locally", lambda: _kept(name), th, out, 60, 0.2)
    e0 = _kept_epoch(first)
    _wait("three checkpoints kept locally", lambda: [p for p in _kept(name) if _kept_epoch([p]) >= e0 + 2 * EVERY],
          th, out, 120, 0.2)
    time.sleep(max(0.0, 5 - (time.time() - t_down)))
    assert th.is_alive(), out
    srv.start()
    srv.put_back(before)
    t_up = time.time()
    # ---- S3 takes checkpoints again; then the process that trains is killed and resumes from the newest one
    old = set(srv.checkpoints(name))
    _wait("a checkpoint after the restart",
          lambda: set(srv.checkpoints(name)) - old and _checkpointed(srv, name, in_process), th, out, 120)
    at_kill = srv.checkpoints(name)
    newest = max(at_kill.values())
    assert newest < EPOCHS - 1, "the trial ended before it could be killed: give it more epochs"
    victim = _training_process(in_process)
    os.kill(victim, signal.SIGKILL)
    th.join(600)
    assert not th.is_alive(), "the study did not finish"
    assert "error" not in out, repr(out.get("error"))
    assert out["report"]["counts"]["completed"] == 1, out["report"]["counts"]

    client, kids = _trial_runs(mlflow_uri, name)
    assert len(kids) == 1
    run_id = kids[0].info.run_id
    assert kids[0].data.tags["status"] == "completed" and UNPERSISTED_TAG not in kids[0].data.tags
    _every_epoch_once(client, run_id, EPOCHS)  # across the outage and the restart
    # epochs went on while S3 was down: they reached MLflow during the outage
    during = [m.step for m in client.get_metric_history(run_id, "val_loss") if t_down <= m.timestamp / 1000 <= t_up]
    assert during, "no epoch ended while S3 was down"

    ckpts = srv.checkpoints(name)
    new = set(ckpts) - set(before_keys(before))
    assert new  # checkpoints persisted after the restart are there
    # the restarted trial continued from the newest checkpoint persisted before the kill: its first checkpoint holds
    # the next checkpointed epoch (from an older one, it would hold an earlier epoch again)
    after_kill = {k: e for k, e in ckpts.items() if k not in at_kill}
    assert after_kill and min(after_kill.values()) == newest + EVERY, (newest, sorted(after_kill.values()))
    final = max(ckpts, key=ckpts.get)
    history = json.loads(srv.client.get_object(Bucket=BUCKET, Key=final + "/history.json")["Body"].read())["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert not _kept(name), "a local copy outlived the persisted checkpoint that superseded it"


def before_keys(objects: dict[str, bytes]) -> set[str]:
    """The checkpoint folders among the objects copied out before the stop."""
    return {k.rsplit("/", 1)[0] for k in objects if k.endswith("/history.json")}


def test_a_trial_ending_while_s3_is_down_completes_and_names_its_local_checkpoint(s3_up, tmp_path):
    """In-process trials, one after the other: the first ends while S3 is down (its last checkpoint waits
    RETRY_S, then stays local and is named on its MLflow run); the second starts during the outage and finishes
    after S3 is back. The study completes with both."""
    from largebatch.train.persist import UNPERSISTED_TAG

    srv, name = s3_up, "e2e-s3-final"
    study = {**STUDY, "name": name,
             "base": {**STUDY["base"], "budget": {"epochs": 10},
                      "checkpoint": {"every_epochs": 1, "num_to_keep": 100}},
             "baseline": {"data.global_batch_size": 16, "budget.epochs": 4},
             "search": {"data.global_batch_size": {"grid": [32]}},
             "tuner": {**STUDY["tuner"], "max_concurrent": 1, "max_failures": 0}}
    th, out, mlflow_uri = _study_in_thread(study, tmp_path)
    _wait("the first checkpoint on S3", lambda: _checkpointed(srv, name, True), th, out)
    before = srv.objects()
    srv.stop()

    def first_done():
        _, kids = _trial_runs(mlflow_uri, name)
        return kids and kids[0].data.tags.get("status") == "completed" and kids[0]

    first = _wait("the first trial's end", first_done, th, out, 180, 0.5)
    time.sleep(3)  # the second trial starts, and trains, while S3 is still down
    assert th.is_alive(), out
    srv.start()
    srv.put_back(before)
    th.join(600)
    assert not th.is_alive(), "the study did not finish"
    assert "error" not in out, repr(out.get("error"))
    assert out["report"]["counts"]["completed"] == 2, out["report"]["counts"]

    client, kids = _trial_runs(mlflow_uri, name)
    assert [k.info.run_id for k in kids][0] == first.info.run_id and len(kids) == 2
    _every_epoch_once(client, kids[0].info.run_id, 4)
    _every_epoch_once(client, kids[1].info.run_id, 10)
    host, _, local = kids[0].data.tags[UNPERSISTED_TAG].partition(":")
    assert host == socket.gethostname()
    kept = json.loads(Path(local, "history.json").read_text())["history"]
    assert [h["epoch"] for h in kept] == [0, 1, 2, 3]  # the first trial's last checkpoint, on local disk
    assert UNPERSISTED_TAG not in kids[1].data.tags
    assert max(srv.checkpoints(name).values()) == 9  # the second trial's last checkpoint reached S3


def test_a_train_run_whose_last_checkpoint_s3_never_takes_reports_its_own_end(s3_up, tmp_path):
    """A Ray Train run (no Tune) whose storage goes away for good: its Result would carry the last *persisted*
    checkpoint's epoch; the outcome is rank 0's last report and full history, with the local checkpoint named."""
    import ray

    from largebatch.config import load_study, resolve
    from largebatch.train.persist import OUTCOME_ACTOR_PREFIX
    from largebatch.train.trial import run_trial

    srv, name = s3_up, "e2e-s3-train-run"
    study = {**STUDY, "name": name,
             "base": {**STUDY["base"], "data": {**STUDY["base"]["data"], "train_subset": 30000},
                      "budget": {"epochs": 9}, "checkpoint": {"every_epochs": 3}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    res = resolve(load_study(path).base, 1, train_size=30000)
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(run_trial(res, run_name=f"{name}-x",
                                                              storage_path=f"s3://{BUCKET}/{PREFIX}")), daemon=True)
    th.start()
    _wait("the first checkpoint on S3", lambda: _checkpointed(srv, name, False), th, out, 180)
    srv.stop()
    th.join(300)
    assert not th.is_alive()
    assert out["status"] == "completed", out.get("reason")
    assert [h["epoch"] for h in out["history"]] == list(range(9)) and out["epoch"] == 8
    local = Path(out["checkpoint_kept_at"].partition(":")[2])
    assert [h["epoch"] for h in json.loads((local / "history.json").read_text())["history"]] == list(range(9))
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(OUTCOME_ACTOR_PREFIX)]  # taken and ended


def test_a_study_ending_while_s3_is_down_finishes_and_names_the_local_checkpoint(s3_up, tmp_path, capfd):
    """S3 stops after the trial's first checkpoint and stays down past the study's end: the study still finishes,
    the report stays on local disk, and one line names the trial whose last checkpoint is only on local disk."""
    srv, name = s3_up, "e2e-s3-end"
    study = {**STUDY, "name": name, "base": {**STUDY["base"], "budget": {"epochs": 6}}}
    th, out, _ = _study_in_thread(study, tmp_path)
    _wait("the first checkpoint on S3", lambda: _checkpointed(srv, name, True), th, out)
    srv.stop()
    th.join(600)
    assert not th.is_alive(), "the study did not finish"
    assert "error" not in out, repr(out.get("error"))
    assert out["report"]["counts"]["completed"] == 1, out["report"]["counts"]
    kept = _kept(name)
    assert len(kept) == 1 and kept[0].name == "epoch-00006"
    line = next(ln for ln in capfd.readouterr().out.splitlines() if ln.startswith("[largebatch] not logged:"))
    assert f"the last checkpoint of trial B=16 none warmup=0ep to s3://{BUCKET}/{PREFIX}" in line
    assert str(kept[0]) in line and "the report upload" in line
