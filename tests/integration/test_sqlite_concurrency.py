"""The embedded default store (sqlite:/// under the run folder) under concurrency: 8 in-process trials at once on a
local head with 8 (fake) CPUs, each logging every epoch from its own process. No "database is locked" anywhere
(the driver, the trials' logs), no epoch lost or logged twice: each child run holds, for every per-epoch metric,
exactly the epochs its trial reported to Tune (its result.json), once each."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from overlap import max_overlap

pytestmark = pytest.mark.slow

N_AT_ONCE = 8
EPOCHS = 30
STUDY = {
    "name": "it-sqlite-8",
    "base": {"seed": 0, "data": {"dataset": "digits", "global_batch_size": 32},
             "model": {"name": "mlp", "hidden_sizes": [128, 128]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32, "momentum": 0.9},
             "budget": {"epochs": EPOCHS}},
    # 4 batch sizes x 2 rules x 2 seeds = 16 trials, 8 at a time: two waves of 8 writers on one SQLite file
    "search": {"data.global_batch_size": {"grid": [8, 16, 32, 64]}, "scaling.rule": {"grid": ["none", "sqrt"]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "in_process": True,
              "max_concurrent": N_AT_ONCE, "seeds": [0, 1], "profile": False, "max_failures": 0},
    "report": {"tolerance": 1.0},
}
N_TRIALS = 16
PROBLEMS = ("database is locked", "MLflow refused", "MLflow unreachable", "OperationalError")


@pytest.fixture(scope="module")
def ray_8_cpus():
    import ray

    from largebatch.raylib import init_ray, shutdown_ray

    assert not ray.is_initialized()
    info = init_ray(None, num_cpus=N_AT_ONCE)  # fake CPUs: 8 trial processes on however many cores there are
    assert info["cpus"] == N_AT_ONCE, info
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    yield session
    shutdown_ray()


def test_eight_in_process_trials_at_once_on_sqlite(ray_8_cpus, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    from largebatch.config import load_study
    from largebatch.tune.driver import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    t0 = time.time()
    report = run_study(load_study(path), source=str(path), study_text=path.read_text(),
                       run_root=str(tmp_path / "runs"), live=False)
    wall_s = time.time() - t0
    driver_out = "".join(capfd.readouterr())
    uri = report["study"]["tracking_uri"]
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert report["counts"].get("completed") == N_TRIALS, report["counts"]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY["name"])
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("largebatch.kind") == "trial"]
    assert len(children) == N_TRIALS and len({r.data.tags["largebatch.trial_id"] for r in children}) == N_TRIALS

    # the epochs each trial reported to Tune, from its own result.json (one line per reported epoch)
    reported: dict[str, list[int]] = {}
    for f in (tmp_path / "runs").rglob("result.json"):
        epochs = [int(json.loads(line)["epoch"]) for line in f.read_text().splitlines() if line.strip()]
        reported[f.parent.name] = epochs
    per_epoch_keys = ("val_acc", "val_loss", "train_loss", "lr")
    total_points = 0
    windows = []  # each trial's writing window: its first and last per-epoch write (MLflow's timestamps)
    for r in children:
        tune_epochs = reported[r.data.tags["largebatch.trial_dir"]]
        assert sorted(tune_epochs) == list(range(EPOCHS)), (r.info.run_name, tune_epochs)
        for key in per_epoch_keys:
            history = client.get_metric_history(r.info.run_id, key)
            steps = [m.step for m in history]
            # none lost or twice
            assert sorted(steps) == sorted(set(tune_epochs)), (r.info.run_name, key, sorted(steps))
            total_points += len(steps)
            if key == "val_loss":
                windows.append((min(m.timestamp for m in history), max(m.timestamp for m in history)))
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed", r.data.tags

    # 8 trials really wrote at once: their writing windows overlap 8 deep
    overlap = max_overlap(windows)
    t_min = min(a for a, _ in windows)
    assert overlap == N_AT_ONCE, (overlap, sorted(((a - t_min) / 1e3, (b - t_min) / 1e3) for a, b in windows))

    # nothing about a locked or refused store, in the driver or any trial process's log
    logs = [p for p in (ray_8_cpus / "logs").glob("*") if p.is_file() and p.suffix in (".out", ".err", ".log")]
    found = [(p.name, w) for p in logs for w in PROBLEMS if w in p.read_text(errors="replace")]
    found += [("driver", w) for w in PROBLEMS if w in driver_out]
    assert not found, found
    print(f"{N_TRIALS} trials, {N_AT_ONCE} at once (overlap {overlap}), {total_points} per-epoch points in "
          f"{wall_s:.1f} s; {len(logs)} Ray log files scanned")
