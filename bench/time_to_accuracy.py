"""Time-to-accuracy (docs/design.md §9): the study's recommended config vs the small-batch baseline, full Fashion-MNIST,
2 workers through Ray Train, 10 epochs (the study's examples budget).

The target is the baseline's final val_acc minus 0.5 points. Each trial's time to it is the `wall_s` (first step
-> end of that epoch, from the trial history) of the first epoch whose val_acc reaches it; start-up is added for
the "as the user waits" figure. The recommended config is the one the `demo_study` benchmark's study recommended
in the same results folder (run_all runs it first), else the newest `make demo` report (runs/ray/fashion-mnist-*/
report/report.json), else docs/design.md §1's B=1024, linear rule, 2-epoch warmup. It runs before
and after the baseline (medians), so a burst of load on the shared machine does not decide the speed-up alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from bench import common

NAME = "time_to_accuracy"
TOLERANCE_POINTS = 0.5
FALLBACK = {"data.global_batch_size": 1024, "scaling.rule": "linear", "schedule.warmup_epochs": 2.0}


def _overrides(rec: dict) -> dict[str, Any]:
    return {"data.global_batch_size": int(rec["global_batch_size"]), "scaling.rule": rec["rule"],
            "schedule.warmup_epochs": float(rec["warmup_epochs"]), "optim.name": rec["optimizer"],
            "optim.base_lr": float(rec["base_lr"])}


def recommended_overrides(results_dir: Optional[Path] = None) -> tuple[dict[str, Any], str]:
    demo = Path(results_dir or common.RESULTS_DIR) / "demo_study.json"
    if demo.is_file():
        rec = (json.loads(demo.read_text()) or {}).get("recommended")
        if rec:
            where = demo.relative_to(common.REPO_ROOT) if demo.is_relative_to(common.REPO_ROOT) else demo
            return _overrides(rec), f"{where} (the demo_study benchmark's study)"
    reports = sorted(common.REPO_ROOT.glob("runs/ray/fashion-mnist-*/report/report.json"),
                     key=lambda p: p.stat().st_mtime)
    for path in reversed(reports):
        rec = (json.loads(path.read_text()) or {}).get("recommended")
        if rec:
            return _overrides(rec), str(path.relative_to(common.REPO_ROOT))
    return dict(FALLBACK), "docs/design.md §1 (no demo report found)"


def time_to(history: list[dict], target: float) -> Optional[float]:
    return next((h["wall_s"] for h in history if h["val_acc"] >= target), None)


def child(spec: dict) -> dict[str, Any]:
    from largebatch.config import resolve
    from largebatch.train.trial import run_trial

    ray_info = common.start_ray()
    storage = common.short_tmpdir()
    out = []
    for arm in spec["order"]:
        cfg = common.trial_config({**spec["common"], **spec[arm]})
        r = run_trial(resolve(cfg, spec["workers"]), run_name=f"bench-tta-{arm}-{time.time_ns()}",
                      storage_path=storage)
        out.append({"arm": arm, "status": r["status"], "startup_s": r.get("startup_s"), "fit_s": r.get("fit_s"),
                    "history": [{k: h[k] for k in ("epoch", "val_acc", "wall_s", "throughput")} for h in r["history"]]})
    return {"ray": ray_info, "trials": out}


def run(quick: bool = False, results_dir: Optional[Path] = None) -> dict[str, Any]:
    from largebatch.config import baseline_trial, load_study

    study = load_study(common.STUDY_FILE)
    baseline = {k: v for k, v in (study.baseline or {}).items()}
    rec, source = recommended_overrides(results_dir)
    common_over = {"data.train_subset": 12000, "budget.epochs": 3} if quick else {}
    order = ["recommended", "baseline", "recommended"] if not quick else ["recommended", "baseline"]
    spec = {"workers": 2, "common": common_over, "baseline": baseline, "recommended": rec, "order": order}
    baseline_trial(study)  # the study's own validation of the baseline overrides
    got = common.run_child("bench.time_to_accuracy:child", spec, timeout_s=900 if quick else 1800,
                           log_name="time_to_accuracy")
    trials = got["trials"]
    base = next(t for t in trials if t["arm"] == "baseline")
    recs = [t for t in trials if t["arm"] == "recommended"]
    target = base["history"][-1]["val_acc"] - TOLERANCE_POINTS / 100
    t_base = time_to(base["history"], target)
    t_recs = [time_to(t["history"], target) for t in recs]
    reached = [t for t in t_recs if t is not None]
    t_rec = common.median(reached) if len(reached) == len(t_recs) else None
    start_rec = common.median(t["startup_s"] for t in recs)
    speedup = common.ratio(t_base, t_rec) if t_base and t_rec else None
    speedup_incl = (common.ratio(t_base + base["startup_s"], t_rec + start_rec)
                    if t_base and t_rec else None)
    summary = [
        common.figure("baseline time-to-target / recommended time-to-target (training wall-clock)", speedup,
                      unit="x", goal="> 1 (a fraction of the baseline's wall-clock)", met=None if speedup is None
                      else speedup > 1),
        common.figure("same, with each trial's Ray start-up added", speedup_incl, unit="x"),
        common.figure("recommended final val_acc - baseline final val_acc",
                      (common.median(t["history"][-1]["val_acc"] for t in recs) - base["history"][-1]["val_acc"]) * 100,
                      unit=" points", goal=f">= -{TOLERANCE_POINTS}"),
    ]
    return {
        "settings": {"workers": 2, "dataset": "fashion-mnist", "epochs": 3 if quick else 10,
                     "train_subset": common_over.get("data.train_subset"), "baseline": baseline,
                     "recommended": rec, "recommended_from": source, "order": order,
                     "tolerance_points": TOLERANCE_POINTS},
        "target_val_acc": target,
        "baseline_time_to_target_s": t_base,
        "recommended_time_to_target_s": t_recs,
        "speedup": speedup,
        "speedup_incl_startup": speedup_incl,
        "recommended_reached_target": len(reached) == len(t_recs),
        "ray": got["ray"],
        "trials": trials,
        "summary": summary,
    }
