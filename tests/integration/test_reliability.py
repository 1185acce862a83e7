"""Reliability on a real local Ray (docs/design.md §10): a worker killed mid-trial resumes from its checkpoint; a study
whose driver died resumes with `largebatch tune --resume`. The kill/resume tests take minutes: they are marked slow
(`pytest -m slow`)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from procs import alive, cmdline, descendants

from largebatch.config import load_study

# one trial (no baseline, an empty grid), epochs of a couple of seconds so a worker can be killed mid-run
KILL_STUDY = {
    "name": "it-worker-kill",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 6000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 5},
             "checkpoint": {"every_epochs": 1}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_failures": 2},
}

# baseline + 4 points, one at a time; 1-worker trials train in Tune's trial process, so each needs enough work
# (seconds per trial) for the driver to be stopped with trials left to run
RESUME_STUDY = {
    "name": "it-driver-kill",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 30000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 3},
             "checkpoint": {"every_epochs": 1}},
    "search": {"data.global_batch_size": {"grid": [32, 64]}, "scaling.rule": {"grid": ["none", "sqrt"]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
              "max_failures": 0},
    "baseline": {"data.global_batch_size": 16},
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


def _study_in_thread(study_dict: dict, tmp_path: Path) -> tuple[threading.Thread, dict]:
    """Run a study on the module's local Ray in a thread; out['report'] or out['error'] once it ends."""
    from largebatch.tune.driver import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict))
    study = load_study(path)
    out: dict = {}

    def run():
        try:
            out["report"] = run_study(study, source=str(path), study_text=path.read_text(),
                                      run_root=str(tmp_path / "runs"))
        except BaseException as e:  # surfaced by the test
            out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


@pytest.mark.slow
@pytest.mark.parametrize("in_process", [False, True], ids=["ray_train", "in_process"])
def test_killed_worker_resumes_from_its_checkpoint(local_ray, tmp_path, in_process):
    """The process that trains is SIGKILLed after a checkpoint: a Train worker (Ray Train restarts the worker group)
    or, for an in-process trial, Tune's trial actor (Tune restarts the trial). Either way it resumes."""
    import ray
    from ray.util.state import list_actors

    from largebatch.train.trial import read_history

    study = {**KILL_STUDY, "tuner": {**KILL_STUDY["tuner"], "in_process": in_process}}
    th, out = _study_in_thread(study, tmp_path)
    storage = tmp_path / "runs" / "ray"
    deadline = time.time() + 240
    ckpts: list = []
    pattern = "*/*/checkpoint_*" if in_process else "*/checkpoint_*"  # Tune's trial folder / Train's run folder
    while time.time() < deadline and th.is_alive() and not ckpts:
        ckpts = [c for c in storage.glob(pattern) if c.is_dir()]
        time.sleep(0.2)
    assert ckpts, f"no checkpoint appeared: {out}"
    if in_process:
        actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "ImplicitFunc" in a.class_name]
    else:
        actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert actors, "no live process training the trial"
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
    last_ckpt_dir = sorted(c for c in train_dir.glob("checkpoint_*") if c.is_dir())[-1]
    final_ckpt = ray.train.Checkpoint.from_directory(str(last_ckpt_dir))
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


# baseline + 2 points, one at a time; trials with seconds of work (in-process trials finish digits in a blink)
ACTOR_KILL_STUDY = {
    "name": "it-actor-kill",
    "base": {"data": {"dataset": "fashion-mnist", "global_batch_size": 16, "train_subset": 30000},
             "model": {"name": "mlp", "hidden_sizes": [256, 256]},
             "optim": {"name": "sgd", "base_lr": 0.02, "base_batch_size": 16}, "budget": {"epochs": 4}},
    "search": {"data.global_batch_size": {"grid": [32, 64]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
              "max_failures": 0},
    "baseline": {"data.global_batch_size": 16},
}


@pytest.mark.slow
def test_killed_trial_actor_fails_that_trial_and_the_study_goes_on(local_ray, tmp_path):
    """SIGKILL the process that drives one trial (Tune's trial actor, as Ray's memory monitor or the kernel's OOM
    killer would): that trial is recorded failed with the reason, and the other trials still run to the end."""
    from ray.util.state import list_actors

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    th, out = _study_in_thread(ACTOR_KILL_STUDY, tmp_path)
    deadline, victim_run = time.time() + 300, None
    while time.time() < deadline and th.is_alive() and victim_run is None:
        client, children = _children(uri, "it-actor-kill")
        for r in children:  # the first trial that is running and has logged an epoch
            if r.data.tags.get("status") == "running" and "val_acc" in r.data.metrics:
                victim_run = r
        time.sleep(0.5)
    assert victim_run is not None, f"no trial got to its first epoch: {out}"
    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "ImplicitFunc" in a.class_name]
    assert len(actors) == 1, [a.class_name for a in actors]  # max_concurrent 1: the victim's
    os.kill(actors[0].pid, signal.SIGKILL)
    th.join(timeout=400)
    assert not th.is_alive(), "the study did not finish after a trial actor was killed"
    assert "error" not in out, out.get("error")
    counts = out["report"]["counts"]
    assert counts.get("failed") == 1 and counts.get("completed") == 2, counts
    client, children = _children(uri, "it-actor-kill")
    victim = client.get_run(victim_run.info.run_id)
    assert victim.data.tags["status"] == "failed" and victim.info.status == "FAILED"
    assert "trial process died" in victim.data.tags["reason"], victim.data.tags["reason"]
    others = [r for r in children if r.info.run_id != victim_run.info.run_id]
    assert all(r.data.tags["status"] == "completed" for r in others)


# one trial that raises in the worker: an Identity "model" has no parameters to train
RAISING_STUDY = {
    "name": "it-trial-raises",
    "base": {"data": {"dataset": "digits", "global_batch_size": 32},
             "model": {"name": "factory", "factory": "torch.nn:Identity"},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 1}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_failures": 0},
}


@pytest.mark.parametrize("in_process", [False, True], ids=["ray_train", "in_process"])
def test_a_trial_that_raises_is_failed_with_the_real_exception(local_ray, tmp_path, in_process):
    from mlflow.artifacts import load_text

    study = {**RAISING_STUDY, "tuner": {**RAISING_STUDY["tuner"], "in_process": in_process}}
    th, out = _study_in_thread(study, tmp_path)
    th.join(timeout=300)
    assert not th.is_alive() and "error" not in out, out.get("error")
    assert out["report"]["counts"].get("failed") == 1, out["report"]["counts"]
    client, children = _children(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "it-trial-raises")
    (run,) = children
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    # the exception raised in the worker, not the first line of Ray's WorkerGroupError around it
    reason = run.data.tags["reason"]
    kind = reason.split(":", 1)[0]
    assert kind in ("ValueError", "RuntimeError") and "parameter" in reason, reason
    text = load_text(f"{run.info.artifact_uri}/error.txt")
    assert "Traceback" in text and kind in text  # the whole chain
    if not in_process:
        assert "WorkerGroupError" in text  # Ray's wrapper is in the chain, not in the reason


def _tune_cmd(study_path: Path, root: Path, *extra: str, name: str = "it-driver-kill") -> list[str]:
    return [sys.executable, "-m", "largebatch", "tune", str(study_path), "--name", name,
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


def _stop_driver(proc: subprocess.Popen, sig: signal.Signals) -> tuple[int, list]:
    """Signal the driver; return its exit code and whatever of its processes (the local Ray head and everything
    below it, found by PID) is still alive 90 s later. The head must go by itself, even after a SIGKILL."""
    ours = descendants(proc.pid)
    assert any("raylet" in cmdline(p) for p in ours), "the driver started no local Ray head"
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=180)
    deadline = time.time() + 90
    while time.time() < deadline and any(alive(p) for p in ours):
        time.sleep(0.5)
    left = [(p, cmdline(p)[:120]) for p in ours if alive(p)]
    for p, _ in left:  # do not leak them into the rest of the run; the assertion below still fails
        os.kill(p, signal.SIGKILL)
    return rc, left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, sig):
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
            rc, left = _stop_driver(proc, sig)
    assert not left, f"Ray processes of the driver left after {sig.name}: {left}"
    client, before = _children(uri, "it-driver-kill")
    parent_before = {r.data.tags["mlflow.parentRunId"] for r in before}
    log = (tmp_path / "first.log").read_text()
    resume_cmd = _tune_cmd(path, tmp_path, "--resume")
    if sig == signal.SIGTERM:
        # a signal the driver can catch: the runs are closed, and it says how to continue
        assert rc == 128 + sig, (rc, log[-3000:])
        parent = client.get_run(next(iter(parent_before)))
        assert parent.info.status == "KILLED", parent.info.status
        assert all(r.info.status != "RUNNING" for r in before), [(r.info.run_name, r.info.status) for r in before]
        assert "interrupted by SIGTERM" in log and "finished trial(s) are safe in MLflow" in log, log[-3000:]
        printed = log[log.index("Continue the study with:"):].splitlines()[1].strip()
        assert printed.startswith("largebatch tune ") and printed.endswith(" --resume"), printed
        resume_cmd = [sys.executable, "-m", "largebatch", *shlex.split(printed)[1:]]  # exactly what it printed

    t0 = time.time()
    p = subprocess.run(resume_cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=480)
    resume_s = time.time() - t0
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "resuming" in p.stdout

    client, after = _children(uri, "it-driver-kill")
    assert len(after) == N_RESUME_TRIALS, [r.info.run_name for r in after]  # no trial got a second run
    assert {r.data.tags["mlflow.parentRunId"] for r in after} == parent_before  # the parent run was reused
    # finished trials were not re-run: their runs are still there (a trial Tune had not saved yet comes back under a
    # new Tune id and finds its run by its number), each epoch logged once (below)
    assert set(done.values()) <= {r.info.run_id for r in after}
    for r in after:
        assert r.data.tags["status"] == "completed", r.data.tags
        steps = [h.step for h in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == [0, 1, 2]  # each epoch exactly once, resumed trials included
    report = json.loads(next((tmp_path / "ray").glob("it-driver-kill-*/report/report.json")).read_text())
    assert report["counts"]["total"] == report["counts"]["completed"] == N_RESUME_TRIALS
    parent = client.get_run(parent_before.pop())
    assert parent.data.tags["status"] == "completed" and parent.info.status == "FINISHED"
    print(f"resume finished the study in {resume_s:.1f} s; {len(done)} finished trials kept")


# successive halving, one slot: the first (best) trial pauses at the rung (epoch 1) until the others have reached it
SHA_RESUME_LRS = [0.05, 0.0005, 0.02, 0.0002]
SHA_RESUME_STUDY = {
    **RESUME_STUDY,
    "name": "it-sha-resume",
    "search": {"optim.base_lr": {"grid": SHA_RESUME_LRS}},
    "tuner": {**RESUME_STUDY["tuner"], "scheduler": "sha", "grace_period_epochs": 1, "reduction_factor": 2,
              "profile": False},
}


@pytest.mark.slow
def test_sha_study_stopped_while_a_trial_waits_at_a_rung_resumes(tmp_path):
    """Tune saves no scheduler state: on --resume the paused trial comes back from its rung checkpoint and the rung
    is decided again among the unfinished trials. Nothing trains twice into MLflow, and the study ends."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(SHA_RESUME_STUDY))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def cmd(*extra: str) -> list[str]:
        return _tune_cmd(path, tmp_path, *extra, name="it-sha-resume")

    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd(), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
    paused = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and paused is None:
            client, children = _children(uri, "it-sha-resume")
            searched = [r for r in children if r.data.tags.get("arm") == "search"]
            for r in searched:  # a searched trial with its rung epoch logged, waiting while others are still to come
                steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
                if steps == [0] and r.data.tags.get("status") == "running" and len(searched) < len(SHA_RESUME_LRS):
                    paused = r.info.run_id
            time.sleep(0.3)
        assert paused is not None and proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            rc, left = _stop_driver(proc, signal.SIGTERM)
    assert not left, f"Ray processes of the driver left: {left}"
    assert rc == 128 + signal.SIGTERM, (tmp_path / "first.log").read_text()[-3000:]

    p = subprocess.run(cmd("--resume"), capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=480)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    client, after = _children(uri, "it-sha-resume")
    assert len(after) == 1 + len(SHA_RESUME_LRS), [r.info.run_name for r in after]  # no trial got a second run
    for r in after:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(len(steps))) and steps, (r.data.params.get("optim.base_lr"), steps)
        assert r.data.tags["status"] in ("completed", "stopped_early"), r.data.tags
    epochs = RESUME_STUDY["base"]["budget"]["epochs"]
    searched = [r for r in after if r.data.tags.get("arm") == "search"]
    full = [r for r in searched if len(client.get_metric_history(r.info.run_id, "val_acc")) == epochs]
    cut = [r for r in searched if r.data.tags["status"] == "stopped_early"]
    assert full and cut, [(r.data.params["optim.base_lr"], r.data.tags["status"]) for r in searched]
    assert paused in {r.info.run_id for r in after}  # the waiting trial went on in its own run
    # every rung was decided on val_acc, before and after the resume: who went past it scored no lower there
    curves = {r.data.params["optim.base_lr"]: [m.value for m in sorted(
        client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)] for r in searched}
    for rung in (1, 2):
        went_on = [c[rung - 1] for c in curves.values() if len(c) > rung]
        stopped = [c[rung - 1] for c in curves.values() if len(c) == rung]
        assert not (went_on and stopped) or min(went_on) >= max(stopped), (rung, curves)
    print("after resume:", curves)


# a tiny study (baseline + 1 point) on digits: the signal below comes once every trial has ended
REPORT_SIGNAL_STUDY = {
    "name": "it-report-signal",
    "base": {"data": {"dataset": "digits", "global_batch_size": 16},
             "model": {"name": "mlp", "hidden_sizes": [32]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 16}, "budget": {"epochs": 2}},
    "search": {"data.global_batch_size": {"grid": [64]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
              "profile": False},
    "baseline": {"data.global_batch_size": 16},
}

# the real CLI, with a real SIGTERM sent to itself as the report is being built (after every trial ended)
_SIGNAL_IN_REPORT = """
import os, signal, sys, time
import largebatch.report as report
built = report.build_report
def build_report(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises KeyboardInterrupt here
    return built(*a, **k)
report.build_report = build_report
from largebatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_signal_while_the_report_is_built_closes_the_parent_and_resume_finishes_it(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(REPORT_SIGNAL_STUDY))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = _tune_cmd(path, tmp_path, "--no-check", name="it-report-signal")
    p = subprocess.run([sys.executable, "-c", _SIGNAL_IN_REPORT, *cmd[3:]], capture_output=True, text=True,
                       env=_env(), cwd=tmp_path, timeout=420)
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    client, children = _children(uri, "it-report-signal")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children), \
        [(r.info.run_name, r.info.status) for r in children]
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED", parent.info.status  # not left RUNNING
    assert "interrupted by SIGTERM" in p.stderr + p.stdout
    out = p.stderr + p.stdout
    printed = out[out.index("Continue the study with:"):].splitlines()[1].strip()
    assert printed.startswith("largebatch tune ") and printed.endswith(" --resume"), printed
    assert not list((tmp_path / "ray").glob("it-report-signal-*/report/report.json"))

    r = subprocess.run([sys.executable, "-m", "largebatch", *shlex.split(printed)[1:]], capture_output=True,
                       text=True, env=_env(), cwd=tmp_path, timeout=420)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    client, after = _children(uri, "it-report-signal")
    assert {x.info.run_id for x in after} == {x.info.run_id for x in children}  # no trial ran again
    report = json.loads(next((tmp_path / "ray").glob("it-report-signal-*/report/report.json")).read_text())
    assert report["counts"]["completed"] == 2
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["status"] == "completed"
