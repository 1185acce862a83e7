"""bench/search_efficiency.py analyse(): the goal rows are successive halving's (sha) against the grid, over the
searched trials; ASHA's are contrast rows; a trial's compute is its start-up plus training seconds. The new-process rows
here and ray_overhead's floor rows say what start-up a goal leaves room for."""
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


def test_new_process_allowance_is_the_start_up_at_which_the_share_meets_the_goal():
    def t(startup, wall, run):
        return {**_t(256, "completed", 0.87, startup, wall, 80), "process_run": run}

    grid = [t(3.0, 4.0, "1"), t(0.1, 4.0, "2")]
    sha = [t(3.0, 1.0, "1"), t(0.1, 1.0, "2")]
    al = se.new_process_allowance(grid, sha, goal=0.4)
    assert al["new_processes"] == {"grid": 1, "other": 1} and al["new_process_startup_s"] == 3.0
    f = al["allowed_new_process_startup_s"]
    assert abs(f - 1.9) < 1e-9
    rest_g, rest_o = al["rest_s"]["grid"], al["rest_s"]["other"]
    assert abs((rest_o + f) / (rest_g + f) - 0.4) < 1e-9  # with new processes that fast, the share is the goal
    # no new process in the early-stopping study: no start-up to bound
    assert se.new_process_allowance(grid, [t(0.1, 1.0, "2")])["allowed_new_process_startup_s"] is None

    base = {**_t(16, "completed", 0.86, 1.0, 6.0, 100, baseline=True), "process_run": "1"}
    got = {"ray": {}, "new_torch_process_s": 2.3,
           "studies": {"fifo": _study([base, *grid], 20), "sha": _study([base, *sha], 12)}}
    rows = {r["figure"].strip(): r for r in se.analyse(got, se.FULL_SETS)["summary"]}
    (row,) = [r for k, r in rows.items() if k.startswith("a new trial process's start-up")]
    assert row["measured"] == "3.0 s / 1.90 s" and abs(row["value"] - 3.0 / 1.9) < 1e-9
    assert any(k.startswith("a new Python process importing torch") for k in rows)


def test_ray_overhead_floor_rows_bound_the_start_up_share():
    from bench import ray_overhead as ro

    result = {"digits_2w_train_s": 0.5, "digits_2w_teardown_s": 1.2}
    rows = ro._floor_rows(result, 2.3)
    allowed = result["digits_2w_startup_allowed_s"]
    assert abs(allowed / (allowed + 1.7) - ro.STARTUP_SHARE_LIMIT) < 1e-9  # exactly the goal's share
    assert abs(result["digits_2w_startup_share_floor"] - 2.3 / 4.0) < 1e-9 and len(rows) == 3
    assert ro._floor_rows(dict(result), None) == []
