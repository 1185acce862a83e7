"""Study cost (issue #26): what a budgeted study (`tuner.budget_runs`, tune/stopper.py) spends to find its recipe,
beside the exhaustive grid over the same space, run in the same benchmark.

For each task, two studies through `run_study` (the `largebatch tune` path: Tune, MLflow), one after the other in
one child process with its own Ray, both under one run root, so they share one throughput profile (the second
study reads the first's cached step times and both are priced alike):
- **budgeted**: the study with `tuner.budget_runs: 3` and `budget.stop_at_target: true` (the demo's file as it is;
  the other tasks' files with those two set);
- **grid**: the same space with neither (tune_spaces/fashion-mnist-grid.yaml for the demo).

Figures, all ratios of quantities measured in the same run:
- **cost** in baseline runs: the sum over every trial (baseline included) of its projected training (steps x the
  profiled step time of its batch) / the baseline's projected full run; the report's `study.cost_baseline_runs`
  when it has one, else computed here from the MLflow records the same way. Goal <= 3 for the budgeted study.
- **speed-up to target**: the recommended recipe's, from each study's report (`recommended.target_speedup`).
  Goal: budgeted / grid >= 0.9.
- **the recommendation** (batch, rule, warmup, LR) of each repetition: the same in every one (goal 3 of 3).
- **confirmation**: whether the budgeted study's recommended recipe reached the target on its second seed too
  (tune/stopper.py runs the leader once more on seed + 1; the report's `recommended.confirmation`), with the
  spread of its time to target over the two seeds; the confirmation trials are in the cost above.

Full sizes: the demo (full Fashion-MNIST), digits (the smoke study on 1-worker trials, so they are profiled) and the
charlm smoke, 3 repetitions of the budgeted study. --quick: the demo's `smoke:` block, one repetition.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from bench import common
from largebatch.vocab import Status

NAME = "study_cost"
GOAL_COST = 3.0
GOAL_SPEEDUP = 0.9
BUDGETED = {"tuner.budget_runs": 3, "budget.stop_at_target": True}
UNBUDGETED = {"tuner.budget_runs": None, "budget.stop_at_target": False}
SPACES = common.REPO_ROOT / "tune_spaces"
# task -> (budgeted study file, grid study file, sets for both, --smoke)
TASKS = {
    "fashion-mnist": ("fashion-mnist.yaml", "fashion-mnist-grid.yaml", {}, False),
    "digits": ("digits-smoke.yaml", "digits-smoke.yaml", {"tuner.workers_per_trial": 1}, False),
    "charlm-smoke": ("charlm.yaml", "charlm.yaml", {}, True),
}


def cost_runs(records: list[dict], step_s: dict[int, float]) -> Optional[float]:
    """Sum of every trial's projected training / the baseline's projected run (the mean over its seeds)."""
    from largebatch.report.speed import projected

    base = [projected(int(r["global_batch_size"]), r.get("steps"), step_s) for r in records if r.get("is_baseline")]
    if not base or any(b is None for b in base):
        return None
    total = [projected(int(r["global_batch_size"]), r.get("steps"), step_s, bool(r.get("batch_ramp")))
             for r in records]
    return sum(t or 0.0 for t in total) / (sum(base) / len(base))


def _one(file: str, sets: dict, smoke: bool, name: str, root: str) -> dict[str, Any]:
    import time

    from largebatch.config import load_study
    from largebatch.records import records_from_mlflow
    from largebatch.report.speed import step_times
    from largebatch.tune.driver import run_study

    path = SPACES / file
    study = load_study(path, sets, smoke=smoke)
    t = time.time()
    report = run_study(study, source=str(path), study_text=path.read_text(), name=name, run_root=root, live=False)
    s = report["study"]
    records = records_from_mlflow(s["tracking_uri"], s["experiment_id"], s["parent_run_id"])
    step_s = step_times(report.get("throughput"))
    rec = report.get("recommended") or {}
    return {"name": name, "study_s": time.time() - t, "n_trials": len(records),
            "cost_runs": s.get("cost_baseline_runs") or cost_runs(records, step_s),
            "cost_runs_reported": s.get("cost_baseline_runs"), "speed_basis": report.get("speed_basis"),
            "recommended": {k: rec.get(k) for k in ("global_batch_size", "rule", "warmup_epochs", "peak_lr",
                                                      "time_to_target_s", "target_speedup", "chosen_by")},
            "statuses": {st: sum(r["status"] == st for r in records) for st in {r["status"] for r in records}},
            "confirmation": _confirmation(rec.get("confirmation"), (s.get("budget") or {}).get("confirmations")),
            "reasons": [r.get("reason") for r in records if r.get("status") == Status.STOPPED_EARLY]}


def _confirmation(conf: Optional[dict], runs: Optional[list]) -> Optional[dict[str, Any]]:
    """The recommended recipe's seeds (report/verdict.py confirmation) and the confirmation trials the budget ran
    (a confirmation that missed may leave the baseline as the answer: no recommended recipe to confirm)."""
    if conf is None and not runs:
        return None
    conf = conf or {"status": "no recipe recommended"}
    return {k: conf.get(k) for k in ("status", "reached", "seeds", "time_to_target_mean_s", "time_to_target_std_s")} | {
        "missed": [m["recipe"] for m in conf.get("missed") or []],
        "trials": [{k: c.get(k) for k in ("recipe", "seed", "status", "time_to_target_s", "first_seed_time_s")}
                   for c in runs or []]}


def child(spec: dict) -> dict[str, Any]:
    os.environ.pop("RAY_ADDRESS", None)
    common.start_ray()
    out: dict[str, Any] = {}
    for task in spec["tasks"]:
        budgeted_file, grid_file, sets, smoke = TASKS[task]
        smoke = smoke or spec["quick"]
        root = common.short_tmpdir()  # one root per task: both studies share its throughput cache
        rows = {"grid": _one(grid_file, {**sets, **UNBUDGETED}, smoke, f"{task}-grid", root)}
        rows["budgeted"] = [_one(budgeted_file, {**sets, **BUDGETED}, smoke, f"{task}-budget-{i}", root)
                            for i in range(spec["repeats"])]
        out[task] = rows
    return out


def run(quick: bool = False) -> dict[str, Any]:
    tasks = ["fashion-mnist"] if quick else list(TASKS)
    repeats = 1 if quick else 3
    got = common.run_child("bench.study_cost:child", {"tasks": tasks, "repeats": repeats, "quick": quick},
                           timeout_s=1800 if quick else 6 * 3600, log_name=NAME)
    return analyse(got, quick, repeats)


def _recipe(rec: dict) -> str:
    lr = rec.get("peak_lr")
    return (f"B={rec.get('global_batch_size')} {rec.get('rule')} warmup={rec.get('warmup_epochs')} "
            f"lr={lr:.3g}" if isinstance(lr, (int, float)) else f"B={rec.get('global_batch_size')} {rec.get('rule')}")


def _spread(c: dict) -> str:
    """'confirmed 2/2, 3.5 ± 0.25 s' / 'no recipe recommended, B=128 linear seed 1 missed'."""
    if not c:
        return "no recommendation"
    mean, sd = c.get("time_to_target_mean_s"), c.get("time_to_target_std_s")
    out = f"{c.get('status')} {c.get('reached') or ''}".strip()
    out += f", {mean:.3g} ± {sd:.2g} s" if mean is not None and sd is not None else ""
    out += "".join(f", {x['recipe']} seed {x['seed']} {x['status']}" for x in c.get("trials") or []
                   if x.get("status") != "reached")
    return out + (f", missed: {', '.join(c['missed'])}" if c.get("missed") else "")


def analyse(got: dict[str, Any], quick: bool, repeats: int) -> dict[str, Any]:
    summary = []
    for task, rows in got.items():
        grid, budgeted = rows["grid"], rows["budgeted"]
        g_speed = grid["recommended"].get("target_speedup")
        costs = [b["cost_runs"] for b in budgeted]
        worst = max((c for c in costs if c is not None), default=None)
        ratios = [common.ratio(b["recommended"].get("target_speedup"), g_speed) for b in budgeted]
        recipes = [_recipe(b["recommended"]) for b in budgeted]
        same = max(recipes.count(r) for r in recipes) if recipes else 0
        what = f"{task}{' (smoke)' if quick else ''}"
        confs = [b.get("confirmation") or {} for b in budgeted]
        held = sum(c.get("status") == "confirmed" for c in confs)
        summary += [
            common.figure(f"{what}: budgeted study cost, baseline runs of projected training (worst of {len(costs)})",
                          worst, goal=f"<= {GOAL_COST:g}", met=worst is not None and worst <= GOAL_COST,
                          key="study_cost"),
            common.figure(f"  {what}: the exhaustive grid's cost (contrast)", grid["cost_runs"]),
            common.figure(f"{what}: budgeted speed-up to target / the grid's best (worst of {len(ratios)})",
                          min(ratios) if ratios else None, goal=f">= {GOAL_SPEEDUP:g}",
                          met=bool(ratios) and min(ratios) >= GOAL_SPEEDUP, key="study_speedup"),
            common.figure(f"  {what}: speed-ups to target, budgeted / grid", g_speed,
                          shown=" ".join(f"{b['recommended'].get('target_speedup') or float('nan'):.2f}x"
                                         for b in budgeted) + f" / {g_speed or float('nan'):.2f}x"),
            common.figure(f"{what}: the same recommendation in n of {len(recipes)} runs", float(same),
                          goal=f"{len(recipes)} of {len(recipes)}", met=same == len(recipes) and repeats >= 3,
                          shown=f"{same} of {len(recipes)} ({recipes[0] if recipes else '-'})",
                          key="study_same"),
            common.figure(f"{what}: the recommendation confirmed on a second seed (reached the target 2/2), n of "
                          f"{len(confs)} runs", float(held), goal=f"{len(confs)} of {len(confs)}",
                          met=held == len(confs), key="study_confirmed",
                          shown=f"{held} of {len(confs)} (" + "; ".join(_spread(c) for c in confs) + ")"),
        ]
    return {"settings": {"tasks": {t: TASKS.get(t) for t in got}, "budgeted": BUDGETED, "repeats": repeats,
                         "quick": quick, "grid_sets": UNBUDGETED},
            "studies": got, "summary": summary}
