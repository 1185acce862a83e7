"""A budgeted study (tuner.budget_runs, tune/stopper.py) on a real local Ray and MLflow with digits and in-process
1-worker trials: it stops trials that cannot beat the recipe it found and stays within its budget.

One trial at a time, so the baseline (first) ends before any searched trial starts and every searched trial knows
the target. The first searched point (B=64, LR 0.1) gets there quickly; those at a tiny LR never do within their
30-epoch cap: each must stop once it cannot reach the target sooner than the soonest recipe found, or on the budget."""
from __future__ import annotations

import re

from studies import run_study_dict

BUDGET = 2.5  # the baseline, T* and room for the first slow trial to be cut on T*, whatever the step times


def _raw() -> dict:
    return {
        "name": "it-budget",
        "base": {"data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [32]},
                 "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32, "momentum": 0.9},
                 "budget": {"epochs": 30}},
        # in YAML order: B=64 at LR 0.1 first (it gets there); at LR 1e-4 no trial can
        "search": {"data.global_batch_size": {"grid": [64, 256]},
                   "optim.base_lr": {"grid": [0.1, 0.0001, 0.00011]}},
        "tuner": {"searcher": "grid", "workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent": 1,
                  "budget_runs": BUDGET},
        "baseline": {"data.global_batch_size": 32, "budget.epochs": 3, "optim.base_lr": 0.05},
        "report": {"tolerance": 5.0},
    }


def test_a_budgeted_study_stops_what_cannot_beat_the_recipe_found_and_stays_within_budget(local_ray, tmp_path,
                                                                                            capsys):
    report, client, runs = run_study_dict(_raw(), tmp_path)
    out = capsys.readouterr().out
    step_s = {int(e["global_batch_size"]): float(e["step_s"]) for e in report["throughput"]["entries"]}
    (base,) = [r for r in runs if r.data.params["arm"] == "baseline"]
    unit = base.data.metrics["steps"] * step_s[32]  # one baseline run: its full budget, projected
    assert base.data.tags["status"] == "completed"  # never stopped
    searched = {(int(r.data.params["data.global_batch_size"]), float(r.data.params["optim.base_lr"])): r
                for r in runs if r.data.params["arm"] == "search"}
    spent = unit + sum(r.data.metrics["steps"] * step_s[b] for (b, _), r in searched.items())
    assert spent / unit <= BUDGET + 1e-9, (spent / unit, out)

    quick = searched[(64, 0.1)]  # the first searched point: it reaches the target and sets T*
    assert quick.data.tags["status"] == "stopped_early" and quick.data.tags["reason"].startswith("reached the target")
    reached = {r.info.run_name: r.data.metrics["steps"] * step_s[b] for (b, _), r in searched.items()
               if r.data.tags.get("reason", "").startswith("reached the target")}
    slow = {(b, lr): r for (b, lr), r in searched.items() if lr < 0.001}
    assert slow, "no slow trial ran: the test proves nothing"
    why = []
    for (b, _), r in slow.items():
        reason = r.data.tags.get("reason", "")
        assert r.data.tags["status"] == "stopped_early", (r.data.tags, out)
        mine = r.data.metrics["steps"] * step_s[b]
        if reason.startswith("cannot beat "):
            recipe, t_star = re.match(r"cannot beat (.+)'s ([0-9.e+-]+) s to the target", reason).groups()
            assert recipe in reached and abs(float(t_star) - reached[recipe]) <= 0.006 * reached[recipe], reason
            per_epoch = (1437 // b) * step_s[b]  # digits: 1437 training examples
            assert mine < float(t_star) * 1.006 and mine + per_epoch >= float(t_star) * 0.994  # could not be sooner
        else:
            assert reason.startswith(f"the study's budget of {BUDGET:g} baseline runs was reached"), reason
        why.append(reason.split(" ")[0])
    assert "cannot" in why, why
    # the driver's closing line on the budget
    line = next(ln for ln in out.splitlines()
                if ln.startswith("[largebatch] budget: ") and f" of {BUDGET:g} baseline" in ln)
    assert float(line.split()[2]) <= BUDGET and f"soonest to the target: {min(reached, key=reached.get)}" in line
