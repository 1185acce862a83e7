"""The plots' shared look: a bare Agg `Figure` (no pyplot, no global backend), the rule colours, the metric's scale
and label, and the baseline's tolerance band. matplotlib is imported inside `_figure`, so importing this module
loads nothing heavy. Used by report/plots.py.
"""
from __future__ import annotations

_RULE_COLORS = {"none": "tab:gray", "linear": "tab:blue", "sqrt": "tab:green", "power": "tab:purple"}


def _figure(width: float = 7.0, height: float = 4.5, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=True)  # one Axes, or `rows` of them over one x axis


def _color(rule: str) -> str:
    return _RULE_COLORS.get(rule, "tab:orange")


def _k(report: dict) -> float:
    """Plot scale: accuracy-like metrics (tolerance in points) in percent, others as they are."""
    return 100.0 if report.get("tolerance_units", "points") == "points" else 1.0


def _maxing(report: dict) -> bool:
    return report.get("mode", "max") == "max"


def _ylabel(report: dict) -> str:
    return f"{report['metric']}" + (" (%)" if _k(report) == 100.0 else "") + ("" if _maxing(report) else
                                                                              " (lower is better)")


def _baseline_band(ax, report: dict) -> None:
    b = report["baseline"]
    if b is None:
        return
    k, tol, units = _k(report), report["tolerance"], report.get("tolerance_units", "points")
    acc = b["acc_mean"] * k
    slack = tol if units == "points" else (tol if units == "absolute" else tol * abs(b["acc_mean"]))
    lo, hi = (acc - slack, acc) if _maxing(report) else (acc, acc + slack)
    if units == "points":  # drawn both sides, as it always was for accuracy
        lo, hi = acc - slack, acc + slack
    label = {"points": "pts", "absolute": "", "relative": f"({tol:g} relative)"}[units]
    ax.axhspan(lo, hi, color="tab:red", alpha=0.12, lw=0,
               label=f"baseline ± {tol:g} pts" if units == "points" else f"tolerance {tol:g} {label}".strip())
    ax.axhline(acc, color="tab:red", lw=1, ls="--", label=f"baseline B={b['global_batch_size']}")
