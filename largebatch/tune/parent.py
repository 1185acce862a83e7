"""The parent MLflow run of a new study or an extension (the third stage, tune/driver.py `open_runs`, reopens the
run --resume continues itself): a new run name, then either the completed run that --extend adds trials to, reopened
(tune/extend.py), or a new parent run with the study's settings, its file and its resolved search space."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from largebatch.config import flatten
from largebatch.redact import redact_uri
from largebatch.tracking import RUN_NAME_TAG
from largebatch.tune.plan import StudyState

if TYPE_CHECKING:
    from largebatch.tracking import Tracker


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def open_parent(state: StudyState, tracker: Tracker, exp_id: str) -> None:
    """A new run name; the parent run reopened for --extend (its stopper learns the target from the finished
    trials: no baseline runs in an extension), else started."""
    from largebatch.tune.extend import reopen_parent

    plan = state.plan
    stamp = time.strftime("%Y%m%d-%H%M%S")
    state.run_name = f"{plan.exp_name}-{stamp}"
    if plan.extending is not None:
        state.parent_id = plan.extending["parent_id"]
        reopen_parent(tracker, plan.extending, state.run_name, plan.study_text, stamp)
        if plan.stopper is not None:  # no baseline runs in an extension: the finished one sets the target
            from largebatch.records import records_from_mlflow

            plan.stopper.learn_from_records(records_from_mlflow(plan.tracking_uri, exp_id, state.parent_id))
    else:
        state.parent_id = _start_parent(state, tracker, exp_id, stamp)


def _start_parent(state: StudyState, tracker: Tracker, exp_id: str, stamp: str) -> str:
    from largebatch.report.target import explicit_target
    from largebatch.tracking import KIND_TAG

    plan, info = state.plan, state.info
    study, t, storage_path = plan.study, plan.study.tuner, plan.storage_path
    parent_id = tracker.start_run(exp_id, f"study {stamp}", params={
        **{f"tuner.{k}": v for k, v in t.model_dump(mode="json").items()},
        **{f"report.{k}": v for k, v in study.report.model_dump(mode="json").items()},  # tolerance and its units
        "study": study.name, "source": plan.source, "n_trials": plan.n_trials, "max_concurrent": state.max_conc,
        "report.tolerance": study.report.tolerance, "storage": redact_uri(storage_path),
        "report.target": explicit_target(t.metric, study.base.budget.target_val_acc),
        "search_keys": ",".join(study.search)},
        tags={KIND_TAG: "study", "git_commit": _git_commit(), "ray_address": info["address"],
              "ray_nodes": str(info["nodes"]), "storage": redact_uri(storage_path), RUN_NAME_TAG: state.run_name})
    tracker.log_text(parent_id, plan.study_text, "study.yaml")
    tracker.log_text(parent_id, json.dumps({"search": study.search, "baseline": study.baseline,
                                            "resolved_base": flatten(plan.base_tree)}, indent=2, default=str),
                     "search_space.json")
    return parent_id
