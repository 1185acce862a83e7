"""The report's first screen: the answer, what the study cost and when it pays for itself (docs/design.md §13).

- **Cost** (`cost_baseline_runs`): the training the whole study did, every trial counted (baseline, failed and
  stopped ones included, each up to where it stopped), in units of one baseline run: the baseline's own training to
  its full budget. On the report's speed basis (report/speed.py): projected training (steps x the profiled step time)
  when the study has a throughput profile, else measured training wall-clock; `cost_wall_baseline_runs` is always the
  measured wall-clock version, so a shared machine's noise is visible beside it.
- **Payback** (`payback_trainings`): how many trainings at the recommended recipe, each reaching the baseline's
  quality sooner than the baseline does, repay the study's cost: the cost in seconds over the time one training
  saves (the baseline's time to the target minus the recipe's), rounded up. None when nothing is saved (the answer
  is to keep the baseline) or the savings are unknown.
- **Answer**: one sentence: the recipe, its time to the baseline's quality and the speed-up, or "keep the baseline"
  when no larger batch gets there sooner within tolerance.

Pure functions over build_report's rows and parsed trials.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from largebatch.report.speed import projected


def seconds(x: Optional[float]) -> str:
    """A duration with enough digits for any size: 0.0123 s, 3.91 s, 41.3 s, 1234 s (never a wall of 0.0)."""
    if x is None or not math.isfinite(x):
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def study_cost(trials: Iterable[Any], baseline: Optional[dict], step_s: dict[int, float], basis: str
               ) -> dict[str, Any]:
    """The study's training cost in baseline runs (module docstring). `trials` are report/build.py _Trial rows."""
    trials = list(trials)
    spent, wall, unpriced = 0.0, 0.0, 0
    for t in trials:
        w = t.wall_s
        cost = projected(t.batch, t.steps, step_s, t.batch_ramp) if basis == "projected" else w
        if cost is None:
            unpriced += 1  # no step count (an old record, a batch ramp, a trial that failed before training)
        else:
            spent += cost
        wall += w or 0.0
    unit = (baseline or {}).get("time_s")
    unit_wall = (baseline or {}).get("wall_s_mean")
    return {
        "cost_basis": basis,
        "cost_training_s": spent,
        "cost_wall_s": wall,
        "baseline_run_s": unit,
        "cost_baseline_runs": spent / unit if unit else None,
        "cost_wall_baseline_runs": wall / unit_wall if unit_wall else None,
        "cost_unpriced_trials": unpriced,
    }


def is_keep_baseline(recommended: Optional[dict]) -> bool:
    return recommended is None or bool(recommended.get("is_baseline"))


def _saving(recommended: Optional[dict], baseline: Optional[dict]) -> Optional[float]:
    """Seconds one training at the recommended recipe saves against the baseline, on the basis it was chosen by."""
    if is_keep_baseline(recommended) or baseline is None:
        return None
    if recommended.get("chosen_by") == "time_to_target":
        b, r = baseline.get("time_to_target_s"), recommended.get("time_to_target_s")
    else:
        b, r = baseline.get("time_s"), recommended.get("time_s")
    if b is None or r is None:
        return None
    return b - r


def payback(cost: dict, recommended: Optional[dict], baseline: Optional[dict]) -> dict[str, Any]:
    saving = _saving(recommended, baseline)
    spent = cost.get("cost_training_s")
    n = None
    if saving is not None and saving > 0 and spent is not None:
        n = max(1, math.ceil(spent / saving - 1e-9))
    return {"saving_per_training_s": saving, "payback_trainings": n}


def _recipe_words(c: dict) -> str:
    warm = "no warmup" if not c.get("warmup_epochs") else f"{c['warmup_epochs']:g}-epoch warmup"
    lr = c.get("peak_lr")
    return (f"B={c['global_batch_size']} with the {c['rule']} rule, {warm}, {c['optimizer']}"
            + ("" if lr is None else f" (peak LR {lr:.4g})"))


def answer_lines(report: dict, value_text: str) -> list[str]:
    """The report's first three lines: the answer, the cost, the payback. `value_text` renders a metric value."""
    base, rec, study = report.get("baseline"), report.get("recommended"), report.get("study") or {}
    tt = report.get("time_to_target") or {}
    proj = report.get("speed_basis") == "projected"
    unit = " projected" if proj else " wall-clock"
    if study.get("no_verdict"):  # the study ran, but has nothing to compare (failures.py no_verdict)
        first = f"Answer: none. {study['no_verdict']}"
    elif base is None:
        first = ("Answer: none. The baseline has no result, so no recipe can be judged against it "
                 f"({report.get('counts', {}).get('total', 0)} trial(s): "
                 + ", ".join(f"{k} {v}" for k, v in report.get("counts", {}).items() if k != "total" and v) + ").")
    elif is_keep_baseline(rec):
        first = (f"Answer: keep the baseline (B={base['global_batch_size']}, {base['rule']} rule, {base['optimizer']}, "
                 f"base LR {base['base_lr']:g}): no larger batch reached its quality sooner within the tolerance.")
    else:
        sign = ">=" if report.get("mode", "max") == "max" else "<="
        if rec.get("chosen_by") == "time_to_target" and tt:
            first = (f"Answer: train at {_recipe_words(rec)}: the baseline's quality ({tt['metric']} {sign} "
                     f"{value_text}) in {rec['steps_to_target']:,.0f} steps, {seconds(rec['time_to_target_s'])} s"
                     f"{unit}, {rec['target_speedup']:.2f}x sooner than the baseline "
                     f"({seconds(tt.get('baseline_time_s'))} s).")
        else:
            first = (f"Answer: train at {_recipe_words(rec)}: within the tolerance of the baseline in "
                     f"{seconds(rec['time_s'])} s{unit}, {rec['speedup']:.2f}x the baseline's speed.")
    runs, wall = study.get("cost_baseline_runs"), study.get("cost_wall_baseline_runs")
    if runs is None:
        second = "Cost: unknown (no baseline run to measure it by)."
    else:
        second = (f"Cost: this study trained {runs:.2f} baseline runs ({seconds(study['cost_training_s'])} s"
                  f"{unit} training"
                  + ("" if not proj or wall is None else f"; {wall:.2f} by measured wall-clock") + ")"
                  + (f", {study['cost_unpriced_trials']} trial(s) without a step count left out"
                     if study.get("cost_unpriced_trials") else "") + _budget_words(study.get("budget")) + ".")
    n, saving = study.get("payback_trainings"), study.get("saving_per_training_s")
    if n is not None:
        third = (f"Payback: the study pays for itself after {n} training(s) at the recommended recipe (each saves "
                 f"{seconds(saving)} s of the baseline's time).")
    elif base is not None and is_keep_baseline(rec):
        third = "Payback: none: the answer is the baseline you already have."
    else:
        third = "Payback: unknown (the recommended recipe's saving could not be measured)."
    return [first, second, third]


def _budget_words(budget: Optional[dict]) -> str:
    """', within its budget of 3 baseline runs (10 trials stopped: cannot beat the soonest)' for a budgeted study."""
    if not budget or budget.get("budget_runs") is None:
        return ""
    stopped = budget.get("stopped") or {}
    beat, spent = stopped.get("cannot beat", 0), stopped.get("the study's budget", 0)
    why = [f"{beat} could not beat the soonest recipe"] if beat else []
    why += [f"{spent} stopped by the budget"] if spent else []
    why += [f"{len(budget['not_started'])} not started"] if budget.get("not_started") else []
    reached = "reached" if budget.get("budget_reached") else "within"
    return (f", {reached} its budget of {budget['budget_runs']:g} baseline runs" +
            (f" ({'; '.join(why)})" if why else ""))
