"""Reliability on a real local Ray (DESIGN §10): a worker killed mid-trial resumes from its checkpoint; a study
whose driver died resumes with `largebatch tune --resume`. The kill/resume tests take minutes: they are marked slow (`pytest -m slow`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from largebatch.config import load_study

# one trial (no baseline, an empty grid), epochs of a couple of seconds so a worker can be killed mid-run
KILL_STUDY = {
    "name": "it-worker-kill",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 6000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 5}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_failures": 2},
}

# baseline + 4 points, one at a time
RESUME_STUDY = {
    "name": "it-driver-kill",
    "base": {"data": {"dataset": "digits", "global_batch_size": 32},
             "model": {"name": "mlp", "hidden_sizes": [64]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 3}},
    "search": {"data.global_batch_size": {"grid": [64, 128]}, "scaling.rule": {"grid": ["none", "sqrt"]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
              "max_failures": 0},
    "baseline": {"data.global_batch_size": 32},
    "report": {"tolerance": 1.0},
}
N_RESUME_TRIALS = 5


def _children(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("largebatch.kind") == "trial"]


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint(local_ray, tmp_path):
    import ray
    from ray.util.state import list_actors

    from largebatch.train.trial import read_history
    from largebatch.tune.driver import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(KILL_STUDY))
    study = load_study(path)
    out: dict = {}

    def run():
        try:
            out["report"] = run_study(study, source=str(path), study_text=path.read_text(),
                                      run_root=str(tmp_path / "runs"))
        except BaseException as e:  # surfaced below
            out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    storage = tmp_path / "runs" / "ray"
    deadline = time.time() + 240
    ckpts: list = []
    while time.time() < deadline and th.is_alive() and not ckpts:
        ckpts = [c for c in storage.glob("*/checkpoint_*") if c.is_dir()]
        time.sleep(0.2)
    assert ckpts, f"no checkpoint appeared: {out}"
    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert actors, "no live RayTrainWorker"
    victim = actors[0].pid
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive(), "the study did not finish after the worker was killed"
    assert "error" not in out, out.get("error")
    report = out["report"]
    assert report["counts"].get("completed") == 1, report["counts"]

    # the trial resumed from its checkpoint, not from scratch: the Train run has several checkpoints and the last
    # one's history holds every epoch exactly once, in order
    train_dir = ckpts[0].parent
    final_ckpt = ray.train.Checkpoint.from_directory(str(sorted(c for c in train_dir.glob("checkpoint_*") if c.is_dir())[-1]))
    history, _ = read_history(final_ckpt)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]

    client, children = _children(report["study"]["tracking_uri"], "it-worker-kill")
    assert len(children) == 1  # one MLflow run for the trial, across the restart
    run = children[0]
    assert run.data.tags["status"] == "completed"
    hist = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(h.step for h in hist) == [0, 1, 2, 3, 4]  # each epoch exactly once
    # a new worker process did the rest
    assert not any(a.pid == victim for a in list_actors(filters=[("state", "=", "ALIVE")]))
    print(f"worker {victim} killed after checkpoint {ckpts[0].name}; study finished {time.time() - t_kill:.1f} s "
          f"later")


def _tune_cmd(study_path: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "largebatch", "tune", str(study_path), "--name", "it-driver-kill",
            "--storage", str(root / "ray"), "--mlflow", f"sqlite:///{root / 'mlflow.db'}", *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the CLI starts its own local head
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_resume_with_nothing_to_resume_is_one_line_exit_2(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(RESUME_STUDY))
    p = subprocess.run(_tune_cmd(path, tmp_path, "--resume"), capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "nothing to resume" in lines[0], p.stderr


def _children_of(pid: int) -> list[int]:
    """Direct children of a PID, from /proc (no psutil dependency)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, then stop the Ray head it started (its `ray start --head --block` child) by PID."""
    heads = [c for c in _children_of(proc.pid) if "start" in _cmdline(c) and "--head" in _cmdline(c)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for h in heads:
        os.kill(h, signal.SIGTERM)  # --block: the head stops its own processes
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(h) for h in heads):
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(RESUME_STUDY))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_tune_cmd(path, tmp_path), stdout=log, stderr=subprocess.STDOUT, env=_env(),
                            cwd=tmp_path)
    try:
        deadline = time.time() + 300
        done: dict = {}
        while time.time() < deadline and proc.poll() is None:
            _, children = _children(uri, "it-driver-kill")
            done = {r.data.tags["largebatch.trial_id"]: r.info.run_id for r in children
                    if r.data.tags.get("status") == "completed"}
            if len(done) >= 2:
                break
            time.sleep(1)
        assert len(done) >= 2 and proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            _kill_driver(proc)
    _, before = _children(uri, "it-driver-kill")
    parent_before = {r.data.tags["mlflow.parentRunId"] for r in before}

    t0 = time.time()
    p = subprocess.run(_tune_cmd(path, tmp_path, "--resume"), capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=480)
    resume_s = time.time() - t0
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "resuming" in p.stdout

    client, after = _children(uri, "it-driver-kill")
    assert len(after) == N_RESUME_TRIALS, [r.info.run_name for r in after]  # no trial got a second run
    assert {r.data.tags["mlflow.parentRunId"] for r in after} == parent_before  # the parent run was reused
    by_trial = {r.data.tags["largebatch.trial_id"]: r for r in after}
    for trial_id, run_id in done.items():  # finished trials were not re-run
        assert by_trial[trial_id].info.run_id == run_id
    for r in after:
        assert r.data.tags["status"] == "completed", r.data.tags
        steps = [h.step for h in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == [0, 1, 2]  # each epoch exactly once, resumed trials included
    report = json.loads(next((tmp_path / "ray").glob("it-driver-kill-*/report/report.json")).read_text())
    assert report["counts"]["total"] == report["counts"]["completed"] == N_RESUME_TRIALS
    parent = client.get_run(parent_before.pop())
    assert parent.data.tags["status"] == "completed"
    print(f"resume finished the study in {resume_s:.1f} s; {len(done)} finished trials kept")
