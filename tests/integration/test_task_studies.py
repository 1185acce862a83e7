"""Studies of tasks other than the default classification, end to end on a real local Ray through the CLI:
a user's task from outside the package (examples/regression_task.py, a map-style Dataset, val_mse, min) and the
built-in charlm smoke study. MLflow children, the report, its plots: all in the task's metric."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from largebatch.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def cluster(examples_importable, local_ray):
    return local_ray


def _tune(study: Path, root: Path) -> dict:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rc = main(["tune", str(study), "--smoke", "--mlflow", uri, "--storage", str(root / "ray")])
    assert rc == 0
    report_dir = next((root / "ray").glob("*/report"))
    return {"uri": uri, "dir": report_dir, "report": json.loads((report_dir / "report.json").read_text())}


def _children(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("largebatch.kind") == "study")
    return client, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.fixture(scope="module")
def regression_study(cluster, tmp_path_factory):
    return _tune(REPO_ROOT / "examples" / "regression.yaml", tmp_path_factory.mktemp("regression"))


def test_user_task_study_logs_its_metric_per_trial(regression_study):
    client, children = _children(regression_study["uri"], "teacher-regression")
    assert len(children) == 3  # baseline B=16 + B=256 x {none, linear}
    for c in children:
        assert c.data.tags["status"] == "completed", c.data.tags.get("reason")
        m = c.data.metrics
        hist = client.get_metric_history(c.info.run_id, "val_mse")
        assert sorted(h.step for h in hist) == [0, 1]  # each epoch once
        assert m["best_val_mse"] == pytest.approx(min(h.value for h in hist))  # best = lowest
        assert m["final_val_mse"] == pytest.approx(max(hist, key=lambda h: h.step).value)
        assert "val_acc" not in m
        assert c.data.params["task.name"] == "examples.regression_task:make_task"


def test_user_task_report_follows_the_min_direction(regression_study, capsys):
    r = regression_study["report"]
    assert (r["metric"], r["mode"], r["tolerance_units"]) == ("best_val_mse", "min", "relative")
    rows = [c for c in r["configs"] if c["global_batch_size"] == 256]
    best = next(p for p in r["per_batch"] if p["global_batch_size"] == 256)
    assert best["acc_mean"] == min(c["acc_mean"] for c in rows)  # the per-batch winner has the LOWEST mse
    b = r["baseline"]["acc_mean"]
    for c in r["configs"]:  # within tolerance: at most 10% above the baseline's mse
        assert c["within_tolerance"] == (c["acc_mean"] <= b * 1.1 + 1e-9)
        assert c["gap_points"] == pytest.approx((c["acc_mean"] - b) / b)
    front = [(c["wall_s_mean"], c["acc_mean"]) for c in r["pareto"]]
    assert all(a[1] > b_[1] for a, b_ in zip(front, front[1:]))  # slower points on the front have lower mse
    names = {p.name for p in regression_study["dir"].iterdir()}
    assert {"report.md", "val_mse_vs_batch.png", "val_mse_vs_wallclock.png", "learning_curves.png"} <= names
    md = (regression_study["dir"] / "report.md").read_text()
    # no metric value in percent (the input-pipeline note's shares of the step time are the only percentages)
    head = [line for line in md.split("##")[0].splitlines() if not line.startswith("- note: the step times include")]
    assert "val_mse (mean ± std)" in md and "lower is better" in md and "%" not in "\n".join(head)
    # `largebatch report` rebuilds the same report from MLflow alone, direction and units included
    capsys.readouterr()
    assert main(["report", "--mlflow", regression_study["uri"], "--experiment", "teacher-regression", "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt.pop("study")["name"] == "teacher-regression"
    assert rebuilt == json.loads(json.dumps({k: v for k, v in r.items() if k != "study"}, default=str))


def test_charlm_smoke_study_passes(cluster, tmp_path_factory):
    out = _tune(REPO_ROOT / "tune_spaces" / "charlm.yaml", tmp_path_factory.mktemp("charlm"))
    r = out["report"]
    assert (r["metric"], r["mode"]) == ("best_val_bpb", "min")
    assert r["counts"]["completed"] == 3 and r["baseline"] is not None
    for c in r["configs"]:
        assert 0 < c["acc_mean"] < 8.0  # bits per byte: below a uniform guess over 256 byte values
    _, children = _children(out["uri"], "charlm")
    for c in children:
        assert c.data.metrics["best_val_bpb"] == pytest.approx(c.data.metrics["best_val_loss"] / 0.6931471805599453)
    assert (out["dir"] / "val_bpb_vs_batch.png").is_file()
    print("charlm smoke:", json.dumps([(c["label"], round(c["acc_mean"], 4), round(c["wall_s_mean"], 2))
                                       for c in r["configs"]]))
