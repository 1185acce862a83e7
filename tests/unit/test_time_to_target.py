"""Time to the baseline's quality (report/target.py) and the stop-at-target rule (tune/stopper.py).

Synthetic per-epoch curves: the baseline (B=16, 3750 steps per epoch) climbs to 0.90; B=256 linear gets to 0.896 at
epoch 4 of 10; B=1024 linear gets there at epoch 8; B=1024 none never does. With a profile, a step costs 1 ms at
B=16, 4 ms at B=256 and 10 ms at B=1024.
"""
from __future__ import annotations

import pytest

from largebatch.report import build_report, format_table
from largebatch.report.target import curve, first_reach, meets, target_value

STEP_S = {16: 0.001, 256: 0.004, 1024: 0.010}
PROFILE = {"status": "measured", "entries": [{"global_batch_size": b, "step_s": s, "examples_per_s": b / s}
                                             for b, s in STEP_S.items()]}


def rec(batch, rule, accs, *, baseline=False, seed=0, status="completed", wall_per_epoch=1.0, base_lr=0.01,
        peak_lr=None):
    per_epoch = 60000 // batch
    history = [{"epoch": e, "val_acc": a, "steps": per_epoch * (e + 1), "wall_s": wall_per_epoch * (e + 1)}
               for e, a in enumerate(accs)]
    return {"trial_id": f"t{batch}-{rule}-{base_lr:g}-{seed}", "is_baseline": baseline, "global_batch_size": batch,
            "rule": rule, "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": base_lr,
            "peak_lr": peak_lr if peak_lr is not None else base_lr * ({"linear": batch / 16}.get(rule, 1.0)),
            "seed": seed, "status": status, "reason": None, "best_val_acc": max(accs), "final_val_acc": accs[-1],
            "wall_s": wall_per_epoch * len(accs), "steps": per_epoch * len(accs), "history": history}


def study():
    return [
        rec(16, "none", [0.85, 0.87, 0.88, 0.89, 0.895, 0.897, 0.898, 0.899, 0.90, 0.90], baseline=True,
            wall_per_epoch=9),
        rec(256, "linear", [0.80, 0.85, 0.88, 0.896, 0.897, 0.898, 0.899, 0.899, 0.899, 0.899]),
        rec(1024, "linear", [0.70, 0.80, 0.84, 0.86, 0.87, 0.88, 0.89, 0.896, 0.897, 0.898]),
        rec(1024, "none", [0.60, 0.70, 0.75, 0.78, 0.80, 0.81, 0.82, 0.83, 0.835, 0.84]),
    ]


def test_target_value_follows_direction_and_units():
    assert target_value(0.90, 0.5, "max", "points") == pytest.approx(0.895)
    assert target_value(2.0, 0.1, "min", "absolute") == pytest.approx(2.1)
    assert target_value(2.0, 0.05, "min", "relative") == pytest.approx(2.1)
    assert meets(0.895, 0.895, "max") and not meets(0.8949, 0.895, "max")
    assert meets(2.1, 2.1, "min") and not meets(2.11, 2.1, "min")


def test_curve_skips_entries_without_steps_and_nan():
    pts = curve([{"val_acc": 0.5}, {"steps": 10, "val_acc": float("nan")}, {"steps": 20, "val_acc": 0.7, "wall_s": 3}],
                "val_acc")
    assert pts == ((20, 3.0, 0.7),)
    assert first_reach(pts, 0.6, "max") == (20, 3.0) and first_reach(pts, 0.8, "max") is None


def test_steps_examples_and_projected_time_to_the_baselines_quality():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    tt = r["time_to_target"]
    assert tt["value"] == pytest.approx(0.895) and tt["source"].startswith("baseline")
    # the baseline's best is 0.90: it gets to 0.895 at epoch 5 (5 x 3750 steps)
    assert tt["baseline_steps"] == 5 * 3750 and tt["baseline_time_s"] == pytest.approx(5 * 3750 * 0.001)
    rows = {p["global_batch_size"]: p for p in tt["per_batch"]}
    assert rows[256]["steps_to_target"] == 4 * 234 and rows[256]["examples_to_target"] == 4 * 234 * 256
    assert rows[256]["time_to_target_s"] == pytest.approx(4 * 234 * 0.004)
    assert rows[1024]["recipe"].startswith("B=1024 linear") and rows[1024]["steps_to_target"] == 8 * 58
    assert (rows[1024]["n_reached"], rows[1024]["n_recipes"]) == (1, 2)
    none = next(c for c in r["configs"] if c["global_batch_size"] == 1024 and c["rule"] == "none")
    assert none["steps_to_target"] is None and none["target_reached"] == "0/1"
    assert rows[256]["target_speedup"] == pytest.approx(18.75 / (4 * 234 * 0.004))


def test_recommendation_is_soonest_to_target_not_fastest_full_budget():
    # B=1024 linear finishes its 10 epochs sooner (580 x 10 ms = 5.8 s vs 2340 x 4 ms = 9.4 s) but reaches the
    # target later (4.64 s vs 3.74 s): the recommendation follows the time to target
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    rec_ = r["recommended"]
    assert (rec_["global_batch_size"], rec_["rule"], rec_["chosen_by"]) == (256, "linear", "time_to_target")
    pareto_first = [c for c in r["pareto"] if c["within_tolerance"]][0]
    assert pareto_first["global_batch_size"] == 1024  # the old rule would have picked B=1024
    table = format_table(r)
    assert table.startswith("Answer: train at B=256 with the linear rule")  # the first screen (report/verdict.py)
    assert "\n\nTime to the baseline's quality: val_acc >= 89.50%" in table
    assert "to the target in 936 steps" in table


def test_measured_basis_uses_wall_clock_at_the_epoch():
    r = build_report(study(), tolerance=0.5)  # no profile: measured wall-clock at the epoch that reached it
    rows = {p["global_batch_size"]: p for p in r["time_to_target"]["per_batch"]}
    assert rows[256]["time_to_target_s"] == pytest.approx(4.0) and r["time_to_target"]["baseline_time_s"] == 45.0


def test_explicit_target_and_seeds_that_do_not_all_reach():
    recs = study() + [rec(256, "linear", [0.80, 0.85, 0.86, 0.87, 0.88, 0.885, 0.889, 0.889, 0.889, 0.889], seed=1)]
    r = build_report(recs, tolerance=0.5, target=0.85)
    assert r["time_to_target"]["value"] == 0.85 and r["time_to_target"]["source"] == "budget.target_val_acc"
    lin256 = next(c for c in r["configs"] if c["global_batch_size"] == 256)
    assert lin256["target_reached"] == "2/2" and lin256["steps_to_target"] == 2 * 234
    r = build_report(recs, tolerance=0.5)  # 0.895: seed 1 never gets there, so the recipe does not
    lin256 = next(c for c in r["configs"] if c["global_batch_size"] == 256)
    assert lin256["target_reached"] == "1/2" and lin256["steps_to_target"] is None


def test_critical_batch_fit_uses_steps_to_the_baselines_quality():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    pts = {p["global_batch_size"]: p["steps_to_target"] for p in r["critical_batch"]["points"]}
    assert pts == {16: 5 * 3750, 256: 4 * 234, 1024: 8 * 58}


def test_records_without_curves_keep_the_pareto_recommendation():
    recs = study()
    for x in recs:
        x["history"] = [{k: v for k, v in h.items() if k != "steps"} for h in x["history"]]
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    assert r["time_to_target"] is None and r["recommended"]["chosen_by"] == "pareto"


# ------------------------------------------------------------------------------------------- the stopper
def _result(arm, acc, *, final=False, best=None, steps=100):
    return {"config": {"arm": arm}, "val_acc": acc, "best_val_acc": best if best is not None else acc,
            "is_final": final, "steps": steps}


def test_stopper_learns_the_target_from_every_baseline_seed_then_stops_searched_trials():
    from largebatch.tune.stopper import TargetStopper

    s = TargetStopper("val_acc", "max", 0.5, "points", n_baseline=2)
    assert s(" x", _result("search", 0.99)) is False  # no target yet: runs on
    assert s("b0", _result("baseline", 0.89, final=True, best=0.90)) is False
    assert s.target is None  # one of two baseline seeds
    assert s("b1", _result("baseline", 0.91, final=True, best=0.92)) is False
    assert s.target == pytest.approx(0.905)
    assert s("x", _result("search", 0.904)) is False
    assert s("x", _result("search", 0.905, steps=700)) is True
    assert "step 700" in s.stopped["x"]
    assert s("y", _result("search", 0.95, final=True)) is False  # its last epoch: it ends by itself
    assert s("b2", _result("baseline", 0.99)) is False  # the baseline is never stopped


def test_stopper_for_a_lower_is_better_metric_and_explicit_target():
    from largebatch.tune.stopper import TargetStopper

    s = TargetStopper("val_bpb", "min", 0.05, "absolute", n_baseline=1)
    s("b", {"config": {"arm": "baseline"}, "val_bpb": 2.0, "best_val_bpb": 2.0, "is_final": True})
    assert s.target == pytest.approx(2.05)
    assert s("x", {"config": {"arm": "search"}, "val_bpb": 2.06}) is False
    assert s("x", {"config": {"arm": "search"}, "val_bpb": 2.04}) is True
    e = TargetStopper("val_acc", "max", 0.5, "points", n_baseline=1, explicit=0.8)
    assert e("x", _result("search", 0.81)) is True


def test_create_stopper_only_with_stop_at_target_and_a_baseline():
    from pathlib import Path

    from largebatch.config import load_study
    from largebatch.tune.stopper import create_stopper

    path = Path(__file__).resolve().parents[2] / "tune_spaces" / "fashion-mnist-grid.yaml"  # no budget, no stop
    assert create_stopper(load_study(path)) is None
    s = create_stopper(load_study(path, {"budget.stop_at_target": True, "tuner.seeds": [0, 1, 2]}))
    assert s is not None and s.n_baseline == 3 and s.target is None and s.key == "val_acc"


def test_the_crossing_is_bracketed_by_the_evaluation_before_it():
    r = build_report(study(), tolerance=0.5, profile=PROFILE)
    tt = r["time_to_target"]
    assert (tt["baseline_steps_after"], tt["baseline_steps"]) == (4 * 3750, 5 * 3750)
    rows = {p["global_batch_size"]: p for p in tt["per_batch"]}
    assert (rows[256]["steps_after"], rows[256]["steps_to_target"]) == (3 * 234, 4 * 234)
    table = format_table(r)
    assert "(it crossed after step 15000: evaluations are at epoch ends)" in table and "| 936 (702)" in table


def test_an_extension_learns_the_target_from_the_finished_baseline():
    from largebatch.tune.stopper import TargetStopper

    s = TargetStopper("val_acc", "max", 0.5, "points", n_baseline=2)
    records = [{"is_baseline": True, "status": "completed", "best_val_acc": 0.90},
               {"is_baseline": False, "status": "completed", "best_val_acc": 0.99}]
    s.learn_from_records(records)
    assert s.target is None  # one of two seeds
    s.learn_from_records(records + [{"is_baseline": True, "status": "completed", "best_val_acc": 0.92}])
    assert s.target == pytest.approx(0.905)
    assert s("x", _result("search", 0.91)) is True
