"""A budgeted study (tuner.budget_runs, tune/stopper.py) on a real local Ray and MLflow with digits and in-process
1-worker trials: it stops trials that cannot beat the recipe it found and stays within its budget.

One trial at a time, so the baseline (first) ends before any searched trial starts and every searched trial knows
the target. The first searched point (B=64, LR 0.1) gets there quickly; those at a tiny LR never do within their
30-epoch cap: each must stop once it cannot reach the target sooner than the soonest recipe found, or on the budget.
Once the search is done, the leading recipe runs once more on seed 1 (its confirmation), within the budget."""
from __future__ import annotations

import re

import pytest
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


@pytest.fixture(scope="module")
def budget_study(local_ray, tmp_path_factory):
    """One budgeted study for this module's tests: (report, child runs, the driver's output)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        report, _client, runs = run_study_dict(_raw(), tmp_path_factory.mktemp("budget"))
    return report, runs, buf.getvalue()


def _seed(r) -> int:
    return int(r.data.params["seed"])


def test_a_budgeted_study_stops_what_cannot_beat_the_recipe_found_and_stays_within_budget(budget_study):
    report, runs, out = budget_study
    step_s = {int(e["global_batch_size"]): float(e["step_s"]) for e in report["throughput"]["entries"]}
    (base,) = [r for r in runs if r.data.params["arm"] == "baseline"]
    unit = base.data.metrics["steps"] * step_s[32]  # one baseline run: its full budget, projected
    assert base.data.tags["status"] == "completed"  # never stopped
    searched = {(int(r.data.params["data.global_batch_size"]), float(r.data.params["optim.base_lr"])): r
                for r in runs if r.data.params["arm"] == "search" and _seed(r) == 0}
    confirming = [r for r in runs if r.data.params["arm"] == "search" and _seed(r) != 0]
    spent = unit + sum(r.data.metrics["steps"] * step_s[b] for (b, _), r in searched.items()) + sum(
        r.data.metrics["steps"] * step_s[int(r.data.params["data.global_batch_size"])] for r in confirming)
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


def test_the_leading_recipe_is_confirmed_on_a_second_seed_and_the_report_says_how_it_went(budget_study):
    report, runs, out = budget_study
    first = {(int(r.data.params["data.global_batch_size"]), float(r.data.params["optim.base_lr"])): r
             for r in runs if r.data.params["arm"] == "search" and _seed(r) == 0}
    (conf,) = [r for r in runs if r.data.params["arm"] == "search" and _seed(r) != 0]
    # the same recipe as the soonest one (B=64, LR 0.1), on seed 1, handed out last
    assert _seed(conf) == 1, conf.data.params
    assert (int(conf.data.params["data.global_batch_size"]), float(conf.data.params["optim.base_lr"])) == (64, 0.1)
    index = lambda r: int(r.data.tags["largebatch.trial_index"].rsplit(":", 1)[1])  # noqa: E731
    assert index(conf) > max(index(r) for r in first.values())  # handed out last
    reason = conf.data.tags.get("reason") or ""
    held = reason.startswith("reached the target")
    rec = report["recommended"]
    c = rec["confirmation"]
    first_line = out[out.index("Answer: "):].splitlines()[0]
    (budget_conf,) = report["study"]["budget"]["confirmations"]
    assert budget_conf["seed"] == 1 and budget_conf["status"] == ("reached" if held else "missed"), budget_conf
    if held:  # 2/2: the recommendation is B=64 LR 0.1, its time to target the mean of its seeds
        assert (rec["global_batch_size"], c["status"], c["reached"], c["seeds"]) == (64, "confirmed", "2/2", [0, 1])
        times = [p["time_to_target_s"] for p in c["per_seed"]]
        assert rec["time_to_target_s"] == pytest.approx(sum(times) / 2)
        assert "Confirmed on 2 seeds (reached the target 2/2, time to target " in first_line, first_line
    else:  # the miss: B=64 LR 0.1 has no time to target, and the answer names it
        b64 = next(x for x in report["configs"] if x["global_batch_size"] == 64 and x["base_lr"] == 0.1)
        assert b64["target_reached"] == "1/2" and b64["time_to_target_s"] is None
        assert "missed it on its second (1/2)" in first_line, first_line
    # the confirmation counts in the study's cost
    step_s = {int(e["global_batch_size"]): float(e["step_s"]) for e in report["throughput"]["entries"]}
    total = sum(r.data.metrics["steps"] * step_s[int(r.data.params["data.global_batch_size"])] for r in runs)
    assert report["study"]["cost_training_s"] == pytest.approx(total, rel=1e-6)
    assert "confirmation of B=64" in out and "on seed 1: " in out
