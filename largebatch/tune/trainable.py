"""The Tune function trainable: one TorchTrainer per trial (the pattern Ray 2.60 documents for Train V2).

`Tuner(trainer)` fails under Train V2, so each Tune trial builds its own TorchTrainer with `TuneReportCallback`
and calls `fit()`. The trial's MLflow child run is created here (the driver side of the trial) and its id travels
to rank 0 in the train_loop_config, so a restarted worker logs into the same run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from largebatch.config import apply_overrides, parse_trial, resolve
from largebatch.tracking import FINAL_STATUSES, KIND_TAG, STATUS_TAG, TRIAL_DIR_TAG, TRIAL_TAG, Tracker, trial_note
from largebatch.config import flatten


def trial_label(summary: dict[str, Any], arm: str, overrides: dict[str, Any], seed: int, n_seeds: int) -> str:
    """Readable child-run name, e.g. 'B=1024 linear warmup=2ep' (docs/design.md §2.4)."""
    w = summary["warmup_epochs"]
    parts = [f"B={summary['global_batch_size']}", summary["rule"], f"warmup={w:g}ep"]
    for key, value in overrides.items():
        if key in ("data.global_batch_size", "scaling.rule", "schedule.warmup_epochs"):
            continue
        short = key.split(".")[-1]
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    if n_seeds > 1:
        parts.append(f"seed={seed}")
    label = " ".join(parts)
    return f"baseline {label}" if arm == "baseline" else label


def _wait_for_tune_queue(timeout_s: float = 30.0) -> None:
    """Workaround for a Tune-over-Train-V2 hang (docs/design.md §8): the size-1 queue between TuneReportCallback and the
    trial session can race the end-of-run marker. Wait until it is drained, then give Tune a second."""
    try:
        from ray.train._internal.session import get_session

        q = get_session()._inter_actor_queue
        deadline = time.time() + timeout_s
        while q is not None and not q.empty() and time.time() < deadline:
            time.sleep(0.1)
    except Exception:  # the private API moved: fall back to the sleep alone
        pass
    time.sleep(1.0)




def _already_finished(tracker: Tracker, run_id: str) -> bool:
    """True if the child run already holds a final status; its last metrics are reported to Tune again (a failed
    trial raises again), so Tune records the same outcome without training anything."""
    from ray import tune

    run = tracker.client.get_run(run_id)
    status = run.data.tags.get(STATUS_TAG)
    if status not in FINAL_STATUSES:
        return False
    if status == "failed":
        raise RuntimeError(run.data.tags.get("reason") or "trial failed")
    tune.report({**run.data.metrics, "trial_id": tune.get_context().get_trial_id(), "status": status})
    _wait_for_tune_queue()
    return True


def tune_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from largebatch.train.trial import fit_outcome, make_trainer

    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    arm, seed = config["arm"], int(config["seed"])
    overrides = dict(config["overrides"] or {})
    base_tree = ctx["baseline_tree"] if arm == "baseline" else ctx["base_tree"]
    cfg = parse_trial(apply_overrides(base_tree, {**overrides, "seed": seed}), source=ctx["source"],
                      prefix="baseline." if arm == "baseline" else "search.")
    res = resolve(cfg, ctx["workers_per_trial"], train_size=ctx["train_sizes"].get(cfg.data.train_subset or 0),
                  source=ctx["source"])
    summary = res.summary()
    name = trial_label(summary, arm, overrides if arm == "search" else {}, seed, len(ctx["seeds"]))

    tracker = Tracker(ctx["tracking_uri"])
    run_id = tracker.find_child(ctx["experiment_id"], ctx["parent_run_id"], trial_id)
    if run_id is not None and _already_finished(tracker, run_id):
        return  # a resumed study re-ran a trial that had finished (driver killed before Tune saved it): no rerun
    if run_id is None:
        params = {**flatten(cfg.model_dump(mode="json")), **summary, "arm": arm, "trial_id": trial_id,
                  "searched": ",".join(overrides)}
        run_id = tracker.start_run(ctx["experiment_id"], name, parent_id=ctx["parent_run_id"], params=params,
                                   tags={TRIAL_TAG: trial_id, KIND_TAG: "trial", STATUS_TAG: "running",
                                         TRIAL_DIR_TAG: Path(tctx.get_trial_dir()).name,
                                         "arm": arm, "is_baseline": str(arm == "baseline")})

    trainer = make_trainer(
        res, run_name=f"{ctx['run_name']}-{trial_id}", storage_path=ctx["storage_path"],
        cpus_per_worker=ctx["cpus_per_worker"], use_gpu=ctx["use_gpu"], max_failures=ctx["max_failures"],
        tracking={"uri": ctx["tracking_uri"], "run_id": run_id}, callbacks=[TuneReportCallback()],
        placement_strategy=ctx.get("placement_strategy", "PACK"))
    t_fit = time.time()
    try:
        out = fit_outcome(trainer)
    except Exception as e:  # Ray itself failed under the trial (its controller or workers killed, e.g. OOM)
        from largebatch.failures import describe, format_failure

        out = {"status": "failed", "reason": describe(e), "traceback": format_failure(e), "history": [],
               "fit_s": time.time() - t_fit}
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
    tracker.end_run(run_id, "FAILED" if out["status"] == "failed" else "FINISHED")
    _wait_for_tune_queue()
    if out["status"] == "failed":
        # Tune records the error; the study goes on (failed trials are data in the report)
        raise RuntimeError(out.get("reason") or "trial failed")
