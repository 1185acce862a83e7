"""Placing `{around_critical: [factors]}` before the search (docs/design.md §11): the driver takes B_noise (cached
by `largebatch probe`, else probed now, largebatch/probe.py), turns the entry into `{grid: [rounded f·B_noise]}`
(config/critical.py), checks the grid resolves, and logs the estimate and the grid to the study's parent run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from largebatch.config import StudyConfig, check_search_resolves
from largebatch.config.critical import AROUND_KEY, around_factors, critical_grid, is_power_of_two


def batch_bounds(study: StudyConfig) -> tuple[int, int]:
    """(granularity, upper) of a searched global batch: every trial splits it over workers × explicit
    accumulation, and no batch exceeds the training examples (train_subset counted)."""
    from largebatch.tasks import task_of, train_size

    base = study.base
    granularity = study.tuner.workers_per_trial * (base.data.grad_accum_steps or 1)
    n = train_size(task_of(base), base)
    return granularity, min(n, base.data.train_subset or n)


def place_critical(study: StudyConfig, source: str, run_root: str | Path) -> tuple[StudyConfig, Optional[dict]]:
    """(the study with around_critical replaced by its grid, what was placed), or (study, None) without one."""
    from largebatch.probe import cache_path, estimate_for, format_estimate

    factors = around_factors(study.search)
    if factors is None:
        return study, None
    est, cached = estimate_for(study, source, run_root)
    granularity, upper = batch_bounds(study)
    grid = critical_grid(est["b_noise"], factors, granularity, upper)
    search = {k: ({"grid": grid} if k == AROUND_KEY else v) for k, v in study.search.items()}
    placed = study.model_copy(update={"search": search})
    check_search_resolves(placed, study.tuner.workers_per_trial, source)
    info = {"b_noise": est["b_noise"], "b_noise_std": est["b_noise_std"], "factors": factors, "grid": grid,
            "granularity": granularity, "upper": upper, "cached": cached,
            "cache": str(cache_path(study, run_root, source)), "estimate": est}
    print(f"[largebatch] {format_estimate(est)}{' (cached)' if cached else ''}", flush=True)
    print(f"[largebatch] {placement_line(info)}", flush=True)
    return placed, info


def placement_line(info: dict[str, Any]) -> str:
    pairs = ", ".join(f"{f:g}x" for f in info["factors"])
    g = info["granularity"]
    rounding = "powers of two" if is_power_of_two(g) else f"multiples of {g}"
    return (f"around_critical [{pairs}] of B_noise {info['b_noise']:.0f} -> {AROUND_KEY} grid {info['grid']} "
            f"(rounded to {rounding}, at most {info['upper']}; duplicates dropped)")


def log_placement(tracker, parent_id: str, info: Optional[dict]) -> None:
    """The estimate and the grid on the parent run: metrics b_noise/b_noise_std, tag critical_grid, and
    noise_scale.json (the whole estimate) as an artifact."""
    if info is None:
        return
    tracker.log_metric(parent_id, "b_noise", float(info["b_noise"]))
    if info["b_noise_std"] is not None:
        tracker.log_metric(parent_id, "b_noise_std", float(info["b_noise_std"]))
    tracker.set_tag(parent_id, "critical_grid", json.dumps(info["grid"]))
    tracker.log_text(parent_id, json.dumps(info, indent=2, default=str), "noise_scale.json")
