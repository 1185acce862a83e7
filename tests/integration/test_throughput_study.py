"""Issue #17 item 1 on a real local Ray: the study measures each batch size's step time alone before the search,
logs it on the MLflow parent run (throughput.json, metrics at step = batch), caches it for the next study on the
same setup, and the report's speed-ups come from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from largebatch.config import load_study

STUDY = {
    "name": "it-throughput",
    "base": {"data": {"dataset": "digits", "global_batch_size": 16}, "model": {"name": "mlp", "hidden_sizes": [32]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 16, "momentum": 0.9},
             "budget": {"epochs": 2}},
    "search": {"data.global_batch_size": {"grid": [64, 256]}, "scaling.rule": {"grid": ["sqrt"]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1},
    "baseline": {"data.global_batch_size": 16, "scaling.rule": "none"},
    "report": {"tolerance": 50.0},  # every recipe within tolerance: the recommendation is the fastest
}


@pytest.fixture(scope="module")
def study_run(local_ray, tmp_path_factory):
    from largebatch.tune.driver import run_study

    root = tmp_path_factory.mktemp("throughput")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = load_study(path)
    report = run_study(study, source=str(path), study_text=path.read_text(), run_root=str(root / "runs"))
    return root, study, report


def _parent(report):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(report["study"]["tracking_uri"])
    return client, client.get_run(report["study"]["parent_run_id"])


def test_the_parent_run_holds_the_profile(study_run):
    _, _, report = study_run
    client, parent = _parent(report)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "throughput.json" in arts
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "throughput.json",
                                                       str(study_run[0]))).read_text())
    assert logged["status"] == "measured"
    assert [e["global_batch_size"] for e in logged["entries"]] == [16, 64, 256]
    assert all(e["step_s"] > 0 and e["steps_timed"] >= 5 for e in logged["entries"])
    assert parent.data.params["throughput_profile"] == "on"
    assert parent.data.params["tuner.profile"] == "True"
    hist = client.get_metric_history(parent.info.run_id, "throughput_step_s")
    assert sorted(h.step for h in hist) == [16, 64, 256]
    assert report["throughput"] == logged
    report_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/throughput_vs_batch.png" in report_arts


def test_the_reports_speedups_come_from_the_profile(study_run):
    _, _, report = study_run
    assert report["speed_basis"] == "projected"
    step_s = {e["global_batch_size"]: e["step_s"] for e in report["throughput"]["entries"]}
    base = report["baseline"]
    assert base["projected_s"] == pytest.approx(base["steps"] * step_s[16], rel=0.01)
    for c in report["configs"]:
        proj = c["steps"] * step_s[c["global_batch_size"]]
        assert c["projected_s"] == pytest.approx(proj, rel=0.01)
        assert c["time_s"] == c["projected_s"]
        assert c["speedup"] == pytest.approx(base["projected_s"] / c["projected_s"])
        assert c["wall_s_mean"] is not None  # the measured wall-clock stays beside it
    fastest = min(report["configs"], key=lambda c: c["projected_s"])
    assert report["recommended"]["label"] == fastest["label"]


def test_the_rebuilt_report_reads_the_logged_profile(study_run, capsys):
    from largebatch.cli import main

    _, _, report = study_run
    rc = main(["report", "--mlflow", report["study"]["tracking_uri"], "--experiment", "it-throughput", "--json"])
    assert rc == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["speed_basis"] == "projected"
    assert rebuilt["configs"] == json.loads(json.dumps(report["configs"]))


def test_a_second_study_on_the_same_setup_reuses_the_cached_profile(study_run, capsys):
    from largebatch.config import baseline_trial
    from largebatch.tune.throughput import CACHE_DIR, profile_study

    root, study, report = study_run
    cached = sorted((root / "runs" / CACHE_DIR).glob("*.json"))
    assert len(cached) == 3  # one file per batch size
    again = profile_study(study, study.base.model_dump(mode="json"),
                          baseline_trial(study).model_dump(mode="json"), root / "runs")
    assert again["status"] == "cached"
    assert [e["step_s"] for e in again["entries"]] == [e["step_s"] for e in report["throughput"]["entries"]]
    assert "measured alone in" not in capsys.readouterr().out  # nothing was measured again
