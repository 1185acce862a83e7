"""A 1-worker trial run in the Tune trial's own process (docs/design.md §8).

A trial with one worker has no data parallelism, so Ray Train's controller and worker group (several seconds of
start-up per trial) buy it nothing. Here the same loop (`train_worker`) runs in the trial's process with the same
metrics, checkpoints and MLflow logging as under TorchTrainer (train/ray_worker.py); the data is built once per
process (tasks/build.py `cached_data`), and Tune reuses the process across trials.

Failures: a killed process is restarted by Tune (tuner.max_failures) from the trial's last checkpoint, and the
epochs already logged are not logged again; an exception raised by the loop fails the trial at once (it would
raise again on a retry). Storage that does not take a checkpoint fails nothing: the epoch is reported without it
and the checkpoint is kept locally until a later one is persisted (train/persist.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from largebatch.train.spec import TrialSpec
from largebatch.vocab import Status


_runs_here = 0  # trial runs (a resume is a run) this process has started: 1 = a new process (imports, data)


def run_in_process(spec: TrialSpec) -> dict[str, Any]:
    """Train the trial here, reporting every epoch to Tune; returns the outcome in the shape of
    train/trial.py `outcome` (final metrics, status, history, fit_s). Never raises for a failing trial."""
    from ray import tune

    from largebatch.failures import describe, format_failure
    from largebatch.tasks import cached_data, task_of
    from largebatch.train.loop import HISTORY_FILE, WorkerContext, train_worker
    from largebatch.train.persist import UNPERSISTED_TAG, CheckpointKeeper, TuneBackend
    from largebatch.tracking import EpochLogger

    global _runs_here
    _runs_here += 1
    # the same thread count as a Train worker with this CPU share: equal threads give equal float results
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    device = torch.device("cuda", 0) if spec.use_gpu else torch.device("cpu")  # Ray shows the trial its own GPU as 0
    history: list[dict] = []
    t_fit = spec.t_submit or time.time()  # from when the trial was asked for: its MLflow run creation counts
    logger: Optional[EpochLogger] = None
    keeper: Optional[CheckpointKeeper] = None

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if logger is not None:
            logger.log_epoch(metrics)  # first: the epoch's metrics do not wait for (or depend on) storage
        if ckpt_dir:
            history[:] = json.loads(Path(ckpt_dir, HISTORY_FILE).read_text())["history"]
        assert keeper is not None  # set before train_worker (the only caller) starts
        keeper.report(metrics, ckpt_dir)  # to Tune, with the checkpoint if storage takes it (else kept locally)

    try:
        keeper = CheckpointKeeper(TuneBackend())
        cfg = spec.cfg
        task = task_of(cfg)
        data = cached_data(task, cfg)
        res = spec.check(1, data.train_size)
        logger = EpochLogger.from_spec(spec.tracking)
        restore = tune.get_checkpoint()
        with (restore.as_directory() if restore is not None else contextlib.nullcontext()) as restore_dir:
            if restore_dir:
                history[:] = json.loads(Path(restore_dir, HISTORY_FILE).read_text())["history"]
                if logger is not None:  # epochs checkpointed but not yet in MLflow (killed between the two)
                    logger.backfill(history)
            if logger is not None:
                import ray

                # process / process_run: which trial process ran it (the last run, for a resumed trial), and
                # the how-manieth run there; 1 is a new process, whose start-up paid imports and data decoding
                logger.set_tags({"node_ids": ray.get_runtime_context().get_node_id(), "num_nodes": "1",
                                 "trial_runner": "in_process", "device": str(device),
                                 "process": str(os.getpid()), "process_run": str(_runs_here)})
            print(f"[largebatch] in-process trial: 1 worker on {device}, batch {res.per_worker_batch} x "
                  f"{res.grad_accum_steps} accum, peak lr {res.peak_lr:.4g}", flush=True)
            ctx = WorkerContext(rank=0, world=1, device=device, restore_dir=restore_dir, report=report,
                                t_submit=spec.t_submit)
            final = dict(train_worker(res, ctx, data, task))
        if keeper.final_kept and logger is not None:
            logger.set_tags({UNPERSISTED_TAG: keeper.final_kept})
        if logger is not None:
            logger.close()  # epochs MLflow missed while it was down go out now (a bounded wait)
    except Exception as e:
        return {"status": Status.FAILED.value, "reason": describe(e), "traceback": format_failure(e),
                "history": history, "fit_s": time.time() - t_fit}
    final.setdefault("status", Status.COMPLETED.value if history else Status.FAILED.value)
    final["fit_s"] = time.time() - t_fit + float(final.get("fit_before_s") or 0.0)
    final["history"] = history
    return final
