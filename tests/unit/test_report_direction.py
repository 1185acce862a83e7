"""The report in a `min` metric (a loss, an MSE, bits per byte): best, gap, tolerance units, Pareto front, max safe
batch, recommendation and plots all follow the direction; the accuracy report stays as it was."""
from __future__ import annotations

import json

import pytest

from largebatch.errors import BadInput
from largebatch.metrics import best_of, reported_metrics, summary_name
from largebatch.report import build_report, format_markdown, format_table, write_report


def rec(batch, rule, mse, wall, *, baseline=False, status="completed", seed=0):
    return {"trial_id": f"t-{batch}-{rule}-{seed}", "name": f"B={batch} {rule}", "is_baseline": baseline,
            "global_batch_size": batch, "rule": rule, "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": 0.02,
            "peak_lr": 0.02, "seed": seed, "status": status, "reason": None, "best_val_mse": mse,
            "final_val_mse": mse, "wall_s": wall, "steps": 100,
            "history": [{"epoch": 0, "val_mse": mse * 2, "wall_s": wall / 2}, {"epoch": 1, "val_mse": mse,
                                                                                "wall_s": wall}]}


def study() -> list[dict]:
    return [rec(16, "none", 0.050, 100.0, baseline=True),
            rec(256, "none", 0.300, 10.0),      # naive large batch: 6x the baseline's error
            rec(256, "linear", 0.052, 11.0),    # the recipe: 4% above the baseline
            rec(1024, "none", 0.450, 4.0),
            rec(1024, "linear", 0.070, 5.0)]    # 40% above


def build(**kw):
    return build_report(study(), metric="best_val_mse", mode="min", **kw)


def test_best_is_the_lowest_and_gaps_are_positive_when_worse():
    r = build(tolerance=0.005)  # absolute units by default for a min metric
    assert r["tolerance_units"] == "absolute"
    p256 = next(p for p in r["per_batch"] if p["global_batch_size"] == 256)
    assert p256["rule"] == "linear" and p256["acc_mean"] == 0.052
    assert p256["gap_points"] == pytest.approx(0.002) and p256["within_tolerance"]
    assert p256["noscale_acc"] == 0.300 and p256["gap_closed_points"] == pytest.approx(0.248)
    assert r["max_safe_batch"] == 256
    assert r["recommended"]["label"].startswith("B=256 linear")


@pytest.mark.parametrize("tol, units, safe", [(0.05, "relative", 256), (0.5, "relative", 1024),
                                              (0.01, "relative", 16), (0.02, "absolute", 1024)])
def test_tolerance_units(tol, units, safe):
    assert build(tolerance=tol, units=units)["max_safe_batch"] == safe


def test_pareto_front_minimises_both_wall_clock_and_the_metric():
    front = [(c["global_batch_size"], c["rule"]) for c in build()["pareto"]]
    # 1024 none (fastest), 1024 linear (faster than anything lower), 256 linear, then the baseline (lowest mse)
    assert front == [(1024, "none"), (1024, "linear"), (256, "linear"), (16, "none")]


def test_rendering_names_the_metric_and_its_units(tmp_path):
    r = build(tolerance=0.1, units="relative")
    text = format_table(r)
    assert "val_mse (mean ± std)" in text and "gap vs baseline (rel)" in text and "lower is better" in text
    assert "%" not in text  # an MSE is not shown as a percentage
    assert "wall-clock vs val_mse" in format_markdown(r)
    names = {p.name for p in write_report(r, study(), tmp_path)}
    assert {"val_mse_vs_batch.png", "val_mse_vs_wallclock.png", "learning_curves.png"} <= names
    assert json.loads((tmp_path / "report.json").read_text())["mode"] == "min"


@pytest.mark.parametrize("kw", [{"mode": "down"}, {"units": "percent"}, {"metric": "val_mse"}])
def test_bad_direction_or_units_are_bad_input(kw):
    with pytest.raises(BadInput):
        build_report(study(), **{"metric": "best_val_mse", "mode": "min", **kw})


def test_metric_vocabulary():
    assert reported_metrics([("acc", "max", True)]) == {"train_loss": "min", "val_loss": "min", "val_acc": "max",
                                                        "train_acc": "max"}
    assert summary_name("val_bpb") == "best_val_bpb" and summary_name("final_val_acc") == "final_val_acc"
    assert best_of([0.3, float("nan"), 0.1, 0.2], "min") == 0.1 and best_of([0.3, 0.9], "max") == 0.9
