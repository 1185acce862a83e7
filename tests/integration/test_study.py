"""A whole study on a real local Ray: Tune over Train V2, MLflow parent/child runs, report, diverged trials."""
from __future__ import annotations

import json

import pytest
import yaml

from largebatch.config import load_study

STUDY = {
    "name": "it-digits",
    "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [64]},
             "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32}, "budget": {"epochs": 3}},
    # 3 searched configs + the baseline; base_lr 500 diverges
    "search": {"data.global_batch_size": {"grid": [128]}, "optim.base_lr": {"grid": [0.05, 500.0]},
               "scaling.rule": {"grid": ["none", "sqrt"]}},
    "tuner": {"searcher": "grid", "workers_per_trial": 2, "cpus_per_worker": 1},
    "baseline": {"data.global_batch_size": 32, "scaling.rule": "none", "optim.base_lr": 0.05},
    "report": {"tolerance": 1.0},
}


@pytest.fixture(scope="module")
def study_run(local_ray, tmp_path_factory):
    from largebatch.tune.driver import run_study

    root = tmp_path_factory.mktemp("study")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = load_study(path)
    report = run_study(study, source=str(path), study_text=path.read_text(), run_root=str(root / "runs"))
    return root, report


def _runs(root, report):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(report["study"]["tracking_uri"])
    exp = client.get_experiment_by_name("it-digits")
    runs = client.search_runs([exp.experiment_id])
    return client, runs


def test_mlflow_holds_one_parent_and_a_child_per_trial(study_run):
    root, report = study_run
    client, runs = _runs(root, report)
    parents = [r for r in runs if r.data.tags.get("largebatch.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1
    assert len(children) == 5  # baseline + 2 lr x 2 rules
    names = {c.info.run_name for c in children}
    assert "baseline B=32 none warmup=0ep" in names
    assert "B=128 sqrt warmup=0ep base_lr=0.05" in names
    for c in children:
        p, m = c.data.params, c.data.metrics
        for key in ("data.global_batch_size", "per_worker_batch", "grad_accum_steps", "num_workers", "peak_lr",
                    "scaling.rule", "optim.base_lr", "warmup_steps", "optim.name"):
            assert key in p, key
        assert c.data.tags["status"] in ("completed", "diverged")
        assert "wall_s" in m and "startup_s" in m
        if c.data.tags["status"] == "completed":
            hist = client.get_metric_history(c.info.run_id, "val_acc")
            assert sorted(h.step for h in hist) == [0, 1, 2]  # each epoch exactly once, step = epoch
            for key in ("train_loss", "train_acc", "val_loss", "gen_gap", "lr", "throughput", "epoch_s"):
                assert key in m, key
    # the parent carries the study file and the report
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"study.yaml", "search_space.json", "report"} <= arts


def test_diverged_trials_are_reported_not_fatal(study_run):
    _, report = study_run
    assert report["counts"]["diverged"] == 2  # base_lr 500 with none and sqrt
    assert report["counts"]["completed"] == 3
    assert all(f["status"] == "diverged" for f in report["failures"])


def test_report_fields_consistent_with_runs(study_run):
    root, report = study_run
    client, runs = _runs(root, report)
    for key in ("baseline", "per_batch", "max_safe_batch", "pareto", "recommended", "configs"):
        assert key in report
    base_run = next(r for r in runs if r.data.tags.get("is_baseline") == "True")
    assert report["baseline"]["acc_mean"] == pytest.approx(base_run.data.metrics["best_val_acc"])
    row128 = next(r for r in report["per_batch"] if r["global_batch_size"] == 128)
    best128 = max(r.data.metrics["best_val_acc"] for r in runs if r.data.params.get("data.global_batch_size") == "128"
                  and r.data.tags.get("status") == "completed")
    assert row128["acc_mean"] == pytest.approx(best128)
    out = json.loads((root / "runs" / "ray").glob("it-digits-*/report/report.json").__next__().read_text())
    assert out["max_safe_batch"] == report["max_safe_batch"]


def test_report_rebuilt_from_mlflow_equals_the_written_one(study_run, capsys):
    from largebatch.cli import main

    root, report = study_run
    rc = main(["report", "--mlflow", report["study"]["tracking_uri"], "--experiment", "it-digits", "--json"])
    assert rc == 0
    got = capsys.readouterr()
    rebuilt = json.loads(got.out)
    assert "printed only, nothing written: --out DIR" in got.err  # says that it wrote nothing
    study = rebuilt.pop("study")
    assert study["parent_run_id"] == report["study"]["parent_run_id"]
    # the cost and payback are rebuilt from MLflow alone too (report/verdict.py)
    for key in ("cost_baseline_runs", "cost_training_s", "payback_trainings"):
        assert study[key] == report["study"][key], key
    written = {k: v for k, v in report.items() if k != "study"}
    assert rebuilt == json.loads(json.dumps(written, default=str))
    out = root / "rebuilt"
    assert main(["report", "--mlflow", report["study"]["tracking_uri"], "--experiment", "it-digits",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"files to {out.resolve()}: report.json, report.md" in err and "report.html" in err
    assert (out / "report.html").exists()
