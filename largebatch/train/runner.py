"""One trial in the process that trains it: the sequence both trial processes share, behind a small host adapter.

`run_trial_here(spec, host)` sets the thread count, builds the task's data (the host's way), checks the spec against
the worker group and the data (`TrialSpec.check`), opens the MLflow logger (rank 0), backfills into MLflow the
epochs of the checkpoint it resumes from, lets the host tag the run and announce the start, runs the loop
(train/loop.py `train_worker`) with a report callback that logs each epoch to MLflow before the host reports it to
Ray, and at the end tags a last checkpoint that storage never took (train/persist.py) and closes the logger.

A `Host` is what differs: a Ray Train worker (train/ray_worker.py: Train's context, rank and world, a Ray Data
shard, `TrainBackend`, the node ids of the DDP ranks, the outcome left for a run whose last checkpoint storage did
not take) or Tune's trial process (train/inprocess.py: one worker, the data cached per process, `TuneBackend`, the
history of the newest checkpoint for the trial's outcome).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from largebatch.train.spec import TrialSpec

if TYPE_CHECKING:
    from largebatch.config import Resolved, TrialConfig
    from largebatch.tasks import Task, TaskData
    from largebatch.tracking import EpochLogger
    from largebatch.train.persist import CheckpointKeeper


class Host:
    """The trial process's side: where it runs (rank, world, device) and how it reaches Ray."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def load_data(self, task: Task, cfg: TrialConfig) -> TaskData:
        raise NotImplementedError

    def make_keeper(self) -> Optional[CheckpointKeeper]:
        """The CheckpointKeeper that reports this rank's epochs with their checkpoints (rank 0), or None."""
        raise NotImplementedError

    def restore_checkpoint(self) -> Any:
        """The Ray Checkpoint to resume from, or None."""
        raise NotImplementedError

    def report(self, keeper: Optional[CheckpointKeeper], metrics: dict, ckpt_dir: Optional[str]) -> None:
        """The epoch to Ray (after MLflow), with the checkpoint rank 0 saved, if any."""
        raise NotImplementedError

    def announce(self, res: Resolved, logger: Optional[EpochLogger]) -> None:
        """Start-up: the run's tags (where it runs) and the start line."""

    def on_checkpoint(self, ckpt_dir: str) -> None:
        """A checkpoint this trial resumed from or saved (rank 0)."""

    def unpersisted(self, final: dict[str, Any], keeper: CheckpointKeeper) -> None:
        """Storage never took the trial's last checkpoint (`keeper.final_kept` says where it is kept)."""


def checkpoint_history(ckpt_dir: str | Path) -> list[dict]:
    """The per-epoch history a checkpoint carries."""
    from largebatch.train.events import HISTORY_FILE

    return json.loads(Path(ckpt_dir, HISTORY_FILE).read_text())["history"]


def run_trial_here(spec: TrialSpec, host: Host) -> dict[str, Any]:
    """Train the trial in this process on `host`; returns the last epoch's metrics (train_worker's)."""
    from largebatch.tasks import task_of
    from largebatch.tracking import EpochLogger
    from largebatch.train.loop import WorkerContext, train_worker
    from largebatch.train.persist import UNPERSISTED_TAG

    # the worker's CPU share: 2 workers on 2 cores must not each start 2 BLAS threads, and an in-process trial runs
    # with a Train worker's count (equal threads give equal float results)
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    cfg = spec.cfg
    task = task_of(cfg)
    data = host.load_data(task, cfg)
    res = spec.check(host.world, data.train_size)
    # MLflow: rank 0 only, the child run id travels in the spec (a restarted worker logs to the same run)
    logger = EpochLogger.from_spec(spec.tracking) if host.rank == 0 else None
    keeper = host.make_keeper()  # only rank 0 saves checkpoints (train/events.py); every rank reports every epoch

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if logger is not None:
            logger.log_epoch(metrics)  # first: the epoch's metrics do not wait for (or depend on) storage
        if ckpt_dir:
            host.on_checkpoint(ckpt_dir)
        host.report(keeper, metrics, ckpt_dir)  # with the checkpoint if storage takes it (else kept locally)

    restore = host.restore_checkpoint()
    with (restore.as_directory() if restore is not None else contextlib.nullcontext()) as restore_dir:
        if restore_dir:
            host.on_checkpoint(restore_dir)
            if logger is not None:  # epochs checkpointed but not yet in MLflow (killed between the two)
                logger.backfill(checkpoint_history(restore_dir))
        host.announce(res, logger)
        ctx = WorkerContext(rank=host.rank, world=host.world, device=host.device, restore_dir=restore_dir,
                            report=report, t_submit=spec.t_submit)
        final = train_worker(res, ctx, data, task)
    if keeper is not None and keeper.final_kept:
        host.unpersisted(final, keeper)
        if logger is not None:
            logger.set_tags({UNPERSISTED_TAG: keeper.final_kept})
    if logger is not None:
        logger.close()  # epochs MLflow missed while it was down go out now (a bounded wait)
    return final
