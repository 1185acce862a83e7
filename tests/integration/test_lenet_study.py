"""tune_spaces/lenet-batch.yaml's smoke variant end to end on a real local Ray and MLflow: LeNet on 512 Fashion-MNIST
examples, full-batch SGD and Rprop (one optimizer step per epoch) against the B=16 SGD baseline, with the report's
time-and-accuracy plot (issue #30)."""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from largebatch.config import load_study
from largebatch.config.fullbatch import full_batch_study
from largebatch.tune.driver import run_study

STUDY = Path(__file__).resolve().parents[2] / "tune_spaces" / "lenet-batch.yaml"
FULL = 512  # the smoke variant's data.train_subset


def test_lenet_smoke_study_trains_at_the_full_batch(local_ray, tmp_path):
    study = full_batch_study(load_study(STUDY, smoke=True), str(STUDY))
    report = run_study(study, source=str(STUDY), study_text=STUDY.read_text(), run_root=str(tmp_path / "runs"),
                       live=False)
    info = report["study"]
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    (base,) = [r for r in runs if r.data.params["arm"] == "baseline"]
    assert base.data.params["data.global_batch_size"] == "16" and base.data.params["steps_per_epoch"] == "32"
    searched = {r.data.params["optim.name"]: r for r in runs if r.data.params["arm"] == "search"}
    assert set(searched) == {"sgd", "rprop"}
    for name, r in searched.items():
        p = r.data.params
        assert (p["data.global_batch_size"], p["steps_per_epoch"], p["model.name"]) == (str(FULL), "1", "lenet"), name
        assert r.data.tags["status"] in ("completed", "stopped_early"), (name, r.data.tags)
        steps = sorted(client.get_metric_history(r.info.run_id, "steps"), key=lambda m: m.step)
        assert [int(m.value) for m in steps] == [m.step + 1 for m in steps]  # one optimizer step per epoch
        losses = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "train_loss"), key=lambda m: m.step)]
        assert len(losses) >= 2 and losses[-1] < losses[0], (name, losses)  # full-batch steps train
    assert searched["rprop"].data.params["optim.etas"] == "[0.5, 1.2]"  # its own settings are logged

    rprop = [c for c in report["configs"] if c["optimizer"] == "rprop"]
    assert [c["global_batch_size"] for c in rprop] == [FULL]
    out = next((tmp_path / "runs").rglob("report/report.json")).parent
    assert (out / "time_and_acc_vs_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["baseline"]["global_batch_size"] == 16
