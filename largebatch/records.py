"""Trial records read back from MLflow: the report's only input (`largebatch report` rebuilds a study's report from
them later), and the lookup of a study's parent run with the options it logged."""
from __future__ import annotations

import math
from typing import Any, Optional

from largebatch.tracking import REASON_TAG, STATUS_TAG, TRIAL_TAG, RunTree, preflight_tracking
from largebatch.vocab import Status


def _f(v: Optional[str]) -> Optional[float]:
    try:
        return float(v) if v not in (None, "", "None") else None
    except ValueError:
        return None


HISTORY_KEYS = ("val_acc", "train_loss", "train_acc", "val_loss", "wall_s", "lr", "steps")


def records_from_mlflow(uri: str, experiment_id: str, parent_run_id: str) -> list[dict[str, Any]]:
    """The trial records (report.py's input) of one study invocation, from its MLflow child runs alone.
    Instrument figures are the last logged values, plus grad_noise_scale_mean (over epochs); `variant` names the
    searched settings beyond batch/rule/warmup/optimizer/base_lr, so the report keeps e.g. ramp vs decay apart."""
    import json
    import statistics

    from largebatch.vocab import TRIAL_FIGURES as instrument_keys
    report_keys = {"data.global_batch_size", "scaling.rule", "schedule.warmup_epochs", "optim.name", "optim.base_lr",
                   "seed"}
    tree = RunTree(uri)
    runs = tree.children(experiment_id, parent_run_id)
    records = []
    for run in runs:
        p, m, tags = run.data.params, run.data.metrics, run.data.tags
        history: dict[int, dict[str, Any]] = {}
        # the task's own per-epoch metrics (val_mse, val_bpb, ...) join the fixed ones
        keys = HISTORY_KEYS + tuple(sorted(k for k in m if k.startswith(("val_", "train_")) and k not in HISTORY_KEYS))
        for key in keys + ("grad_noise_scale", "sharpness"):
            # the first point per step: log_final re-logs the final values at step 0, after epoch 0's own
            for point in sorted(tree.metric_history(run.info.run_id, key), key=lambda q: (q.step, q.timestamp)):
                history.setdefault(point.step, {"epoch": point.step}).setdefault(key, point.value)
        gns = [h["grad_noise_scale"] for h in history.values() if math.isfinite(h.get("grad_noise_scale", math.nan))]
        try:
            factors = json.loads(p.get("schedule.batch_ramp.factors") or "[]")
        except ValueError:
            factors = []
        searched = [k for k in (p.get("searched") or "").split(",") if k and k not in report_keys]
        records.append({
            "trial_id": tags.get(TRIAL_TAG, run.info.run_id),
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "is_baseline": tags.get("is_baseline") == "True",
            "global_batch_size": int(float(p.get("data.global_batch_size", 0))),
            "rule": p.get("scaling.rule", "none"),
            "warmup_epochs": _f(p.get("warmup_epochs")) or 0.0,
            "optimizer": p.get("optim.name", "?"),
            "base_lr": _f(p.get("optim.base_lr")),
            "peak_lr": _f(p.get("peak_lr")),
            "seed": int(float(p.get("seed", 0))),
            "status": tags.get(STATUS_TAG, Status.RUNNING.value),
            "reason": tags.get(REASON_TAG),
            "best_val_acc": m.get("best_val_acc"),
            "final_val_acc": m.get("final_val_acc"),
            **{k: v for k, v in m.items() if k.startswith(("best_", "final_"))},
            "wall_s": m.get("wall_s"),
            "startup_s": m.get("startup_s"),
            "fit_s": m.get("fit_s"),
            "steps": int(m["steps"]) if "steps" in m else None,
            **{k: m.get(k) for k in instrument_keys},
            "grad_noise_scale_mean": statistics.fmean(gns) if gns else None,
            "batch_ramp": any(float(f) != 1.0 for f in factors),
            "variant": " ".join(f"{k.split('.')[-1]}={p.get(k)}" for k in searched),
            "history": [history[k] for k in sorted(history)],
        })
    records.sort(key=lambda r: (not r["is_baseline"], r["global_batch_size"], r["rule"], r["warmup_epochs"],
                                r["seed"], r["trial_id"]))
    return records


def find_study_run(uri: str, experiment: str, parent_run_id: Optional[str] = None) -> tuple[str, str, dict]:
    """(experiment id, parent run id, build_report options) of a study invocation; the latest when no id is given.
    The options (tolerance, metric, mode, units) come from the parameters the study logged on its parent run."""
    from largebatch.errors import BadInput

    preflight_tracking(uri)
    tree = RunTree(uri)
    exp = tree.experiment(experiment)
    if exp is None:
        names = [e.name for e in tree.experiments()]
        from largebatch.errors import unknown_choice

        raise BadInput(unknown_choice("experiment", experiment, names), field="--experiment")
    if parent_run_id:
        try:
            run = tree.run(parent_run_id)
        except Exception:
            raise BadInput(f"no run {parent_run_id!r} in {uri}", field="--run") from None
    else:
        runs = tree.latest_study([exp.experiment_id])
        if not runs:
            raise BadInput(f"experiment {experiment!r} has no study runs", field="--experiment")
        run = runs[0]
    p = run.data.params
    tol = _f(p.get("report.tolerance"))
    metric = p.get("tuner.metric") or "val_acc"
    mode = p.get("tuner.mode") if p.get("tuner.mode") in ("max", "min") else "max"
    units = p.get("report.tolerance_units") if p.get("report.tolerance_units") not in (None, "", "None") else None
    from largebatch.metrics import summary_name

    return exp.experiment_id, run.info.run_id, {"tolerance": 0.5 if tol is None else tol,
                                                "metric": summary_name(metric), "mode": mode, "units": units,
                                                "target": _f(p.get("report.target"))}
