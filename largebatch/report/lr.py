"""The report's "LR per batch size" section: when a study re-tunes the LR at each batch size (`per_batch` draws,
config/search.py), how far the tuned LR is from what each scaling rule predicts from the baseline's LR. That is the
honest test of the rules (Shallue et al. 2018, arXiv 1811.03600: the best LR does not follow one rule across batch
sizes; Goyal et al. 2017 linear, Hoffer et al. 2017 sqrt).

Per batch size with two or more base LRs tried (baseline excluded; the different peak LRs of the rules at one base
LR are not a tuning): the best recipe (soonest to the target when the
report has one and some recipe at that batch reaches it, else the best metric), its peak LR, the linear and sqrt
predictions `lr_0 * B/B_0` and `lr_0 * sqrt(B/B_0)` from the baseline's peak LR `lr_0` at its batch `B_0`, their
ratios, and the range of peak LRs that reached the target. Pure, over report/build.py's config rows.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from largebatch.vocab import Status


def lr_section(configs: list[dict], mode: str = "max") -> Optional[dict[str, Any]]:
    base = next((c for c in configs if c.get("is_baseline") and c.get("peak_lr")), None)
    if base is None:
        return None
    b0, lr0 = base["global_batch_size"], base["peak_lr"]
    rows = []
    for batch in sorted({c["global_batch_size"] for c in configs if not c.get("is_baseline")}):
        at = [c for c in configs if c["global_batch_size"] == batch and not c.get("is_baseline")
              and c.get("peak_lr") and c.get("acc_mean") is not None]
        if len({c["base_lr"] for c in at}) < 2:  # the LR was not searched here: the rules' LRs are no tuning
            continue
        reached = [c for c in at if c.get("time_to_target_s") is not None]
        has_target = any("target_reached" in c for c in at)
        if reached:
            best = min(reached, key=lambda c: (c["time_to_target_s"], c["steps_to_target"], c["label"]))
        elif has_target:
            best = None  # no draw reached the target: no tuned LR to hold against the rules
        else:
            best = min(at, key=lambda c: ((-1 if mode == "max" else 1) * c["acc_mean"], c["label"]))
        linear, sqrt = lr0 * batch / b0, lr0 * math.sqrt(batch / b0)
        tried = sorted({c["peak_lr"] for c in at})
        diverged = sorted({c["peak_lr"] for c in configs if c["global_batch_size"] == batch and c.get("peak_lr")
                           and not c.get("is_baseline") and c.get("status") == Status.DIVERGED})
        lrs = sorted(c["peak_lr"] for c in reached)
        tuned = None if best is None else best["peak_lr"]
        rows.append({
            "global_batch_size": batch, "n_lrs": len(at), "best": None if best is None else best["label"],
            "chosen_by": "time_to_target" if reached else "none reached" if best is None else "metric",
            "tuned_lr": tuned, "acc_mean": None if best is None else best["acc_mean"],
            "time_to_target_s": None if best is None else best.get("time_to_target_s"),
            "predicted_linear": linear, "predicted_sqrt": sqrt,
            "tuned_over_linear": None if tuned is None else tuned / linear,
            "tuned_over_sqrt": None if tuned is None else tuned / sqrt,
            # how coarse the draws are around the tuned LR: the nearest LRs tried below and above it
            "neighbours": None if tuned is None else _neighbours(tried, tuned), "tried_range": [tried[0], tried[-1]],
            "reaching_lr_range": [lrs[0], lrs[-1]] if lrs else None, "diverged_lrs": diverged,
            "lrs": [{"peak_lr": c["peak_lr"], "acc_mean": c["acc_mean"], "time_to_target_s": c.get("time_to_target_s")}
                    for c in sorted(at, key=lambda c: (c["peak_lr"], c["label"]))],
        })
    if not rows:
        return None
    return {"baseline_batch": b0, "baseline_lr": lr0, "rows": rows}


def _neighbours(tried: list[float], lr: float) -> list[Optional[float]]:
    below = [x for x in tried if x < lr]
    above = [x for x in tried if x > lr]
    return [below[-1] if below else None, above[0] if above else None]


def coarseness(r: dict) -> str:
    """'between draws 0.02 and 0.08' style words for how finely the LR around the tuned one was tried."""
    lo, hi = r.get("neighbours") or (None, None)
    if lo is None and hi is None:
        return "the only LR tried"
    parts = [f"{x:.3g}" for x in (lo, hi) if x is not None]
    edge = "" if lo is not None and hi is not None else ", at the edge of the LRs tried"
    return "the nearest LRs tried: " + " and ".join(parts) + edge


def _cell(r: dict, key: str, fmt: str) -> str:
    return "-" if r.get(key) is None else format(r[key], fmt)


def format_lr_section(report: dict) -> list[str]:
    sec = report.get("lr_per_batch")
    if not sec:
        return []
    out = ["## LR per batch size (re-tuned) vs the scaling rules", "",
           f"Predictions from the baseline's peak LR {sec['baseline_lr']:.4g} at B={sec['baseline_batch']}: linear "
           f"lr_0 B/B_0, sqrt lr_0 (B/B_0)^0.5.", "",
           "| batch | LRs tried | tuned peak LR | linear | sqrt | tuned/linear | tuned/sqrt | "
           "LRs reaching the target | diverged at |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sec["rows"]:
        span = ("-" if r["reaching_lr_range"] is None else
                f"{r['reaching_lr_range'][0]:.3g} to {r['reaching_lr_range'][1]:.3g}")
        tuned = "none reached the target" if r["tuned_lr"] is None else _cell(r, "tuned_lr", ".4g")
        out.append(f"| {r['global_batch_size']} | {r['n_lrs']} | {tuned} | {r['predicted_linear']:.4g} | "
                   f"{r['predicted_sqrt']:.4g} | {_cell(r, 'tuned_over_linear', '.3g')} | "
                   f"{_cell(r, 'tuned_over_sqrt', '.3g')} | "
                   f"{span} | {', '.join(f'{x:.3g}' for x in r.get('diverged_lrs') or []) or '-'} |")
    out += ["", "- tuned: the recipe " + ("soonest to the target" if any(r["chosen_by"] == "time_to_target"
                                                                         for r in sec["rows"]) else
                                         "with the best metric") + " at each batch size; a ratio of 1 is a rule that "
            "predicted the tuned LR exactly", ""]
    return out
