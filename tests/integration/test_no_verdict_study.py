"""Issue #26: a study in which every trial failed exits 1 with one line naming the first real cause and its hint
(failures.py no_verdict), and still writes its report. Its task reads a relative path from the study's folder,
which every trial must resolve as the driver did (tasks/build.py absolute_paths): the trials fail on their loss,
not on a missing file."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from largebatch.cli import main
from tests.integration.no_verdict_tasks import DRIVER_PID_ENV


@pytest.fixture(scope="module")
def cluster(examples_importable, local_ray):  # the repository on PYTHONPATH: workers import the task by name
    return local_ray


def test_a_study_whose_trials_all_failed_exits_1_naming_the_cause(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DRIVER_PID_ENV, str(os.getpid()))
    monkeypatch.chdir(tmp_path)
    torch.save(torch.randn(64, 4), tmp_path / "points.pt")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "no-verdict",
        "base": {"task": {"name": "tests.integration.no_verdict_tasks:per_example_loss_in_ray",
                          "kwargs": {"points": "points.pt"}},
                 "data": {"global_batch_size": 16}, "budget": {"epochs": 1},
                 "optim": {"base_lr": 0.01, "base_batch_size": 16}},
        "baseline": {"data.global_batch_size": 8},
        "search": {"data.global_batch_size": {"grid": [32]}},
        "tuner": {"metric": "val_mse", "max_failures": 0, "cpus_per_worker": 1}}))
    # --no-check: the trials must run (the task also passes the pre-flight check, made in this process)
    rc = main(["tune", "s.yaml", "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage",
               str(tmp_path / "ray"), "--no-check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    cause = ("RuntimeError: grad can be implicitly created only for scalar outputs; the task's loss must be a "
             "scalar mean over the batch: reduce it with .mean()")
    assert err[-1].startswith("largebatch: no verdict: the baseline failed") and err[-1].endswith(cause)
    assert "FileNotFoundError" not in "\n".join(err)  # points.pt was found in every trial
    report = json.loads(next((tmp_path / "ray").glob("*/report/report.json")).read_text())
    assert report["study"]["no_verdict"] == err[-1].removeprefix("largebatch: ")
