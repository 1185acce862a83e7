"""A 1-worker trial run in the Tune trial's own process (docs/design.md §8).

A trial with one worker has no data parallelism, so Ray Train's controller and worker group (several seconds of
start-up per trial) buy it nothing. Here the same trial runner (train/runner.py `run_trial_here`, the loop
`train_worker` inside) runs in the trial's process, with `InProcessHost`, and gives the same metrics, checkpoints and
MLflow logging as under TorchTrainer (train/ray_worker.py); the data is built once per process (tasks/build.py
`cached_data`), and Tune reuses the process across trials.

Failures: a killed process is restarted by Tune (tuner.max_failures) from the trial's last checkpoint, and the
epochs already logged are not logged again; an exception raised by the loop fails the trial at once (it would
raise again on a retry). Storage that does not take a checkpoint fails nothing: the epoch is reported without it
and the checkpoint is kept locally until a later one is persisted (train/persist.py).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Optional

import torch

from largebatch.train.runner import Host, checkpoint_history, run_trial_here
from largebatch.train.spec import TrialSpec
from largebatch.vocab import Status

if TYPE_CHECKING:
    from largebatch.config import Resolved, TrialConfig
    from largebatch.tasks import Task, TaskData
    from largebatch.tracking import EpochLogger
    from largebatch.train.persist import CheckpointKeeper


_runs_here = 0  # trial runs (a resume is a run) this process has started: 1 = a new process (imports, data)


def run_in_process(spec: TrialSpec) -> dict[str, Any]:
    """Train the trial here, reporting every epoch to Tune; returns the outcome in the shape of
    train/trial.py `outcome` (final metrics, status, history, fit_s). Never raises for a failing trial."""
    from largebatch.failures import describe, format_failure

    global _runs_here
    _runs_here += 1
    host = InProcessHost(spec)
    t_fit = spec.t_submit or time.time()  # from when the trial was asked for: its MLflow run creation counts
    try:
        final = dict(run_trial_here(spec, host))
    except Exception as e:
        return {"status": Status.FAILED.value, "reason": describe(e), "traceback": format_failure(e),
                "history": host.history, "fit_s": time.time() - t_fit}
    final.setdefault("status", Status.COMPLETED.value if host.history else Status.FAILED.value)
    final["fit_s"] = time.time() - t_fit + float(final.get("fit_before_s") or 0.0)
    final["history"] = host.history
    return final


class InProcessHost(Host):
    """Tune's trial process: one worker; it keeps the history of the newest checkpoint for the trial's outcome."""

    def __init__(self, spec: TrialSpec):
        # Ray shows the trial its own GPU as 0
        self.device = torch.device("cuda", 0) if spec.use_gpu else torch.device("cpu")
        self.history: list[dict] = []

    def load_data(self, task: Task, cfg: TrialConfig) -> TaskData:
        from largebatch.tasks import cached_data

        return cached_data(task, cfg)

    def make_keeper(self) -> Optional[CheckpointKeeper]:
        from largebatch.train.persist import CheckpointKeeper, TuneBackend

        return CheckpointKeeper(TuneBackend())

    def restore_checkpoint(self) -> Any:
        from ray import tune

        return tune.get_checkpoint()

    def on_checkpoint(self, ckpt_dir: str) -> None:
        self.history[:] = checkpoint_history(ckpt_dir)

    def report(self, keeper: Optional[CheckpointKeeper], metrics: dict, ckpt_dir: Optional[str]) -> None:
        assert keeper is not None  # make_keeper always makes one
        keeper.report(metrics, ckpt_dir)  # to Tune, with the checkpoint if storage takes it (else kept locally)

    def announce(self, res: Resolved, logger: Optional[EpochLogger]) -> None:
        if logger is not None:
            import ray

            # process / process_run: which trial process ran it (the last run, for a resumed trial), and
            # the how-manieth run there; 1 is a new process, whose start-up paid imports and data decoding
            logger.set_tags({"node_ids": ray.get_runtime_context().get_node_id(), "num_nodes": "1",
                             "trial_runner": "in_process", "device": str(self.device),
                             "process": str(os.getpid()), "process_run": str(_runs_here)})
        print(f"[largebatch] in-process trial: 1 worker on {self.device}, batch {res.per_worker_batch} x "
              f"{res.grad_accum_steps} accum, peak lr {res.peak_lr:.4g}", flush=True)
