"""The report's "Critical batch" and "Why" sections: pure functions over report rows (build_report's configs and
per-batch rows), and their Markdown. The fit itself, S(B) = S_min + E_min/B (McCandlish et al. 2018), is
instruments/critical_batch.py's (numpy, imported when a section has points); the regions (Shallue et al. 2018)
are drawn on the fitted curve there.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional


def _mean(xs: list[float]) -> Optional[float]:
    return statistics.fmean(xs) if xs else None


def critical_batch_section(configs: list[dict], warnings: list[str]) -> Optional[dict[str, Any]]:
    """Per batch size, the fewest mean steps-to-target over its recipes (constant-batch recipes only: a batch ramp
    has no single B), the fit, and the measured mean grad_noise_scale beside B_crit. None without target data."""
    rows = [c for c in configs if c.get("steps_to_target") is not None and not c.get("batch_ramp")]
    if not rows:
        return None
    points = []
    for batch in sorted({c["global_batch_size"] for c in rows}):
        best = min((c for c in rows if c["global_batch_size"] == batch), key=lambda c: c["steps_to_target"])
        points.append({"global_batch_size": batch, "steps_to_target": best["steps_to_target"],
                       "examples_to_target": best.get("examples_to_target") or best["steps_to_target"] * batch,
                       "time_to_target_s": best.get("time_to_target_s"), "recipe": best["label"]})
    from largebatch.instruments.critical_batch import fit_critical_batch  # numpy: only when there are points

    fit = fit_critical_batch([p["global_batch_size"] for p in points], [p["steps_to_target"] for p in points])
    if fit is None:
        warnings.append(f"critical batch: no fit of S = S_min + E_min/B from {len(points)} batch size(s) that reached "
                        f"the target (needs 2 or more, with steps falling as B grows)")
    gns = [c["grad_noise_scale"] for c in configs if c.get("grad_noise_scale") is not None]
    gns_mean = _mean(gns)
    out = {"points": points, "fit": fit, "grad_noise_scale_mean": gns_mean,
           "B_crit_over_noise_scale": (fit["B_crit"] / gns_mean) if fit and gns_mean else None}
    if fit:
        for p in points:
            b = p["global_batch_size"]
            p["region"] = ("perfect scaling" if b <= fit["perfect_scaling_below"] else
                           "maximal parallelism" if b >= fit["max_parallelism_above"] else "diminishing returns")
    return out


def why_section(configs: list[dict], per_batch: list[dict]) -> Optional[dict[str, Any]]:
    """Noise scale per batch size; sharpness per batch size and rule (best recipe of the rule); and, per batch,
    whether the recipe that closes the gap also sits in a flatter minimum than no scaling. None without data."""
    noise = []
    for batch in sorted({c["global_batch_size"] for c in configs}):
        vals = [c["grad_noise_scale"] for c in configs
                if c["global_batch_size"] == batch and c.get("grad_noise_scale") is not None]
        if vals:
            noise.append({"global_batch_size": batch, "grad_noise_scale": _mean(vals), "n_recipes": len(vals)})
    sharp = []
    for batch, rule in sorted({(c["global_batch_size"], c["rule"]) for c in configs}):
        rows = [c for c in configs if (c["global_batch_size"], c["rule"]) == (batch, rule)
                and c.get("sharpness") is not None]
        if rows:
            best = max(rows, key=lambda c: -math.inf if c["acc_mean"] is None else c["acc_mean"])
            sharp.append({"global_batch_size": batch, "rule": rule, "recipe": best["label"],
                          "sharpness": best["sharpness"], "sharpness_x_lr_over_2": best.get("sharpness_x_lr_over_2"),
                          "acc_mean": best["acc_mean"]})
    versus = [{"global_batch_size": p["global_batch_size"], "best": p["best"], "sharpness": p["sharpness"],
               "noscale": p["noscale"], "noscale_sharpness": p["noscale_sharpness"],
               "lower": p["sharpness"] < p["noscale_sharpness"]}
              for p in per_batch if p.get("sharpness") is not None and p.get("noscale_sharpness") is not None
              and p["best"] != p["noscale"]]
    if not (noise or sharp):
        return None
    return {"noise_scale": noise, "sharpness": sharp, "best_vs_noscale": versus,
            "best_is_flatter": sum(v["lower"] for v in versus), "n_compared": len(versus)}


def _g(x: Optional[float], fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def format_sections(report: dict) -> str:
    """Markdown for the "Critical batch" and "Why" sections ("" when the study had no instruments/target)."""
    out: list[str] = []
    cb = report.get("critical_batch")
    if cb:
        out += ["## Critical batch (steps to the target)", "",
                "| batch | steps to target | examples to target | time to target (s) | region | recipe |",
                "|---|---|---|---|---|---|"]
        out += [f"| {p['global_batch_size']} | {_g(p['steps_to_target'], '.0f')} | "
                f"{_g(p['examples_to_target'], '.0f')} | {_g(p['time_to_target_s'], '.1f')} | "
                f"{p.get('region', '-')} | {p['recipe']} |" for p in cb["points"]]
        fit = cb["fit"]
        out.append("")
        if fit:
            out.append(f"- fit (S/S_min − 1)(E/E_min − 1) = 1: S_min = {fit['S_min']:.4g} steps, E_min = "
                       f"{fit['E_min']:.4g} examples, **B_crit = E_min/S_min = {fit['B_crit']:.4g}**")
            out.append(f"- perfect scaling below B ≈ {fit['perfect_scaling_below']:.4g}, maximal parallelism above "
                       f"B ≈ {fit['max_parallelism_above']:.4g}")
        else:
            out.append("- fit: not enough batch sizes reached the target")
        out.append(f"- measured mean grad_noise_scale (B_simple): {_g(cb['grad_noise_scale_mean'])}; "
                   f"B_crit / B_simple = {_g(cb['B_crit_over_noise_scale'], '.3g')}")
        out.append("")
    why = report.get("why")
    if why:
        out += ["## Why", ""]
        if why["noise_scale"]:
            out += ["Gradient noise scale B_simple vs batch size (mean over recipes; batches past it waste examples):",
                    "", "| batch | grad_noise_scale |", "|---|---|"]
            out += [f"| {n['global_batch_size']} | {n['grad_noise_scale']:.4g} |" for n in why["noise_scale"]]
            out.append("")
        if why["sharpness"]:
            out += ["Sharpness (top Hessian eigenvalue on the probe batch) per batch size and rule, best recipe of "
                    "each rule:", "", "| batch | rule | sharpness | λη/2 | val_acc |", "|---|---|---|---|---|"]
            out += [f"| {s['global_batch_size']} | {s['rule']} | {s['sharpness']:.4g} | "
                    f"{_g(s['sharpness_x_lr_over_2'], '.3g')} | "
                    f"{'-' if s['acc_mean'] is None else format(s['acc_mean'] * 100, '.2f') + '%'} |"
                    for s in why["sharpness"]]
            out.append("")
        if why["n_compared"]:
            out.append(f"- Does the recipe that closes the gap also lower sharpness? At {why['best_is_flatter']} of "
                       f"{why['n_compared']} batch sizes the best recipe is flatter than no scaling:")
            out += [f"  - B={v['global_batch_size']}: {v['best']} λ={v['sharpness']:.4g} vs {v['noscale']} "
                    f"λ={v['noscale_sharpness']:.4g}" for v in why["best_vs_noscale"]]
            out.append("")
    return "\n".join(out)
