"""The Tune function trainable: one TorchTrainer per trial (the pattern Ray 2.60 documents for Train V2).

`Tuner(trainer)` fails under Train V2, so each Tune trial builds its own TorchTrainer with `TuneReportCallback`
and calls `fit()`. The trial's MLflow child run is created here (the driver side of the trial) and its id travels
to rank 0 in the train_loop_config, so a restarted worker logs into the same run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from largebatch import raycompat
from largebatch.tracking import (FINAL_STATUSES, KIND_TAG, REASON_TAG, STATUS_TAG, TRIAL_DIR_TAG, TRIAL_INDEX_TAG,
                                 TRIAL_TAG, Tracker, trial_note)
from largebatch.config import flatten
from largebatch.redact import redact_text
from largebatch.train.spec import TrialSpec
from largebatch.tune.runtime import StudyRuntime
from largebatch.vocab import Status


def _already_finished(tracker: Tracker, run_id: str) -> bool:
    """True if the child run already holds a final status; its last metrics are reported to Tune again (a failed
    trial raises again), so Tune records the same outcome without training anything."""
    from ray import tune

    run = tracker.run(run_id)
    status = run.data.tags.get(STATUS_TAG)
    if status not in FINAL_STATUSES:
        return False
    if status == Status.FAILED:
        raise RuntimeError(run.data.tags.get(REASON_TAG) or "trial failed")
    tune.report({**run.data.metrics, "trial_id": tune.get_context().get_trial_id(), "status": status})
    raycompat.wait_for_tune_queue()
    return True


def _child_by_index(tracker: Tracker, rt: StudyRuntime, index: int, trial_id: str, trial_dir: str) -> Optional[str]:
    run_id = tracker.child_with_tag(rt.experiment_id, rt.parent_run_id, TRIAL_INDEX_TAG, f"{rt.run_name}:{index}")
    if run_id is None:
        return None
    tracker.set_tag(run_id, TRIAL_TAG, trial_id)  # Tune's id for it from now on
    tracker.set_tag(run_id, TRIAL_DIR_TAG, redact_text(trial_dir))
    return run_id


def _fit_with_ray_train(spec: TrialSpec, rt: StudyRuntime, trial_id: str) -> dict[str, Any]:
    from ray.tune.integration.ray_train import TuneReportCallback

    from largebatch.train.trial import fit_outcome, make_trainer

    trainer = make_trainer(spec, run_name=f"{rt.run_name}-{trial_id}", storage_path=rt.storage_path,
                           max_failures=rt.max_failures, callbacks=[TuneReportCallback()],
                           placement_strategy=rt.placement_strategy)
    t_fit = spec.t_submit or time.time()  # from when the trial was asked for: its MLflow run creation counts
    try:
        return fit_outcome(trainer, t_fit)
    except Exception as e:  # Ray itself failed under the trial (its controller or workers killed, e.g. OOM)
        from largebatch.failures import describe, format_failure

        return {"status": Status.FAILED.value, "reason": describe(e), "traceback": format_failure(e), "history": [],
                "fit_s": time.time() - t_fit}


def tune_trial(config: dict[str, Any], rt: StudyRuntime) -> None:
    from ray import tune

    t_submit = time.time()
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    spec, overrides = rt.trial_spec(config)
    cfg, arm, summary = spec.cfg, spec.arm, spec.res.summary()
    name = rt.label(spec, overrides)

    tracker = Tracker(rt.tracking_uri)
    run_id = tracker.find_child(rt.experiment_id, rt.parent_run_id, trial_id)
    index = config.get("index")
    if run_id is None and index is not None:
        # the driver died after this trial started but before Tune saved it: the resumed study asks for the same
        # trial (the same number) under a new Tune id; it continues the run it had, never a second one
        run_id = _child_by_index(tracker, rt, int(index), trial_id, Path(tctx.get_trial_dir()).name)
    if run_id is not None and _already_finished(tracker, run_id):
        return  # a resumed study re-ran a trial that had finished (driver killed before Tune saved it): no rerun
    params = {**flatten(cfg.model_dump(mode="json")), **summary, "arm": arm, "trial_id": trial_id,
              "searched": ",".join(overrides)}
    if run_id is not None:  # resumed: its process may have died between creating its run and logging its params
        if not tracker.call(tracker.run, run_id).data.params:
            tracker.log_params(run_id, params)
    else:
        run_id = tracker.start_run(rt.experiment_id, name, parent_id=rt.parent_run_id, params=params,
                                   tags={TRIAL_TAG: trial_id, KIND_TAG: "trial", STATUS_TAG: Status.RUNNING.value,
                                         **({TRIAL_INDEX_TAG: f"{rt.run_name}:{index}"} if index is not None else {}),
                                         TRIAL_DIR_TAG: Path(tctx.get_trial_dir()).name,
                                         "arm": arm, "is_baseline": str(arm == "baseline")})

    spec = spec.replace(tracking={"uri": rt.tracking_uri, "run_id": run_id}, t_submit=t_submit)
    if rt.in_process:  # 1 worker: no Train controller or worker group (train/inprocess.py)
        from largebatch.train.inprocess import run_in_process

        out = run_in_process(spec)
    else:
        out = _fit_with_ray_train(spec, rt, trial_id)
    # rank 0 already logged every reported metric at step = epoch (the last report included best_val_acc,
    # startup_s, ...): add only what the driver knows, at the last epoch's step, so no series gets a second point
    if out["history"]:
        final = {"fit_s": out["fit_s"], **{f"final_{k}": v for k, v in out["history"][-1].items()
                                           if k.startswith("val_")}}
        last_epoch = out["history"][-1]["epoch"]
    else:  # failed before its first report: whatever we have
        final = {k: v for k, v in out.items()
                 if k not in ("history", "status", "reason", "traceback", "epoch", "is_final")}
        last_epoch = 0
    # history: epochs rank 0 could not log (MLflow down until the trial ended) are backfilled from the checkpoint
    tracker.log_final(run_id, final, out["status"], out.get("reason"), step=last_epoch, history=out["history"])
    if out.get("traceback"):
        tracker.log_text(run_id, out["traceback"], "error.txt")  # the reason tag is one line; this is the rest
    tracker.set_note(run_id, trial_note(out["status"], {**out, **final}, out.get("reason")))
    tracker.end_run(run_id, "FAILED" if out["status"] == Status.FAILED else "FINISHED")
    if not rt.in_process:  # the race is between TuneReportCallback and the trial session
        raycompat.wait_for_tune_queue()
    if out["status"] == Status.FAILED:
        # Tune records the error (error.txt/error.pkl in the trial folder: the reason may quote a URI, masked);
        # the study goes on (failed trials are data in the report)
        raise RuntimeError(redact_text(out.get("reason") or "trial failed"))
