"""Time to the baseline's quality: the report's headline (docs/design.md §5).

Shallue et al. 2018 (arXiv 1811.03600) and Google's deep-learning tuning playbook compare batch sizes by the steps
(or time) they need to reach a target quality, not by what each reaches in a fixed number of epochs: a fixed epoch
budget gives a large batch few steps, so "B=4096 loses 1.7 points" partly means "B=4096 got 140 steps". Here the
target is the baseline's quality minus the tolerance (or `budget.target_val_acc` when the study sets one), and for
every trial the first evaluation (an epoch end) at which its per-epoch metric meets it gives

- steps to target (optimizer steps so far), examples to target (steps x batch),
- time to target: steps x the batch's profiled step time when the report's speed basis is projected
  (report/speed.py), else the trial's measured training wall-clock at that epoch.

A recipe reaches the target when every scored seed does (its figures are the means over them). The speed-up to
target is the baseline's own time to target over the recipe's. Pure functions over report/build.py's rows; curves
come from the records' `history` (records.py), entries with `steps` and the metric.
"""
from __future__ import annotations

import statistics
from typing import Any, Iterable, Optional

from largebatch.report.speed import projected

_EPS = 1e-12


def explicit_target(metric: str, target_val_acc: Optional[float]) -> Optional[float]:
    """The study's own target (budget.target_val_acc) when it is about the study's metric, else None (the report
    then aims at the baseline's value minus the tolerance)."""
    return None if target_val_acc is None or metric != "val_acc" else float(target_val_acc)


def target_value(baseline: float, tolerance: float, mode: str, units: str) -> float:
    """The value `tolerance` worse than the baseline's, in the metric's direction and the tolerance's units."""
    slack = tolerance / 100.0 if units == "points" else tolerance * abs(baseline) if units == "relative" else tolerance
    return baseline - slack if mode == "max" else baseline + slack


def meets(value: float, target: float, mode: str) -> bool:
    return value >= target - _EPS if mode == "max" else value <= target + _EPS


def curve(history: Any, key: str) -> tuple[tuple[int, Optional[float], float], ...]:
    """(steps, wall_s, metric) per evaluation, in order, from a record's history; () when it has none."""
    out = []
    for h in history or ():
        if not isinstance(h, dict):
            continue
        try:
            steps, value = int(h["steps"]), float(h[key])
        except (KeyError, TypeError, ValueError):
            continue
        if value == value:  # NaN: a diverged epoch never meets a target
            wall = h.get("wall_s")
            out.append((steps, float(wall) if isinstance(wall, (int, float)) else None, value))
    return tuple(out)


def first_reach(points: Iterable[tuple[int, Optional[float], float]], target: float, mode: str
                ) -> Optional[tuple[int, Optional[float]]]:
    """(steps, wall_s) at the first evaluation meeting the target, None if none does."""
    for steps, wall, value in points:
        if meets(value, target, mode):
            return steps, wall
    return None


def last_miss(points: Iterable[tuple[int, Optional[float], float]], target: float, mode: str) -> int:
    """Steps at the evaluation before the first one meeting the target (0 when the first one does): the target
    was crossed somewhere after it, so steps to target lie in (last_miss, first_reach]."""
    before = 0
    for steps, _wall, value in points:
        if meets(value, target, mode):
            return before
        before = steps
    return before


def recipe_to_target(trials: list, target: Optional[float], mode: str, step_s: dict[int, float], basis: str
                     ) -> dict[str, Any]:
    """Steps, examples and time to target of one recipe (report/build.py _Trial rows, its seeds); the figures are
    None unless every scored trial with a curve reached it. Empty when no trial has a curve (old records)."""
    scored = [t for t in trials if t.acc is not None and t.curve]
    if target is None or not scored:
        return {}
    hits = [first_reach(t.curve, target, mode) for t in scored]
    batch = scored[0].batch
    ramp = any(t.batch_ramp for t in scored)  # a batch ramp has no single batch: its time is not steps x B
    per_seed = [{"seed": getattr(t, "seed", None), "trial_id": t.trial_id, "reached": h is not None,
                 "steps_to_target": None if h is None else h[0],
                 "time_to_target_s": None if h is None or ramp else
                 projected(batch, h[0], step_s) if basis == "projected" else h[1]}
                for t, h in zip(scored, hits)]
    out: dict[str, Any] = {"target_reached": f"{sum(h is not None for h in hits)}/{len(hits)}",
                           "steps_to_target": None, "examples_to_target": None, "time_to_target_s": None,
                           "per_seed": per_seed}
    if any(h is None for h in hits) or ramp:
        return out
    steps = [h[0] for h in hits if h is not None]  # every one (above)
    times = [p["time_to_target_s"] for p in per_seed]
    out["steps_to_target"] = statistics.fmean(steps)
    # evaluations happen at epoch ends: the crossing lies after the last evaluation below the target
    out["steps_after"] = statistics.fmean(last_miss(t.curve, target, mode) for t in scored)
    out["examples_to_target"] = statistics.fmean(steps) * batch
    out["time_to_target_s"] = statistics.fmean(times) if all(x is not None for x in times) else None
    # the spread over seeds (sample std; 0 for one seed): a recipe's time to target is their mean
    out["time_to_target_std_s"] = (None if out["time_to_target_s"] is None else
                                   statistics.stdev(times) if len(times) > 1 else 0.0)
    return out


def time_to_target_section(configs: list[dict], baseline: Optional[dict], target: Optional[dict]
                           ) -> Optional[dict[str, Any]]:
    """Per batch size, the recipe that reaches the target soonest (time, then steps), and how many recipes reach it
    at all. None without a target or curves."""
    if target is None or not any("target_reached" in c for c in configs):
        return None
    rows = []
    for batch in sorted({c["global_batch_size"] for c in configs}):
        at = [c for c in configs if c["global_batch_size"] == batch and "target_reached" in c]
        reached = [c for c in at if c["steps_to_target"] is not None]
        best = min(reached, key=_soonest) if reached else None
        rows.append({
            "global_batch_size": batch, "n_recipes": len(at), "n_reached": len(reached),
            "recipe": None if best is None else best["label"],
            **{k: None if best is None else best[k] for k in ("rule", "warmup_epochs", "peak_lr", "steps_to_target",
                                                               "steps_after",
                                                               "examples_to_target", "time_to_target_s",
                                                               "target_speedup", "acc_mean")},
        })
    return {**target, "baseline_steps": None if baseline is None else baseline.get("steps_to_target"),
            "baseline_steps_after": None if baseline is None else baseline.get("steps_after"),
            "baseline_time_s": None if baseline is None else baseline.get("time_to_target_s"), "per_batch": rows}


def _soonest(c: dict) -> tuple:
    t = c["time_to_target_s"]
    return (float("inf") if t is None else t, c["steps_to_target"], c["label"])


def recommend_by_target(configs: list[dict]) -> Optional[dict]:
    """The recipe that reaches the target soonest among those within tolerance; None if none does."""
    ok = [c for c in configs if c.get("time_to_target_s") is not None and c.get("within_tolerance")]
    if not ok:
        return None
    soonest: dict = min(ok, key=_soonest)
    return dict(soonest)
