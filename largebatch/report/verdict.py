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
- **Confirmation** (`recommended.confirmation`): whether the recommended recipe reached the target on every seed it
  ran (2 or more: "confirmed on 2 seeds, 2/2"), its time to target per seed and their spread (mean ± sample std,
  min, max); a budgeted one-seed study runs the leader once more on a second seed for this (tune/stopper.py). A
  recipe that missed the target on one of its seeds has no time to target (report/target.py), so the recommendation
  falls back to the next recipe; `missed` names the sooner ones that did (their first seed was sooner). One seed
  only: "unconfirmed", with the budget's reason when its confirmation was not started.

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
    if recommended is None or is_keep_baseline(recommended) or baseline is None:
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


def missed_confirmation(configs: Iterable[dict], before: Optional[float] = None) -> list[dict[str, Any]]:
    """Recipes run on 2+ seeds that reached the target on some but not all of them (so they have no time to target),
    soonest first; with `before`, only those whose reaching seeds were on average sooner than it."""
    out = []
    for c in configs:
        seeds = c.get("per_seed") or []
        hit = [p["time_to_target_s"] for p in seeds if p["reached"] and p.get("time_to_target_s") is not None]
        if len(seeds) < 2 or not hit or len(hit) == len(seeds) or c.get("is_baseline"):
            continue
        t = sum(hit) / len(hit)
        if before is None or t < before:
            out.append({"recipe": c["label"], "reached": c.get("target_reached"), "reached_time_s": t,
                        "per_seed": seeds})
    return sorted(out, key=lambda m: (m["reached_time_s"], m["recipe"]))


def confirmation(recommended: Optional[dict], configs: Iterable[dict]) -> Optional[dict[str, Any]]:
    """The recommended recipe's seeds: reached n/n, the time to target per seed and the spread (module docstring)."""
    if recommended is None:
        return None
    seeds = recommended.get("per_seed") or []
    if not seeds or recommended.get("is_baseline"):  # no curves (chosen on the Pareto front), or keep the baseline
        return None
    times = [p["time_to_target_s"] for p in seeds if p["reached"] and p.get("time_to_target_s") is not None]
    n, reached = len(seeds), sum(bool(p["reached"]) for p in seeds)
    mean = sum(times) / len(times) if times else None
    std = (math.sqrt(sum((x - mean) ** 2 for x in times) / (len(times) - 1)) if len(times) > 1
           else 0.0 if times else None)
    return {"status": "confirmed" if n >= 2 and reached == n else "unconfirmed", "n_seeds": n,
            "reached": f"{reached}/{n}", "seeds": [p["seed"] for p in seeds], "per_seed": seeds,
            "time_to_target_mean_s": mean, "time_to_target_std_s": std,
            "time_to_target_min_s": min(times) if times else None,
            "time_to_target_max_s": max(times) if times else None,
            "missed": missed_confirmation(configs, recommended.get("time_to_target_s"))}


def confirmation_words(report: dict) -> str:
    """The answer line's last sentence: confirmed on n seeds, or unconfirmed and why; '' when nothing ran twice."""
    rec = report.get("recommended") or {}
    conf = rec.get("confirmation")
    budget = (report.get("study") or {}).get("budget") or {}
    refused = [c for c in budget.get("confirmations") or [] if c.get("status") == "not started"]
    missed = (conf or {}).get("missed") if conf else missed_confirmation(report.get("configs") or [])
    miss = ""
    if missed:
        m = missed[0]
        two = m["reached"] == "1/2"
        miss = (f"{m['recipe']} reached the target sooner on {'its first seed' if two else 'some seeds'} but missed "
                f"it on {'its second' if two else 'others'} ({m['reached']})")
    if conf is None:
        return f" Not recommended: {miss}." if miss else ""
    if conf["status"] == "confirmed":
        spread = ("" if conf["time_to_target_mean_s"] is None else
                  f", time to target {seconds(conf['time_to_target_mean_s'])} ± "
                  f"{seconds(conf['time_to_target_std_s'])} s")
        return (f" Confirmed on {conf['n_seeds']} seeds (reached the target {conf['reached']}{spread})"
                + (f"; {miss}" if miss else "") + ".")
    if conf["n_seeds"] >= 2:
        return f" Unconfirmed: it reached the target on {conf['reached']} seeds" + (f"; {miss}" if miss else "") + "."
    if not miss and "confirmations" not in budget:
        return ""  # one seed, and no confirmation was planned (no budget): the study's seeds are the user's choice
    why = (f"{miss}; this one ran on 1 seed" if miss else
           f"its second seed was not run: {refused[-1]['why']}" if refused else "it ran on 1 seed")
    return f" Unconfirmed: {why}."


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
    elif rec is None or is_keep_baseline(rec):
        first = (f"Answer: keep the baseline (B={base['global_batch_size']}, {base['rule']} rule, {base['optimizer']}, "
                 f"base LR {base['base_lr']:g}): no larger batch reached its quality sooner within the tolerance.")
        first += confirmation_words(report)
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
        first += confirmation_words(report)
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
