"""Issue #26: a relative path in task.kwargs (or data.path) means the same file on the driver, in the throughput
profile and in every trial, whatever folder the trial runs in (tasks/build.py absolute_paths, tune/runtime.py)."""
from __future__ import annotations

import sys

import torch
import yaml

from largebatch.tasks.build import absolute_paths

TASK = '''
import torch
from torch import nn
from largebatch.tasks import Metric, Task, TaskData


def make_task(points, mode="mean"):
    def data(cfg):
        x = torch.load(points)
        return TaskData(train=(x, x.sum(1, keepdim=True)), eval=(x, x.sum(1, keepdim=True)))

    return Task(data=data, model=lambda cfg, d: nn.Linear(4, 1), loss=lambda o, y: (o - y).square().mean(),
                metrics=(Metric("mse", "min", lambda o, y: (o - y).square().flatten()),))
'''


def test_kwargs_that_name_files_become_absolute_and_others_stay(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.pt").write_text("")
    tree = {"task": {"name": "m:f", "kwargs": {"points": "data/p.pt", "mode": "mean", "nested": {"f": ["data"]},
                                               "url": "s3://b/k", "n": 3, "abs": "/x/y"}},
            "data": {"path": "folder/x.npz", "dataset": "npz"}}
    out = absolute_paths(tree, str(tmp_path))
    kw = out["task"]["kwargs"]
    assert kw["points"] == str(tmp_path / "data" / "p.pt") and kw["nested"] == {"f": [str(tmp_path / "data")]}
    assert (kw["mode"], kw["url"], kw["n"], kw["abs"]) == ("mean", "s3://b/k", 3, "/x/y")  # names nothing there
    assert out["data"]["path"] == str(tmp_path / "folder" / "x.npz")  # data.path is a path even before it exists
    assert tree["task"]["kwargs"]["points"] == "data/p.pt"  # the input is not changed
    assert absolute_paths({"data": {"path": "s3://b/p"}}, str(tmp_path))["data"]["path"] == "s3://b/p"


def test_a_trial_in_another_folder_reads_the_drivers_file(tmp_path, monkeypatch):
    from largebatch.config import load_study
    from largebatch.tasks import build_data, task_of
    from largebatch.tune.runtime import StudyRuntime

    driver = tmp_path / "driver"
    (driver / "data").mkdir(parents=True)
    torch.save(torch.ones(32, 4), driver / "data" / "a.pt")
    torch.save(torch.zeros(16, 4), driver / "data" / "b.pt")
    (driver / "lb_relpath_task.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(driver))
    sys.modules.pop("lb_relpath_task", None)
    (driver / "s.yaml").write_text(yaml.safe_dump({
        "name": "rel", "base": {"task": {"name": "lb_relpath_task:make_task", "kwargs": {"points": "data/a.pt"}},
                                "data": {"global_batch_size": 8}},
        "search": {"task.kwargs.points": {"grid": ["data/a.pt", "data/b.pt"]}}, "tuner": {"metric": "val_mse"}}))
    monkeypatch.chdir(driver)
    study = load_study("s.yaml")  # the load check reads data/a.pt from here
    rt = StudyRuntime(base_tree=absolute_paths(study.base.model_dump(mode="json"), str(driver)),
                      baseline_tree={}, source="s.yaml", seeds=(0,), workers_per_trial=1, cpus_per_worker=1,
                      use_gpu=False, max_failures=0, train_sizes={0: 32}, tracking_uri="", experiment_id="",
                      parent_run_id="", run_name="", storage_path="", cwd=str(driver))
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    monkeypatch.chdir(trial_dir)  # where Tune runs a trial: data/a.pt is not here
    for rel, rows in (("data/a.pt", 32), ("data/b.pt", 16)):
        spec, _ = rt.trial_spec({"arm": "search", "seed": 0, "overrides": {"task.kwargs.points": rel}})
        assert spec.cfg.task.kwargs["points"] == str(driver / rel)
        assert build_data(task_of(spec.cfg), spec.cfg).train_size == rows
