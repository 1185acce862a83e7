"""The report rendered: the terminal table, Markdown (report.md) and the files `write_report` leaves (report.json,
report.md, plots). Reads the dict build_report returns; the section text is report/sections.py's."""
from __future__ import annotations

import json
from pathlib import Path

from largebatch.report.lr import coarseness, format_lr_section
from largebatch.report.sections import format_sections
from largebatch.report.speed import basis_note, input_note
from largebatch.report.verdict import answer_lines, is_keep_baseline, seconds


def _pct(acc: float | None, std: float | None = None) -> str:
    if acc is None:
        return "-"
    return f"{acc * 100:.2f}%" + (f" ± {std * 100:.2f}" if std is not None else "")


def _val(report: dict, v: float | None, std: float | None = None) -> str:
    """A metric value as the report shows it: percent for an accuracy-like metric (points), else 4 digits."""
    if report.get("tolerance_units", "points") == "points":
        return _pct(v, std)
    if v is None:
        return "-"
    return f"{v:.4g}" + (f" ± {std:.2g}" if std is not None else "")


_UNIT_LABEL = {"points": "pts", "absolute": "abs", "relative": "rel"}


def metric_label(report: dict) -> str:
    """The per-epoch metric behind the report's summary: best_val_acc -> val_acc."""
    return report["metric"].split("_", 1)[1]


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _recipe_cell(p: dict) -> str:
    if p["rule"] is None:
        return f"all {p['n_diverged']} diverged" if p["n_diverged"] else "no result"
    return f"{p['rule']}, warmup {p['warmup_epochs']:g}ep, peak LR {_num(p['peak_lr'], '.4g')}"


def _projected(report: dict | None) -> bool:
    return (report or {}).get("speed_basis") == "projected"


def _time(c: dict, report: dict | None) -> str:
    """A recipe's speed: the projected training time with the measured wall-clock beside it, or the wall-clock."""
    if _projected(report):
        return f"{seconds(c.get('projected_s'))} s projected ({seconds(c['wall_s_mean'])} s wall-clock)"
    return f"{seconds(c['wall_s_mean'])} s"


def _config_line(c: dict | None, report: dict | None = None) -> str:
    if c is None:
        return "none"
    line = (f"{c['label']} (peak LR {_num(c['peak_lr'], '.4g')}): {_val(report or {}, c['acc_mean'], c['acc_std'])}, "
            f"{_time(c, report)}, speed-up {_num(c['speedup'], '.2f')}x")
    if c.get("time_to_target_s") is not None:
        line += (f"; to the target in {_num(c['steps_to_target'], '.0f')} steps, {seconds(c['time_to_target_s'])} s"
                 f" ({_num(c.get('target_speedup'), '.2f')}x the baseline's time to target)")
    return line


def first_screen(report: dict) -> list[str]:
    """The answer, the cost and the payback: the report's first three lines (report/verdict.py)."""
    tt = report.get("time_to_target") or {}
    value = "-" if not tt else (_val(report, tt["value"]) if tt["metric"] == metric_label(report)
                                else f"{tt['value']:.4g}")
    return answer_lines(report, value)


def format_time_to_target(report: dict) -> list[str]:
    """The headline table: per batch size, the recipe that reaches the target soonest (report/target.py)."""
    tt = report.get("time_to_target")
    if not tt:
        return []
    proj = _projected(report)
    head = ["batch", "soonest recipe to target", "reached", "steps (crossed after)", "examples",
            "projected s*" if proj else "wall-clock s", "speed-up to target"]
    rows = [[str(p["global_batch_size"]) + (" (baseline)" if _is_baseline_batch(report, p) else ""),
             p["recipe"] or "none reached", f"{p['n_reached']}/{p['n_recipes']}", _steps(p),
             _num(p["examples_to_target"], ".0f"), seconds(p["time_to_target_s"]),
             "-" if p["target_speedup"] is None else f"{p['target_speedup']:.2f}x"] for p in tt["per_batch"]]
    value = _val(report, tt["value"]) if tt["metric"] == metric_label(report) else f"{tt['value']:.4g}"
    sign = ">=" if tt.get("mode", "max") == "max" else "<="
    after = tt.get("baseline_steps_after")
    return [f"Time to the baseline's quality: {tt['metric']} {sign} {value} ({tt['source']}), first reached at an "
            f"epoch end; the baseline gets there in {_num(tt['baseline_steps'], '.0f')} steps, "
            f"{seconds(tt['baseline_time_s'])} s" + ("" if after is None else
                                                         f" (it crossed after step {after:.0f}: evaluations are at "
                                                         f"epoch ends)"), "", *_grid(head, rows), ""]


def _steps(p: dict) -> str:
    if p["steps_to_target"] is None:
        return "-"
    after = p.get("steps_after")
    return _num(p["steps_to_target"], ".0f") + ("" if after is None else f" ({after:.0f})")


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def format_table(report: dict) -> str:
    """Markdown: one row per batch size, then baseline, max safe batch, recommendation, counts, failures. With a
    throughput profile a 'projected s*' column comes before the measured wall-clock, and the speed-up follows it."""
    units = _UNIT_LABEL[report.get("tolerance_units", "points")]
    proj = _projected(report)
    out = [*first_screen(report), "", *format_time_to_target(report), *_per_batch_grid(report, units, proj), ""]
    out += _summary_lines(report, units, proj)
    out += _critical_and_lr_lines(report)
    out.append("- counts: " + ", ".join(f"{k}={v}" for k, v in report["counts"].items()))
    out.append(f"- failures: {len(report['failures'])}")
    out += [f"  - {f['name']} [{f['trial_id']}]: {f['status']}" + (f" ({f['reason']})" if f["reason"] else "")
            for f in report["failures"]]
    out += [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(out) + "\n"


def _per_batch_grid(report: dict, units: str, proj: bool) -> list[str]:
    """The table's lines: one row per batch size."""
    name = metric_label(report)
    head = ["batch", "best recipe (rule, warmup, peak LR)", f"{name} (mean ± std)", f"gap vs baseline ({units})",
            f"no-scaling {name}", *(["projected s*"] if proj else []), "wall-clock s", "steps",
            "speed-up*" if proj else "speed-up"]
    rows = []
    for p in report["per_batch"]:
        rows.append([
            str(p["global_batch_size"]) + (" (baseline)" if _is_baseline_batch(report, p) else ""),
            _recipe_cell(p),
            _val(report, p["acc_mean"], p["acc_std"]) + (f" (n={p['n_seeds']})" if p["n_seeds"] else ""),
            _num(p["gap_points"], "+.2f" if units == "pts" else "+.3g"),
            _val(report, p["noscale_acc"]),
            *([seconds(p.get("projected_s"))] if proj else []),
            seconds(p["wall_s"]),
            _num(p["steps"], "d"),
            "-" if p["speedup"] is None else f"{p['speedup']:.2f}x",
        ])
    return _grid(head, rows)


def _summary_lines(report: dict, units: str, proj: bool) -> list[str]:
    """The bullets from the metric to the recommendation and its seeds."""
    out: list[str] = []
    b = report["baseline"]
    mode = report.get("mode", "max")
    out.append(f"- metric: {report['metric']}, tolerance: {report['tolerance']:g} {units}"
               + ("" if mode == "max" else " (lower is better)"))
    out.append("- baseline: none" if b is None else
               f"- baseline: B={b['global_batch_size']} {b['rule']} {b['optimizer']} base_lr={b['base_lr']:g}: "
               f"{_val(report, b['acc_mean'], b['acc_std'])} (n={b['n']}), {_time(b, report)}, "
               f"{_num(b['steps'], 'd')} steps")
    out.append(("- *" if proj else "- ") + basis_note(report))
    note = input_note(report.get("throughput")) if proj else None
    if note:  # where the step is mostly the input pipeline, the speeds say more about it than about the batch
        out.append(f"- note: {note}")
    out.append(f"- max_safe_batch: {report['max_safe_batch'] if report['max_safe_batch'] is not None else 'none'}")
    rec = report["recommended"]
    keep = " (keep the baseline)" if is_keep_baseline(rec) and b is not None else ""
    out.append(f"- recommended{keep}: {_config_line(rec, report)}")
    conf = (rec or {}).get("confirmation")
    if conf:
        out.append(f"- seeds: {_seeds_line(conf)}")
    return out


def _critical_and_lr_lines(report: dict) -> list[str]:
    """The bullets for the critical batch fit and the LR re-tuned per batch size."""
    out: list[str] = []
    fit = (report.get("critical_batch") or {}).get("fit")
    if fit:
        gns = report["critical_batch"]["grad_noise_scale_mean"]
        out.append(f"- critical batch (steps to the target): B_crit = {fit['B_crit']:.4g} (S_min {fit['S_min']:.4g} "
                   f"steps, E_min {fit['E_min']:.4g} examples)"
                   + ("" if gns is None else f"; measured grad_noise_scale {gns:.4g}"))
    for r in (report.get("lr_per_batch") or {}).get("rows", []):
        lo, hi = r.get("tried_range") or (None, None)
        if r["tuned_lr"] is None:  # no comparison from recipes that never reached the target
            out.append(f"- LR re-tuned at B={r['global_batch_size']}: none of the {r['n_lrs']} LRs tried "
                       f"({_num(lo, '.3g')} to {_num(hi, '.3g')}) reached the target: no tuned LR to compare "
                       "with the rules")
            continue
        out.append(f"- LR re-tuned at B={r['global_batch_size']}: peak LR {r['tuned_lr']:.4g} = "
                   f"{r['tuned_over_linear']:.3g}x the linear rule's {r['predicted_linear']:.4g}, "
                   f"{r['tuned_over_sqrt']:.3g}x the sqrt rule's {r['predicted_sqrt']:.4g} "
                   f"({r['n_lrs']} LRs tried; {coarseness(r)})")
    return out


def _seeds_line(conf: dict) -> str:
    """'confirmed, reached the target 2/2: seed 0 3.1 s (468 steps), seed 1 3.5 s (...); 3.3 ± 0.28 s'."""
    each = ", ".join(f"seed {p['seed']} " + (f"{seconds(p['time_to_target_s'])} s ({p['steps_to_target']:,.0f} steps)"
                                             if p["reached"] else "missed")
                     for p in conf["per_seed"])
    spread = ("" if conf["time_to_target_mean_s"] is None or conf["n_seeds"] < 2 else
              f"; {seconds(conf['time_to_target_mean_s'])} ± {seconds(conf['time_to_target_std_s'])} s")
    missed = "".join(f"; {m['recipe']} missed on a seed ({m['reached']})" for m in conf.get("missed") or [])
    return f"{conf['status']}, reached the target {conf['reached']}: {each}{spread}{missed}"


def _is_baseline_batch(report: dict, p: dict) -> bool:
    b = report["baseline"]
    return b is not None and b["global_batch_size"] == p["global_batch_size"]


def format_markdown(report: dict) -> str:
    """report.md: title, the table, the Pareto front, failures (inside the table block)."""
    what = "accuracy" if metric_label(report) == "val_acc" else metric_label(report)
    speed = "projected time" if _projected(report) else "wall-clock"
    parts = ["# largebatch report", "", format_table(report), f"## Pareto front ({speed} vs {what})", ""]
    parts += [f"{i}. {_config_line(c, report)}" for i, c in enumerate(report["pareto"], 1)] or ["(empty)"]
    sections = "\n".join(format_lr_section(report)) + format_sections(report)
    return "\n".join(parts) + "\n" + ("\n" + sections if sections else "")


def write_report(report: dict, records: list[dict], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots that have data. Returns the paths written."""
    from largebatch.report.plots import write_plots  # matplotlib is imported only when plots are drawn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(format_markdown(report))
    return paths + write_plots(report, records, out)
