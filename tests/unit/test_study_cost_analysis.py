"""bench/study_cost.py: the cost of a study in baseline runs of projected training, and the goal rows (budgeted
study cost <= 3, its speed-up to target >= 0.9 of the grid's, the same recommendation in every repetition)."""
from __future__ import annotations

import pytest

from bench import study_cost as sc

STEP_S = {16: 0.001, 256: 0.003, 1024: 0.01}


def _r(batch, steps, baseline=False, ramp=False):
    return {"global_batch_size": batch, "steps": steps, "is_baseline": baseline, "batch_ramp": ramp}


def test_cost_is_every_trials_projected_training_over_the_baselines_run():
    records = [_r(16, 1000, baseline=True), _r(256, 200), _r(1024, 50)]
    # (1.0 + 0.6 + 0.5) / 1.0
    assert sc.cost_runs(records, STEP_S) == pytest.approx(2.1)
    two_seeds = records + [_r(16, 1000, baseline=True)]
    assert sc.cost_runs(two_seeds, STEP_S) == pytest.approx(3.1)  # the unit is one baseline run, the mean of seeds
    assert sc.cost_runs([_r(256, 200)], STEP_S) is None  # no baseline: no unit
    assert sc.cost_runs([_r(32, 10, baseline=True)], STEP_S) is None  # the baseline's batch was not profiled


def _study(cost, speedup, batch=256, rule="sqrt"):
    return {"cost_runs": cost, "recommended": {"global_batch_size": batch, "rule": rule, "warmup_epochs": 0.0,
                                               "peak_lr": 0.04, "target_speedup": speedup}}


def test_goal_rows():
    got = {"demo": {"grid": _study(5.9, 3.0), "budgeted": [_study(2.9, 3.0), _study(3.0, 2.8), _study(2.5, 3.0)]}}
    rows = {r["key"]: r for r in sc.analyse(got, quick=False, repeats=3)["summary"] if r.get("key")}
    assert rows["study_cost"]["value"] == 3.0 and rows["study_cost"]["met"] is True
    assert rows["study_speedup"]["value"] == pytest.approx(2.8 / 3.0) and rows["study_speedup"]["met"] is True
    assert rows["study_same"]["met"] is True
    got["demo"]["budgeted"][1] = _study(3.2, 1.5, batch=1024)
    rows = {r["key"]: r for r in sc.analyse(got, quick=False, repeats=3)["summary"] if r.get("key")}
    assert rows["study_cost"]["met"] is False and rows["study_speedup"]["met"] is False
    assert rows["study_same"]["met"] is False and rows["study_same"]["measured"].startswith("2 of 3")
