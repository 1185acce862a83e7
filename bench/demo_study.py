"""The `make demo` study's costs (issue #14): where the main study's time goes, as its driver prints it at the end.

`make demo` runs `largebatch tune tune_spaces/fashion-mnist.yaml` (the Makefile's `demo` target): 18 grid points +
the B=16 baseline, full Fashion-MNIST, 10 epochs, 1-worker trials two at a time on this 2-core machine. This
benchmark runs that study the same way: `run_study` on the unmodified study file, in a child process, with Ray
started by `run_study` itself (`largebatch.raylib.init_ray`: a local head node of our own, stopped by PID at the
end) and a fresh run root in /tmp (SQLite MLflow and Ray storage under it, as `make demo` makes under runs/; so the
throughput profile is measured, as in a first `make demo`). --quick runs the study's `smoke:` block (`--smoke`).

The figures are the driver's own (largebatch/tune/costs.py `study_costs`, the closing "[largebatch] study ..."
line), read from the report run_study returns:
- training share = sum of the trials' `wall_s` (the loop's clock: first step to last report, training and
  evaluation) / sum of their `fit_s` (each trial's cost in its process, start-up included). Goal >= 0.85.
- wall / ideal = the study's wall-clock (`study_s`: Tune's fit, the throughput profile before it included) /
  (sum of `wall_s` / concurrent trials). Goal <= 1.3.
Both are ratios of quantities measured in the same study. The JSON keeps every trial's `startup_s`, `wall_s`,
`fit_s` and `trial_runner` tag, and a stricter share, training / (training + start-up), with `startup_s`
measured from the moment the trial's function started (its MLflow run's creation included; `fit_s` starts later).
"""
from __future__ import annotations

import os
import time
from typing import Any

from bench import common

NAME = "demo_study"
GOAL_SHARE = 0.85
GOAL_OVER_IDEAL = 1.3


def child(spec: dict) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from largebatch.config import load_study
    from largebatch.records import records_from_mlflow
    from largebatch.tune.driver import run_study

    os.environ.pop("RAY_ADDRESS", None)  # `make demo` on this machine: a local head of its own
    root = common.short_tmpdir()
    study = load_study(common.STUDY_FILE, smoke=spec["smoke"])
    t = time.time()
    report = run_study(study, source=str(common.STUDY_FILE.relative_to(common.REPO_ROOT)),
                       study_text=common.STUDY_FILE.read_text(), run_root=root, live=False)
    call_s = time.time() - t
    s = report["study"]
    records = records_from_mlflow(s["tracking_uri"], s["experiment_id"], s["parent_run_id"])
    client = MlflowClient(s["tracking_uri"])
    trials = [{**{k: r.get(k) for k in ("name", "is_baseline", "status", "global_batch_size", "rule", "warmup_epochs",
                                        "best_val_acc", "startup_s", "wall_s", "fit_s", "steps")},
               "trial_runner": client.get_run(r["run_id"]).data.tags.get("trial_runner")} for r in records]
    return {"study": {k: v for k, v in s.items() if k not in ("tracking_uri", "storage")},
            "run_study_call_s": call_s, "recommended": report.get("recommended"), "trials": trials,
            "slots": s.get("slots")}  # concurrent trials, as study_costs used them


def run(quick: bool = False) -> dict[str, Any]:
    got = common.run_child("bench.demo_study:child", {"smoke": quick}, timeout_s=900 if quick else 3000,
                           log_name="demo_study")
    return analyse(got, quick)


def analyse(got: dict[str, Any], quick: bool) -> dict[str, Any]:
    s, trials = got["study"], got["trials"]
    share, over = s.get("training_share"), s.get("study_over_ideal")
    training, startup = s.get("training_s") or 0.0, s.get("startup_s") or 0.0
    strict = common.ratio(training, training + startup)
    in_process = sum(t.get("trial_runner") == "in_process" for t in trials)
    what = "smoke block" if quick else "full study"
    summary = [
        common.figure(f"training seconds / trial-seconds, `make demo` study ({what}, {len(trials)} trials)", share,
                      goal=f">= {GOAL_SHARE}", met=share is not None and share >= GOAL_SHARE, key="demo_share"),
        common.figure("`make demo` study wall-clock / (training seconds / concurrent trials)", over,
                      goal=f"<= {GOAL_OVER_IDEAL}", met=over is not None and over <= GOAL_OVER_IDEAL,
                      key="demo_over_ideal"),
        common.figure("  study wall-clock, trial-seconds, training seconds, start-up seconds", s.get("study_s"),
                      unit=" s", shown=f"{s.get('study_s', 0):.0f} / {s.get('trial_s', 0):.0f} / {training:.0f} / "
                                       f"{startup:.0f} s"),
        common.figure("  training / (training + start-up from the trial function's start)", strict),
        common.figure("  trials trained in Tune's trial process", common.ratio(in_process, len(trials)),
                      shown=f"{in_process} / {len(trials)}"),
    ]
    return {"settings": {"study": str(common.STUDY_FILE.relative_to(common.REPO_ROOT)),
                         "smoke": quick, "as": "make demo: largebatch tune tune_spaces/fashion-mnist.yaml",
                         "figures": "largebatch/tune/costs.py study_costs, from run_study's report"},
            "training_share": share, "study_over_ideal": over, "training_over_training_plus_startup": strict,
            "in_process_trials": in_process, **got, "summary": summary}
