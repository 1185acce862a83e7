"""Ranking report rows: the metric's direction and the tolerance's units (Scale), the best recipe, the best per
batch size with "no scaling" beside it, and the Pareto front of speed vs the metric. Pure, over report/build.py's
config rows."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scale:
    """The metric's direction and the tolerance's units: `worse(a, b)` is how much a is worse than b, in those
    units (negative when a is better)."""

    mode: str = "max"
    units: str = "points"
    ref: float | None = None  # the baseline's value, the unit of a relative gap

    def worse(self, a: float, b: float) -> float | None:
        diff = (b - a) if self.mode == "max" else (a - b)
        if self.units == "points":
            return diff * 100.0
        if self.units == "relative":
            return diff / abs(self.ref) if self.ref else None
        return diff

    def key(self, v: float) -> float:
        """Sort key: smaller is better."""
        return -v if self.mode == "max" else v


DEFAULT_SCALE = Scale()


def best_row(rows: list[dict], scale: Scale = DEFAULT_SCALE) -> dict | None:
    """Best acc_mean in the metric's direction; ties go to the faster, then to the first in sorted order."""
    scored = [r for r in rows if r["acc_mean"] is not None]
    if not scored:
        return None
    wall = lambda r: r["time_s"] if r["time_s"] is not None else math.inf  # noqa: E731
    return min(scored, key=lambda r: (scale.key(r["acc_mean"]), wall(r)))


def per_batch_rows(configs: list[dict], scale: Scale = DEFAULT_SCALE) -> list[dict]:
    out = []
    for batch in sorted({c["global_batch_size"] for c in configs}):
        rows = [c for c in configs if c["global_batch_size"] == batch]
        best = best_row(rows, scale)
        # "No scaling" beside it: rule none with the best recipe's optimizer and base LR, else the best rule-none.
        none_rows = [c for c in rows if c["rule"] == "none"]
        same = [c for c in none_rows if best and (c["optimizer"], c["base_lr"]) == (best["optimizer"], best["base_lr"])]
        noscale = best_row(same, scale) or best_row(none_rows, scale)
        entry = {
            "global_batch_size": batch,
            "n_recipes": len(rows),
            "n_trials": sum(c["n_trials"] for c in rows),
            "n_diverged": sum(c["n_diverged"] for c in rows),
            "best": None if best is None else best["label"],
        }
        for k in ("rule", "warmup_epochs", "optimizer", "base_lr", "peak_lr", "acc_mean", "acc_std", "n_seeds",
                  "gap_points", "within_tolerance", "steps", "speedup"):
            entry[k] = None if best is None else best[k]
        entry["wall_s"] = None if best is None else best["wall_s_mean"]
        entry["projected_s"] = None if best is None else best["projected_s"]
        entry["time_s"] = None if best is None else best["time_s"]
        entry["noscale"] = None if noscale is None else noscale["label"]
        entry["noscale_acc"] = None if noscale is None else noscale["acc_mean"]
        entry["noscale_gap_points"] = None if noscale is None else noscale["gap_points"]
        entry["sharpness"] = None if best is None else best["sharpness"]
        entry["noscale_sharpness"] = None if noscale is None else noscale["sharpness"]
        entry["gap_closed_points"] = (
            scale.worse(noscale["acc_mean"], best["acc_mean"]) if best is not None and noscale is not None else None
        )
        out.append(entry)
    return out


def pareto_front(configs: list[dict], scale: Scale = DEFAULT_SCALE) -> list[dict]:
    """Non-dominated recipes: minimise time_s (the report's speed basis), best acc_mean in the metric's direction.
    Sorted by time_s, then best metric."""
    pts = [c for c in configs if c["acc_mean"] is not None and c["time_s"] is not None]
    k = lambda c: scale.key(c["acc_mean"])  # noqa: E731  (smaller is better)

    def dominated(p: dict) -> bool:
        return any(
            q["time_s"] <= p["time_s"] and k(q) <= k(p)
            and (q["time_s"] < p["time_s"] or k(q) < k(p))
            for q in pts
        )

    front = [p for p in pts if not dominated(p)]
    return sorted(front, key=lambda c: (c["time_s"], k(c), c["label"]))
