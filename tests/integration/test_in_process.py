"""1-worker trials in Tune's trial process (train/inprocess.py) against the same trials under Ray Train's
TorchTrainer: the same seed gives the same per-epoch metrics, logged the same way, on a real local Ray."""
from __future__ import annotations

import math

import yaml

from largebatch.config import load_study

STUDY = {
    "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [64]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 3},
             "seed": 7},
    "search": {"data.global_batch_size": {"grid": [128]}, "scaling.rule": {"grid": ["sqrt"]},
               "schedule.warmup_epochs": {"grid": [1]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1},
    "baseline": {"data.global_batch_size": 32},
    "report": {"tolerance": 1.0},
}
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "steps", "examples_seen")


def _run(tmp_path, in_process: bool) -> dict:
    from mlflow.tracking import MlflowClient

    from largebatch.tune.driver import run_study

    name = f"it-inproc-{'yes' if in_process else 'no'}"
    study = {**STUDY, "name": name, "tuner": {**STUDY["tuner"], "in_process": in_process}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    report = run_study(load_study(path), source=str(path), study_text=path.read_text(),
                       run_root=str(tmp_path / name), live=False)
    assert report["counts"].get("completed") == 2, report["counts"]
    client = MlflowClient(report["study"]["tracking_uri"])
    exp = client.get_experiment_by_name(name)
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get("largebatch.kind") != "trial":
            continue
        series = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                  for k in COMPARED}
        out[run.info.run_name] = (series, run.data.tags, run.data.metrics)
    return out


def test_in_process_trials_log_what_ray_train_trials_log(local_ray, tmp_path):
    ray_train = _run(tmp_path, in_process=False)
    in_proc = _run(tmp_path, in_process=True)
    assert sorted(ray_train) == sorted(in_proc) == ["B=128 sqrt warmup=1ep", "baseline B=32 none warmup=0ep"]
    for name in ray_train:
        a, tags_a, last_a = ray_train[name]
        b, tags_b, last_b = in_proc[name]
        assert tags_a.get("trial_runner") is None and tags_b["trial_runner"] == "in_process"
        for key in COMPARED:
            assert [s for s, _ in a[key]] == [s for s, _ in b[key]] == [0, 1, 2], (name, key)  # each epoch once
            for (_, x), (_, y) in zip(a[key], b[key]):
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7), (name, key, x, y)
        # the in-process trial skipped Train's start-up: its start-up share is far smaller
        assert last_b["startup_s"] < last_a["startup_s"], (last_a["startup_s"], last_b["startup_s"])
