"""The study report: generalization gap per batch size, max safe batch, Pareto front, recommendation.

Input is the list of trial records the tune driver collects (plain dicts, one per trial; docs/design.md §5). Output is a
JSON-able dict (report/render.py makes the Markdown table and files of it, report/plots.py the PNG plots). Everything
here is pure, so the same report can be rebuilt from MLflow later.

The metric is the study's (tuner.metric, summarised per trial as best_<metric> or final_<metric>) and has a
direction (mode max or min); "better", "best", the Pareto front and "within tolerance" all follow it. The fields keep
their historical names (acc_mean, gap_points) whatever the metric: acc_mean is the metric's mean over seeds.
Units: the metric stays in its own units (accuracy as a fraction 0..1). Gaps and the tolerance are in
`tolerance_units`: points (1/100 of the metric; tolerance 0.5 lets an accuracy be 0.005 below the baseline), absolute
(the metric's units) or relative (a fraction of the baseline's value). A positive gap is worse than the baseline.
Wall-clock is training time, start-up excluded. Speed (`time_s`: the speed-up, the Pareto front, the
recommendation) is projected from the study's isolated throughput profile when it has one (report/speed.py), else
that wall-clock; `speed_basis` says which.

The gap itself is Keskar et al. 2016 (arXiv 1609.04836); the recipes that close it are Goyal et al. 2017
(arXiv 1706.02677, linear rule + warmup) and Hoffer et al. 2017 (arXiv 1705.08741, sqrt rule).

The headline is time to the baseline's quality (report/target.py): per recipe, the steps, examples and time to reach
the baseline's value minus the tolerance (or budget.target_val_acc), read from each trial's per-epoch curve; the
recommendation is the recipe within tolerance that gets there soonest (the Pareto front's fastest safe point when
the records carry no curves). Two more sections (report/sections.py, the fit in
largebatch/instruments/critical_batch.py):
"Critical batch" fits McCandlish's S(B) = S_min + E_min/B to steps-to-target and sets B_crit = E_min/S_min beside the
measured gradient noise scale; "Why" lists the noise scale per batch size and the sharpness per batch size and rule.
A record's `variant` (e.g. "decay=step factors=[5, 5]", other searched keys) keeps such recipes apart.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from largebatch.errors import BadInput, unknown_choice
from largebatch.report.lr import lr_section
from largebatch.report.rank import DEFAULT_SCALE, Scale, pareto_front, per_batch_rows
from largebatch.report.sections import critical_batch_section, why_section
from largebatch.report.speed import choose_basis, speed_fields, step_times
from largebatch.report.target import (
    curve, recipe_to_target, recommend_by_target, target_value, time_to_target_section,
)
from largebatch.report.verdict import confirmation, payback, study_cost
from largebatch.vocab import (
    MODES, PROBLEM_STATUSES, SCORED_STATUSES, STATUSES, SUMMARIES, TRIAL_FIGURES, UNSCORED_PRECEDENCE, Status,
)

UNITS = ("points", "absolute", "relative")
# Statuses whose metric is a result (vocab.py). stopped_early (e.g. ASHA) counts: it is what the trial reached.
# diverged / failed / running carry no accuracy.
SCORED = SCORED_STATUSES
_EPS = 1e-12  # float slack for "within tolerance" comparisons
_REQUIRED = ("trial_id", "global_batch_size", "rule", "warmup_epochs", "optimizer", "base_lr", "status")
# optional per-trial figures, averaged per recipe (None where no trial has them); grad_noise_scale is the trial's
# mean over epochs when the record has it (grad_noise_scale_mean), else its last value
INSTRUMENT_FIELDS = TRIAL_FIGURES


@dataclass(frozen=True, slots=True)
class _Trial:
    trial_id: str
    name: str
    is_baseline: bool
    batch: int
    rule: str
    warmup: float  # epochs
    optimizer: str
    base_lr: float  # LR per base batch
    peak_lr: float | None  # resolved LR after the scaling rule
    status: str
    reason: str | None
    acc: float | None  # the chosen metric, None unless status is scored and the value is finite
    wall_s: float | None
    steps: int | None
    variant: str = ""  # searched settings beyond batch/rule/warmup/optimizer/base_lr, e.g. "decay=step"
    batch_ramp: bool = False  # the batch changes during the trial (schedule.batch_ramp)
    extra: tuple[tuple[str, float], ...] = ()  # the finite INSTRUMENT_FIELDS of the record
    curve: tuple = ()  # (steps, wall_s, metric) per evaluation (report/target.py), from the record's history
    seed: int | None = None  # the trial's seed (a recipe's seeds: tuner.seeds, or a budgeted study's confirmation)


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _parse(rec: dict, metric: str) -> _Trial:
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise BadInput(f"trial record {rec.get('trial_id', '?')!r} lacks {', '.join(missing)}", field="records")
    status = str(rec["status"])
    if status not in STATUSES:
        raise BadInput(unknown_choice("status", status, STATUSES), field=f"records[{rec['trial_id']}].status")
    steps = rec.get("steps")
    return _Trial(
        trial_id=str(rec["trial_id"]),
        name=str(rec.get("name") or rec["trial_id"]),
        is_baseline=bool(rec.get("is_baseline", False)),
        batch=int(rec["global_batch_size"]),
        rule=str(rec["rule"]),
        warmup=float(rec["warmup_epochs"]),
        optimizer=str(rec["optimizer"]),
        base_lr=float(rec["base_lr"]),
        peak_lr=_finite(rec.get("peak_lr")),
        status=status,
        reason=rec.get("reason"),
        acc=_finite(rec.get(metric)) if status in SCORED else None,
        wall_s=_finite(rec.get("wall_s")),
        steps=int(steps) if steps is not None else None,
        variant=str(rec.get("variant") or ""),
        batch_ramp=bool(rec.get("batch_ramp", False)),
        extra=tuple((k, v) for k in INSTRUMENT_FIELDS if (v := _instrument(rec, k)) is not None),
        curve=curve(rec.get("history"), metric.split("_", 1)[1]),
        seed=_seed(rec.get("seed")),
    )


def _seed(x: Any) -> int | None:
    v = _finite(x)
    return None if v is None else int(v)


def _instrument(rec: dict, key: str) -> float | None:
    if key == "grad_noise_scale" and _finite(rec.get("grad_noise_scale_mean")) is not None:
        return _finite(rec["grad_noise_scale_mean"])  # the trial's mean over epochs
    return _finite(rec.get(key))


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    """Sample std over seeds (ddof=1); 0.0 for a single seed, None for none."""
    if not xs:
        return None
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _recipe_status(trials: list[_Trial]) -> str:
    statuses = {t.status for t in trials}
    if not any(t.acc is not None for t in trials):
        for s in UNSCORED_PRECEDENCE:
            if s in statuses:
                return s
    return statuses.pop() if len(statuses) == 1 else "partial"


def _label(batch: int, rule: str, warmup: float, optimizer: str, base_lr: float, variant: str = "") -> str:
    return f"B={batch} {rule} warmup={warmup:g}ep {optimizer} base_lr={base_lr:g}" + (f" {variant}" if variant else "")


def _aggregate(trials: list[_Trial], step_s: dict[int, float] | None = None, basis: str = "measured") -> dict:
    """Seeds of one recipe -> one row. Wall-clock and steps come from the scored trials when there are any,
    since a diverged trial stops early and would flatter the time. projected_s/time_s: report/speed.py."""
    scored = [t for t in trials if t.acc is not None]
    timed = scored or trials
    walls = [t.wall_s for t in timed if t.wall_s is not None]
    steps = [t.steps for t in timed if t.steps is not None]
    peaks = [t.peak_lr for t in trials if t.peak_lr is not None]
    accs = [t.acc for t in trials if t.acc is not None]  # the scored trials'
    statuses = {s: n for s in STATUSES if (n := sum(t.status == s for t in trials))}
    # instruments and targets: over the scored trials when there are any (as wall-clock)
    extras = {k: _mean([v for t in timed for key, v in t.extra if key == k]) for k in INSTRUMENT_FIELDS}
    return {
        "acc_mean": _mean(accs),
        "acc_std": _std(accs),
        "n_seeds": len(accs),
        "n_trials": len(trials),
        "n_diverged": statuses.get(Status.DIVERGED, 0),
        "status": _recipe_status(trials),
        "statuses": statuses,
        "wall_s_mean": _mean(walls),
        **speed_fields(trials[0].batch, steps, walls, step_s or {}, basis, any(t.batch_ramp for t in timed)),
        "steps": round(statistics.fmean(steps)) if steps else None,
        "peak_lr": peaks[0] if peaks else None,
        "trial_ids": sorted(t.trial_id for t in trials),
        "batch_ramp": any(t.batch_ramp for t in trials),
        **extras,
    }


def _target(trials: list[_Trial], base: dict | None, explicit: float | None, tol: float, scale: Scale,
            metric: str, step_s: dict[int, float], basis: str) -> dict | None:
    """The target ({metric, mode, value, source}): `explicit` when given, else the baseline's value `tol` worse
    (report/target.py); None without either. The baseline row gains its own steps and time to it."""
    if explicit is not None:
        value, source = float(explicit), "budget.target_val_acc"
    elif base is not None:
        value = target_value(base["acc_mean"], tol, scale.mode, scale.units)
        source = f"baseline - tolerance {tol:g} {scale.units}"
    else:
        return None
    if base is not None:
        base.update(recipe_to_target([t for t in trials if t.is_baseline], value, scale.mode, step_s, basis))
    return {"metric": metric.split("_", 1)[1], "mode": scale.mode, "value": value, "source": source}


def _baseline(trials: list[_Trial], warnings: list[str], step_s: dict[int, float] | None = None,
              basis: str = "measured") -> dict | None:
    base = [t for t in trials if t.is_baseline]
    if not base:
        warnings.append("no baseline trial (is_baseline) in the study: gaps, speed-ups and max_safe_batch are unset")
        return None
    agg = _aggregate(base, step_s, basis)
    if agg["acc_mean"] is None:
        warnings.append(
            f"no baseline trial has a result ({', '.join(f'{k}={v}' for k, v in agg['statuses'].items())}): "
            "gaps, speed-ups and max_safe_batch are unset"
        )
        return None
    recipes = sorted({(t.batch, t.rule, t.warmup, t.optimizer, t.base_lr) for t in base})
    if len(recipes) > 1:
        warnings.append(f"{len(recipes)} distinct baseline recipes were pooled into one baseline")
    first = recipes[0]
    return {
        "global_batch_size": first[0],
        "rule": first[1],
        "warmup_epochs": first[2],
        "optimizer": first[3],
        "base_lr": first[4],
        "acc_mean": agg["acc_mean"],
        "acc_std": agg["acc_std"],
        "n": agg["n_seeds"],
        "n_trials": agg["n_trials"],
        "wall_s_mean": agg["wall_s_mean"],
        "projected_s": agg["projected_s"],
        "time_s": agg["time_s"],
        "steps": agg["steps"],
        "trial_ids": agg["trial_ids"],
    }


def _configs(trials: list[_Trial], baseline: dict | None, tol: float, scale: Scale = DEFAULT_SCALE,
             step_s: dict[int, float] | None = None, basis: str = "measured",
             target: dict | None = None) -> list[dict]:
    # peak_lr joins the key so two `power` recipes with different alpha (same base_lr) stay apart.
    groups: dict[tuple, list[_Trial]] = {}
    for t in trials:
        key = (t.batch, t.rule, t.warmup, t.optimizer, t.base_lr, -1.0 if t.peak_lr is None else round(t.peak_lr, 12),
               t.variant)
        groups.setdefault(key, []).append(t)
    rows = []
    for key in sorted(groups):
        batch, rule, warmup, optimizer, base_lr, _, variant = key
        members = groups[key]
        row = {
            "label": _label(batch, rule, warmup, optimizer, base_lr, variant),
            "global_batch_size": batch,
            "rule": rule,
            "warmup_epochs": warmup,
            "optimizer": optimizer,
            "base_lr": base_lr,
            "is_baseline": any(t.is_baseline for t in members),
            **_aggregate(members, step_s, basis),
        }
        row.update(_versus_baseline(row["acc_mean"], row["time_s"], baseline, tol, scale))
        row.update(recipe_to_target(members, None if target is None else target["value"], scale.mode, step_s or {},
                                    basis))
        if "target_reached" in row:  # the baseline's own time to target over this recipe's
            b_t = (baseline or {}).get("time_to_target_s")
            row["target_speedup"] = b_t / row["time_to_target_s"] if b_t and row["time_to_target_s"] else None
        rows.append(row)
    return rows


def _versus_baseline(acc: float | None, wall: float | None, baseline: dict | None, tol: float,
                     scale: Scale = DEFAULT_SCALE) -> dict:
    if baseline is None:
        return {"gap_points": None, "speedup": None, "within_tolerance": None}
    b_acc, b_wall = baseline["acc_mean"], baseline["time_s"]  # the report's speed basis (report/speed.py)
    gap = None if acc is None else scale.worse(acc, b_acc)
    return {
        "gap_points": gap,
        "speedup": b_wall / wall if b_wall is not None and wall else None,
        # the slack absorbs float rounding of (b - a) * 100 at a gap equal to the tolerance
        "within_tolerance": None if gap is None else gap <= tol + _EPS * 100.0,
    }


def build_report(records: list[dict], *, tolerance: float = 0.5, metric: str = "best_val_acc", mode: str = "max",
                 units: str | None = None, profile: dict | None = None, target: float | None = None) -> dict:
    """Aggregate trial records into the study report (pure, JSON-able, deterministic order).

    metric: the per-trial figure to compare, best_<metric> or final_<metric> (e.g. best_val_acc, final_val_mse).
    mode: its direction, max or min. tolerance: how much worse than the baseline's mean a recipe may be, in
    `units` (points, absolute or relative; default points for max, absolute for min). profile: the study's
    throughput profile (tune/throughput.py), whose step times make the speed axis (report/speed.py). target: an
    explicit target value of the per-epoch metric (budget.target_val_acc); by default the baseline's value minus the
    tolerance (report/target.py: steps, examples and time to it per recipe; the recommendation is the recipe within
    tolerance that reaches it soonest, when the records carry per-epoch curves).
    """
    units = _check_args(metric, mode, units, tolerance)
    trials = [_parse(r, metric) for r in records]
    warnings: list[str] = []
    step_s = step_times(profile)
    basis = choose_basis(trials, step_s, profile, warnings)
    baseline = _baseline(trials, warnings, step_s, basis)
    scale = Scale(mode, units, baseline["acc_mean"] if baseline is not None else None)
    goal = _target(trials, baseline, _finite(target), float(tolerance), scale, metric, step_s, basis)
    configs = _configs(trials, baseline, float(tolerance), scale, step_s, basis, goal)
    per_batch = per_batch_rows(configs, scale)
    safe = [p["global_batch_size"] for p in per_batch if p["within_tolerance"]]
    pareto = pareto_front(configs, scale)
    to_target, recommended = _recommend(configs, pareto, baseline, goal)
    if not trials:
        warnings.append("no trial records")
    counts, failures = _counts(trials)
    critical = critical_batch_section(configs, warnings)
    why = why_section(configs, per_batch)
    cost = study_cost(trials, baseline, step_s, basis)
    cost.update(payback(cost, recommended, baseline))
    for row in (baseline, *configs, *per_batch, *pareto, recommended):
        _neutral_names(row)
    return {
        "metric": metric,
        "mode": mode,
        "tolerance": float(tolerance),
        "tolerance_units": units,
        "baseline": baseline,
        "configs": configs,
        "per_batch": per_batch,
        "max_safe_batch": max(safe) if safe else None,
        "pareto": pareto,
        "recommended": recommended,
        "counts": counts,
        "failures": failures,
        "critical_batch": critical,
        "time_to_target": to_target,
        "lr_per_batch": lr_section(configs, mode),
        "why": why,
        "warnings": warnings,
        "speed_basis": basis,
        "throughput": profile,
        # the study's cost and payback (report/verdict.py); the caller adds the study's name, runs and clock
        "study": cost,
    }


def _check_args(metric: str, mode: str, units: str | None, tolerance: float) -> str:
    """build_report's arguments, checked in order; returns the tolerance units (the mode's default when None)."""
    if metric.split("_", 1)[0] not in SUMMARIES or "_" not in metric:
        raise BadInput(f"got {metric!r}: the report compares a trial summary, best_<metric> or final_<metric> "
                       f"(e.g. best_val_acc)", field="metric")
    if mode not in MODES:
        raise BadInput(unknown_choice("mode", mode, MODES), field="mode")
    units = units or ("points" if mode == "max" else "absolute")
    if units not in UNITS:
        raise BadInput(unknown_choice("tolerance units", units, UNITS), field="tolerance_units")
    if _finite(tolerance) is None or tolerance < 0:
        raise BadInput(f"tolerance must be a finite number >= 0 (in {units}), got {tolerance!r}", field="tolerance")
    return units


def _recommend(configs: list[dict], pareto: list[dict], baseline: dict | None,
               goal: dict | None) -> tuple[dict[str, Any] | None, dict | None]:
    """(the time-to-target section, the recommended recipe or None)."""
    ok = [c for c in pareto if c["within_tolerance"]]
    to_target = time_to_target_section(configs, baseline, goal)
    # soonest to the target when curves say so (report/target.py), else the fastest within tolerance on the front
    recommended = recommend_by_target(configs) if to_target else None
    if recommended is None and ok:
        recommended = dict(ok[0])  # the front is sorted by time_s: first is fastest
    if recommended is not None:
        recommended["chosen_by"] = ("time_to_target" if to_target and recommended.get("time_to_target_s") is not None
                                    else "pareto")
        # is it confirmed on a second seed (every seed reached the target), and which sooner recipe missed on one
        recommended["confirmation"] = confirmation(recommended, configs)
    return to_target, recommended


def _counts(trials: list[_Trial]) -> tuple[dict[str, int], list[dict]]:
    """(trials per status with the total, the failed/diverged/... trials by id)."""
    counts = {"total": len(trials), **{s: sum(t.status == s for t in trials) for s in STATUSES}}
    failures = [{"trial_id": t.trial_id, "name": t.name, "status": t.status, "reason": t.reason}
                for t in sorted(trials, key=lambda t: t.trial_id) if t.status in PROBLEM_STATUSES]
    return counts, failures


# Metric-neutral names for a row's figures (the metric may be val_mse, val_bpb, ...): value_mean/value_std are the
# metric's mean and spread over seeds, gap the distance to the baseline in tolerance units (positive = worse),
# noscale_value the same batch without LR scaling. The old accuracy-flavoured names stay one release.
_NEUTRAL = {"acc_mean": "value_mean", "acc_std": "value_std", "gap_points": "gap", "noscale_acc": "noscale_value"}


def _neutral_names(row: dict | None) -> None:
    if row is None:
        return
    for old, new in _NEUTRAL.items():
        if old in row:
            row[new] = row[old]
