"""bench/search_efficiency.py analyse(): the goal rows are successive halving's (sha) against the grid, over the
searched trials; ASHA's are contrast rows; a trial's compute is its start-up plus training seconds."""
from __future__ import annotations

from bench import search_efficiency as se


def _t(b, status, acc, startup, wall, steps, baseline=False):
    return {"name": f"B={b}", "is_baseline": baseline, "status": status, "global_batch_size": b, "rule": "sqrt",
            "warmup_epochs": 0.0, "best_val_acc": acc, "startup_s": startup, "wall_s": wall, "fit_s": None,
            "steps": steps, "trial_runner": "in_process"}


def _study(trials, study_s):
    return {"study_s": study_s, "asha_grace_epochs": 2, "trials": trials, "costs": {}, "n_trials": len(trials)}


def test_goal_rows_are_sha_against_the_grid_over_searched_trials():
    base = _t(16, "completed", 0.86, 1.0, 6.0, 100, baseline=True)
    grid = [base, _t(256, "completed", 0.87, 0.1, 3.9, 80), _t(1024, "completed", 0.85, 0.1, 3.9, 20)]
    sha = [base, _t(256, "completed", 0.87, 0.1, 3.9, 80), _t(1024, "stopped_early", 0.80, 0.1, 0.9, 4)]
    asha = [base, _t(256, "stopped_early", 0.84, 0.1, 0.9, 16), _t(1024, "completed", 0.85, 0.1, 3.9, 20)]
    got = {"ray": {}, "studies": {"fifo": _study(grid, 20), "sha": _study(sha, 12), "asha": _study(asha, 10)}}
    out = se.analyse(got, se.FULL_SETS)
    assert out["compute_share"]["sha"] == (4.0 + 1.0) / 8.0 and out["compute_share"]["asha"] == 5.0 / 8.0
    assert out["gap_points"]["sha"] == 0.0 and round(out["gap_points"]["asha"], 6) == 2.0
    keyed = {r["key"]: r for r in out["summary"] if r.get("key")}
    assert keyed["asha_vs_grid"]["value"] == out["compute_share"]["sha"] and keyed["asha_vs_grid"]["met"] is False
    assert keyed["asha_gap"]["met"] is True
    assert all("ASHA" not in r["figure"] for r in keyed.values())
    assert out["cut_short"] == {"sha": 1, "asha": 1}
