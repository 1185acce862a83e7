"""PNG plots for the study report (see `largebatch.report`).

matplotlib is imported inside each call and drawn on a bare `Figure` with the Agg canvas: no pyplot, no global
backend switch, so this is safe in a Ray driver or a thread. A plot with nothing to show is skipped, not drawn empty.
"""
from __future__ import annotations

import math
from pathlib import Path

from largebatch.plot_style import _baseline_band, _color, _figure, _k, _maxing, _ylabel  # noqa: F401


def plot_acc_vs_batch(report: dict, path: Path) -> Path | None:
    """One line per rule (best over warmups/optimizers per batch), 'x' at the bottom where trials diverged."""
    scored = [c for c in report["configs"] if c["acc_mean"] is not None]
    if not scored:
        return None
    k, sign = _k(report), (1.0 if _maxing(report) else -1.0)
    fig, ax = _figure()
    _baseline_band(ax, report)
    rules = sorted({c["rule"] for c in report["configs"]})
    for rule in rules:
        best: dict[int, dict] = {}
        for c in scored:
            if c["rule"] == rule and (c["global_batch_size"] not in best
                                      or sign * c["acc_mean"] > sign * best[c["global_batch_size"]]["acc_mean"]):
                best[c["global_batch_size"]] = c
        xs = sorted(best)
        if xs:
            ax.errorbar(xs, [best[x]["acc_mean"] * k for x in xs], yerr=[best[x]["acc_std"] * k for x in xs],
                        marker="o", capsize=3, color=_color(rule), label=rule)
    # diverged recipes are marked just beyond the worst plotted value (below for max metrics, above for min)
    vals = [c["acc_mean"] * k for c in scored]
    if report["baseline"] is not None and k == 100.0:
        vals.append(report["baseline"]["acc_mean"] * 100 - report["tolerance"])
    span = (max(vals) - min(vals)) or abs(vals[0]) or 1.0
    pad = 2.0 if k == 100.0 else 0.1 * span
    edge = min(vals) - pad if sign > 0 else max(vals) + pad
    div = [c for c in report["configs"] if c["n_diverged"]]
    for rule in sorted({c["rule"] for c in div}):
        xs = sorted({c["global_batch_size"] for c in div if c["rule"] == rule})
        ax.scatter(xs, [edge + sign * pad / 4] * len(xs), marker="x", s=60, color=_color(rule),
                   label=f"{rule}: diverged")
    if sign > 0:
        ax.set_ylim(bottom=edge)
    else:
        ax.set_ylim(top=edge)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size (log2)")
    ax.set_ylabel(_ylabel(report))
    what = "Validation accuracy" if report["metric"].endswith("val_acc") else report["metric"]
    ax.set_title(f"{what} vs batch size (best warmup per rule)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def plot_acc_vs_wallclock(report: dict, path: Path) -> Path | None:
    """Every recipe as a point; the Pareto front as a step line; the recommendation starred. x is the report's
    speed (time_s): projected from the throughput profile when there is one, else the measured wall-clock."""
    t = lambda c: c.get("time_s", c["wall_s_mean"])  # noqa: E731  (reports from before time_s)
    pts = [c for c in report["configs"] if c["acc_mean"] is not None and t(c) is not None]
    if not pts:
        return None
    fig, ax = _figure()
    _baseline_band(ax, report)
    for rule in sorted({c["rule"] for c in pts}):
        sub = [c for c in pts if c["rule"] == rule]
        ax.scatter([t(c) for c in sub], [c["acc_mean"] * _k(report) for c in sub], color=_color(rule),
                   alpha=0.6, label=rule)
    k, front = _k(report), report["pareto"]
    rec, goal = report["recommended"], (report.get("time_to_target") or {}).get("value")
    ttt = rec.get("time_to_target_s") if rec is not None and rec.get("chosen_by") == "time_to_target" else None
    reach = None if ttt is None or goal is None else (ttt, goal)
    line = front_with(front_points(front, t), reach, _maxing(report))
    if line:
        ax.plot([x for x, _ in line], [y * k for _, y in line], drawstyle="steps-post", color="black", lw=1.5,
                label="Pareto front" + (" (with the time to the target)" if reach else ""))
        ax.scatter([t(c) for c in front], [c["acc_mean"] * k for c in front], marker="o", s=100,
                   facecolor="none", edgecolor="black")
        for c in front:
            ax.annotate(f"B={c['global_batch_size']}", (t(c), c["acc_mean"] * k), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    if reach is not None:
        # chosen by its time to target: the star is where it reaches the target, on the front drawn with that point;
        # its whole run is ringed
        ax.scatter([reach[0]], [reach[1] * k], marker="*", s=250, facecolor="gold", edgecolor="black", zorder=5,
                   label=f"recommended: reaches the target at {reach[0]:.3g} s")
        ax.scatter([t(rec)], [rec["acc_mean"] * k], marker="o", s=160, facecolor="none", edgecolor="goldenrod",
                   lw=2, zorder=5, label="recommended: its whole run")
    elif rec is not None:
        ax.scatter([t(rec)], [rec["acc_mean"] * k], marker="*", s=250, facecolor="gold", edgecolor="black",
                   zorder=5, label="recommended")
    walls = [t(c) for c in pts]
    if min(walls) > 0 and max(walls) / min(walls) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("projected training time (s): steps x step time measured alone"
                  if report.get("speed_basis") == "projected" else "training wall-clock (s)")
    ax.set_ylabel(_ylabel(report))
    speed = "projected time" if report.get("speed_basis") == "projected" else "wall-clock"
    ax.set_title(f"Accuracy vs {speed} (up and left is better)" if report["metric"].endswith("val_acc") else
                 f"{report['metric']} vs {speed} ({'up' if _maxing(report) else 'down'} and left is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def front_points(front: list[dict], t) -> list[tuple[float, float]]:
    return [(t(c), c["acc_mean"]) for c in front if c["acc_mean"] is not None and t(c) is not None]


def front_with(points: list[tuple[float, float]], reach: tuple[float, float] | None,
               maxing: bool) -> list[tuple[float, float]]:
    """The (time, quality) front drawn on the plot: the whole runs' front, plus the recommendation's point where
    it reaches the target, which drops the runs it dominates (slower, and no better than the target)."""
    if reach is None:
        return sorted(points)
    worse = (lambda y: y <= reach[1]) if maxing else (lambda y: y >= reach[1])
    return sorted([p for p in points if not (p[0] >= reach[0] and worse(p[1]))] + [reach])


def _curve(history: list[dict], key: str = "val_acc", k: float = 100.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for h in history or []:
        x, y = h.get("wall_s"), h.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y) * k)
    return xs, ys


def plot_learning_curves(report: dict, records: list[dict], path: Path) -> Path | None:
    """val_acc per epoch vs wall-clock: the recommended recipe (else the best non-baseline one) vs the baseline."""
    target = report["recommended"]
    sign = 1.0 if _maxing(report) else -1.0
    key = report["metric"].split("_", 1)[1]  # best_val_acc -> the per-epoch val_acc
    if target is None:
        scored = [c for c in report["configs"] if c["acc_mean"] is not None]
        scored.sort(key=lambda c: (c["is_baseline"], -sign * c["acc_mean"]))
        target = scored[0] if scored else None
    by_id = {str(r.get("trial_id")): r for r in records}
    groups = []
    if target is not None:
        groups.append((target["label"], target["trial_ids"], "tab:blue"))
    b = report["baseline"]
    if b is not None and (target is None or set(b["trial_ids"]) != set(target["trial_ids"])):
        groups.append((f"baseline B={b['global_batch_size']}", b["trial_ids"], "tab:red"))
    fig, ax = _figure()
    drawn = False
    for label, ids, color in groups:
        first = True
        for tid in ids:
            xs, ys = _curve(by_id.get(tid, {}).get("history") or [], key, _k(report))
            if xs:
                ax.plot(xs, ys, marker=".", color=color, alpha=0.8, label=label if first else None)
                first, drawn = False, True
    if not drawn:
        return None
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(key + (" (%)" if _k(report) == 100.0 else ""))
    ax.set_title("Learning curves (one line per seed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def write_plots(report: dict, records: list[dict], out_dir: Path) -> list[Path]:
    """Draw the plots into out_dir; return the ones written (skipped plots are absent)."""
    name = report["metric"].split("_", 1)[1]  # val_acc for best_val_acc / final_val_acc
    plots = {
        f"{name}_vs_batch.png": lambda p: plot_acc_vs_batch(report, p),
        f"{name}_vs_wallclock.png": lambda p: plot_acc_vs_wallclock(report, p),
        "learning_curves.png": lambda p: plot_learning_curves(report, records, p),
        "throughput_vs_batch.png": lambda p: plot_throughput_vs_batch(report, p),
        "steps_to_target_vs_batch.png": lambda p: plot_steps_to_target(report, p),
        "lr_vs_batch.png": lambda p: plot_lr_vs_batch(report, p),
        "why_noise_scale_and_sharpness.png": lambda p: plot_noise_and_sharpness(report, p),
        "time_and_acc_vs_batch.png": lambda p: plot_time_and_acc_vs_batch(report, records, p),
    }
    written = []
    for name, draw in plots.items():
        path = out_dir / name
        try:
            drawn = draw(path)
        except Exception as e:  # a plot is a view of report.json (already written): never lose the study's end to it
            print(f"[largebatch] warning: plot {name} not drawn: {type(e).__name__}: {e}", flush=True)
            drawn = None
        if drawn is not None:
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict this one
    return written


def plot_throughput_vs_batch(report: dict, path: Path) -> Path | None:
    """The isolated throughput profile (tune/throughput.py): examples/s and ms per step vs batch size, log x."""
    entries = sorted(((report.get("throughput") or {}).get("entries") or []), key=lambda e: e["global_batch_size"])
    if not entries:
        return None
    fig, ax = _figure()
    bs = [e["global_batch_size"] for e in entries]
    ax.plot(bs, [e["examples_per_s"] for e in entries], marker="o", color="tab:blue", label="examples/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    ax.set_ylabel("examples/s (measured alone)", color="tab:blue")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(bs, [e["step_s"] * 1000 for e in entries], marker="s", ls="--", color="tab:orange", label="ms/step")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per optimizer step, alone", color="tab:orange")
    prof = report["throughput"]
    ax.set_title(f"Throughput profile ({prof.get('status', '')}, one trial's CPUs/GPU, no trial running)")
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------ instruments (critical batch, why)
def plot_steps_to_target(report: dict, path: Path) -> Path | None:
    """Steps to the target vs batch size, log-log (Shallue et al. 2018, arXiv 1811.03600): the measured points,
    McCandlish's fitted S = S_min + E_min/B, the perfect-scaling line, S_min, and the three regions shaded."""
    cb = report.get("critical_batch")
    if not cb or not cb["points"]:
        return None
    xs = [p["global_batch_size"] for p in cb["points"]]
    ys = [p["steps_to_target"] for p in cb["points"]]
    fig, ax = _figure()
    fit = cb["fit"]
    lo, hi = min(xs) / 2, max(xs) * 2
    if fit:
        lo, hi = min(lo, fit["perfect_scaling_below"] / 2), max(hi, fit["max_parallelism_above"] * 2)
        ax.axvspan(lo, fit["perfect_scaling_below"], color="tab:green", alpha=0.08, lw=0, label="perfect scaling")
        ax.axvspan(fit["perfect_scaling_below"], fit["max_parallelism_above"], color="tab:orange", alpha=0.08, lw=0,
                   label="diminishing returns")
        ax.axvspan(fit["max_parallelism_above"], hi, color="tab:red", alpha=0.08, lw=0, label="maximal parallelism")
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [fit["S_min"] + fit["E_min"] / b for b in grid], color="black", lw=1.5,
                label=f"fit S_min + E_min/B (B_crit={fit['B_crit']:.3g})")
        ax.plot(grid, [fit["E_min"] / b for b in grid], color="gray", ls=":", lw=1, label="perfect scaling E_min/B")
        ax.axhline(fit["S_min"], color="gray", ls="--", lw=1, label=f"S_min={fit['S_min']:.3g}")
        ax.axvline(fit["B_crit"], color="black", ls="-.", lw=1)
    gns = cb.get("grad_noise_scale_mean")
    if gns:
        ax.axvline(gns, color="tab:purple", ls="--", lw=1, label=f"measured B_simple={gns:.3g}")
    ax.scatter(xs, ys, color="tab:blue", zorder=5, label="measured (best recipe per batch)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=min(ys + ([fit["S_min"]] if fit else [])) / 2)
    return _log_log(fig, ax, path, "optimizer steps to target val_acc (log)",
                    "Steps to target vs batch size (critical batch)")


def _log_log(fig, ax, path: Path, ylabel: str, title: str) -> Path:
    """A plot against the batch size on log-log axes: labels, grid, legend, saved."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("global batch size (log2)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


def plot_lr_vs_batch(report: dict, path: Path) -> Path | None:
    """Re-tuned LR per batch size (report/lr.py), log-log: every LR tried (filled when it reached the target), the
    tuned one per batch, and the linear and sqrt predictions from the baseline's LR."""
    sec = report.get("lr_per_batch")
    if not sec:
        return None
    fig, ax = _figure()
    rows = sec["rows"]
    b0, lr0 = sec["baseline_batch"], sec["baseline_lr"]
    xs = [b0] + [r["global_batch_size"] for r in rows]
    for r in rows:
        for x in r["lrs"]:
            ax.scatter([r["global_batch_size"]], [x["peak_lr"]], s=30, zorder=4, edgecolors="tab:blue",
                       color="tab:blue" if x["time_to_target_s"] is not None else "white")
    div = [(r["global_batch_size"], lr) for r in rows for lr in r.get("diverged_lrs") or []]
    if div:
        ax.scatter([b for b, _ in div], [lr for _, lr in div], marker="x", color="tab:red", zorder=4, label="diverged")
    ax.plot([r["global_batch_size"] for r in rows], [r["tuned_lr"] for r in rows], marker="*", ms=12, color="black",
            label="tuned (soonest to target)")
    ax.plot(xs, [lr0 * b / b0 for b in xs], color="tab:red", ls="--", label="linear rule from the baseline")
    ax.plot(xs, [lr0 * math.sqrt(b / b0) for b in xs], color="tab:green", ls=":", label="sqrt rule from the baseline")
    ax.scatter([b0], [lr0], marker="s", color="tab:gray", zorder=5, label=f"baseline B={b0}")
    ax.scatter([], [], color="tab:blue", label="LR tried: reached the target (hollow: did not)")
    return _log_log(fig, ax, path, "peak LR (log)", "LR re-tuned per batch size vs the scaling rules")


def plot_noise_and_sharpness(report: dict, path: Path) -> Path | None:
    """Why: the gradient noise scale per batch size (left) and the sharpness per batch size and rule (right)."""
    why = report.get("why")
    if not why:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    if why["noise_scale"]:
        xs = [n["global_batch_size"] for n in why["noise_scale"]]
        left.plot(xs, [n["grad_noise_scale"] for n in why["noise_scale"]], marker="o", color="tab:purple",
                  label="measured B_simple (mean over recipes)")
        left.plot(xs, xs, color="gray", ls=":", label="B_simple = B")
        fit = (report.get("critical_batch") or {}).get("fit")
        if fit:
            left.axhline(fit["B_crit"], color="black", ls="-.", lw=1, label=f"fitted B_crit={fit['B_crit']:.3g}")
        left.set_xscale("log", base=2)
        left.set_yscale("log")
        left.legend(fontsize=7)
    left.set_xlabel("global batch size (log2)")
    left.set_ylabel("gradient noise scale")
    left.set_title("Noise scale: batches above it waste examples")
    left.grid(True, alpha=0.3, which="both")
    for rule in sorted({s["rule"] for s in why["sharpness"]}):
        pts = [s for s in why["sharpness"] if s["rule"] == rule]
        right.plot([s["global_batch_size"] for s in pts], [s["sharpness"] for s in pts], marker="o",
                   color=_color(rule), label=rule)
    if why["sharpness"]:
        right.set_xscale("log", base=2)
        right.legend(fontsize=7)
    right.set_xlabel("global batch size (log2)")
    right.set_ylabel("top Hessian eigenvalue (probe batch)")
    right.set_title("Sharpness per batch size and rule")
    right.grid(True, alpha=0.3)
    fig.savefig(path)
    return path


def time_and_acc_points(report: dict, records: list[dict]) -> dict[str, list[tuple[int, float | None, float]]]:
    """{optimizer: [(batch, time to target / the baseline's (None: never reached), final metric)]}, batches ascending;
    per batch and optimizer the recipe soonest to the target, else the best final value (its trials' final_<metric>
    from the records, else the report's figure)."""
    key, sign = report["metric"].split("_", 1)[1], 1.0 if _maxing(report) else -1.0
    by_id, b_t = {str(r.get("trial_id")): r for r in records}, (report.get("baseline") or {}).get("time_to_target_s")

    def final(c: dict) -> float | None:
        vals = [v for t in c.get("trial_ids") or [] if isinstance(v := by_id.get(t, {}).get(f"final_{key}"), float)]
        return sum(vals) / len(vals) if vals else c.get("acc_mean")

    rows = [(c, f) for c in report["configs"] if not c["is_baseline"] and (f := final(c)) is not None]
    rank = lambda cf: (cf[0].get("time_to_target_s") is None, cf[0].get("time_to_target_s") or 0.0,  # noqa: E731
                       -sign * cf[1])
    out: dict[str, list[tuple[int, float | None, float]]] = {}
    for o in sorted({c["optimizer"] for c, _ in rows}):  # sorted worst first: the best is the one a batch keeps
        best = {c["global_batch_size"]: (c, f) for c, f in sorted(rows, key=rank, reverse=True) if c["optimizer"] == o}
        out[o] = [(x, c["time_to_target_s"] / b_t if b_t and c.get("time_to_target_s") is not None else None, f)
                    for x, (c, f) in sorted(best.items())]
    return out


def plot_time_and_acc_vs_batch(report: dict, records: list[dict], path: Path) -> Path | None:
    """Over the batch size (log x), per optimizer: time to target / the baseline's (x: never), and the final metric."""
    lines, b, k = time_and_acc_points(report, records), report.get("baseline") or {}, _k(report)
    if not lines:
        return None
    b_t, (fig, (ax_t, ax_a)) = b.get("time_to_target_s"), _figure(7.0, 6.5, rows=2)
    top = max((t for pts in lines.values() for _, t, _ in pts if t is not None), default=1.0) * 1.25
    for i, (opt, pts) in enumerate(lines.items()):
        ax_a.plot([x for x, _, _ in pts], [f * k for _, _, f in pts], marker="o", color=f"C{i}", label=opt)
        if b_t:
            hit = [(x, t) for x, t, _ in pts if t is not None]
            ax_t.plot([x for x, _ in hit], [t for _, t in hit], marker="o", color=f"C{i}", label=opt)
            miss = [x for x, t, _ in pts if t is None]
            ax_t.scatter([x * 1.06**i for x in miss], [top] * len(miss), marker="x", s=60, color=f"C{i}")  # apart
    if b_t:
        ax_t.axhline(1.0, color="tab:red", lw=1, ls="--", label=f"baseline B={b['global_batch_size']}")
        ax_t.set(ylim=(0, top * 1.1), ylabel="time to target / baseline's (x: never)")
        ax_t.legend(fontsize=7)
    if b:
        ax_a.axhline(b["acc_mean"] * k, color="tab:red", lw=1, ls="--", label=f"baseline B={b['global_batch_size']}")
    ax_a.set_xscale("log", base=2)
    ax_a.set(xlabel="global batch size", ylabel="final " + report["metric"].split("_", 1)[1] + " (%)" * (k == 100))
    ax_a.legend(fontsize=7)
    ax_t.set_title("Time to the baseline's quality (normalised" + ("" if b_t else ": no baseline time to target")
                   + ") and final quality vs batch size")
    fig.savefig(path)
    return path
