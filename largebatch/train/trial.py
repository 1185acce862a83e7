"""One trial as a Ray Train TorchTrainer: build it from a resolved config, run it, read back the outcome.

Used by `largebatch train` directly and by the Tune trainable (tune/trainable.py), one TorchTrainer per trial.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from largebatch import quiet
from largebatch.config import Resolved
from largebatch.train.spec import TrialSpec
from largebatch.vocab import Status



def as_spec(trial: "Resolved | TrialSpec", *, cpus_per_worker: int = 1, use_gpu: bool = False,
            tracking: Optional[dict] = None) -> TrialSpec:
    """A TrialSpec as is, or one made from a Resolved (`largebatch train`, bench/) with these resources."""
    if isinstance(trial, TrialSpec):
        return trial if trial.t_submit is not None else trial.replace(t_submit=time.time())
    return TrialSpec(res=trial, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu, tracking=tracking,
                     t_submit=time.time())


def make_trainer(trial: "Resolved | TrialSpec", *, run_name: str, storage_path: str, cpus_per_worker: int = 1,
                 use_gpu: bool = False, max_failures: int = 2, tracking: Optional[dict] = None,
                 callbacks: Sequence[Any] = (), placement_strategy: str = "PACK"):
    """A TorchTrainer whose workers receive the TrialSpec as is (train/ray_worker.py)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from largebatch.train.ray_worker import train_func

    spec = as_spec(trial, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu, tracking=tracking)
    res, cpus, gpu = spec.res, spec.cpus_per_worker, spec.use_gpu
    return TorchTrainer(
        **_ray_datasets(res),
        train_loop_per_worker=train_func,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if gpu else {})},
                                     placement_strategy=placement_strategy),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        # ray.train binds RunConfig to Train V2's (which has logging_config) only at run time, when V2 is on (Ray's
        # default); its stubs see the V1 class
        run_config=RunConfig(  # type: ignore[call-arg]
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=res.cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level=quiet.train_log_level()),  # Train's start-up chatter
        ),
    )


def _ray_datasets(res: Resolved) -> dict[str, Any]:
    """A task whose training data is a Ray Dataset hands it to the trainer, which shards it over the workers; built
    lazily (a callable) on the trainer's side. Block order is preserved so a fixed dataset reads the same way."""
    from largebatch.tasks import task_of

    task = task_of(res.cfg)
    if task.ray_data is None:
        return {}
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    cfg = res.cfg
    return {"datasets": {"train": lambda: task.ray_data(cfg)},
            "dataset_config": DataConfig(datasets_to_split=["train"],
                                         execution_options=ExecutionOptions(preserve_order=True))}


def read_history(checkpoint) -> tuple[list[dict], dict]:
    """(per-epoch history, loop state) from a trial checkpoint (local or on S3)."""
    from largebatch.train.events import HISTORY_FILE

    if checkpoint is None:
        return [], {}
    with checkpoint.as_directory() as d:
        data = json.loads(Path(d, HISTORY_FILE).read_text())
    return data["history"], data["state"]


def outcome(result, t_fit: float, left: Optional[dict] = None) -> dict[str, Any]:
    """The trial's final metrics + history from a Train Result; a raised error becomes status 'failed'. `left`: the
    last report and history rank 0 left because storage did not take its last checkpoint (train/persist.py); the
    Result's metrics and checkpoint are then an older epoch's, and not read."""
    from largebatch.failures import describe, format_failure

    if left is not None:
        history, final = list(left["history"]), dict(left["metrics"])
    else:
        final = dict(result.metrics or {}) if result is not None else {}
        try:
            history, _ = read_history(getattr(result, "checkpoint", None))
        except Exception:  # storage went away after it took the checkpoint: its own report is its last epoch
            history = [dict(final)] if "epoch" in final else []
    final.pop("checkpoint_path", None)
    if getattr(result, "error", None) is not None:
        final["status"] = Status.FAILED.value
        final["reason"] = describe(result.error)
        final["traceback"] = format_failure(result.error)
    final.setdefault("status", Status.FAILED.value if not history else Status.COMPLETED.value)
    final["fit_s"] = time.time() - t_fit + float(final.get("fit_before_s") or 0.0)  # start-up + training + teardown
    # (+ the earlier runs' up to their checkpoint, when it resumed), as the user waits for it
    final["history"] = history
    return final


def fit_outcome(trainer, t_start: Optional[float] = None) -> dict[str, Any]:
    """trainer.fit() -> the outcome dict; a run that fails for good becomes status 'failed', never an exception.
    fit_s counts from `t_start` (when the trial was asked for) when given, else from here."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    from largebatch.train.persist import take_outcome

    t_fit = t_start or time.time()
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        result = _FailedResult(e)
    return outcome(result, t_fit, take_outcome(getattr(trainer.run_config, "name", None)))


def run_trial(res: "Resolved | TrialSpec", *, run_name: str, storage_path: str, cpus_per_worker: int = 1,
              use_gpu: bool = False, max_failures: int = 2) -> dict[str, Any]:
    """Run one trial to the end on the current Ray; never raises for a trial that fails or diverges."""
    return fit_outcome(make_trainer(res, run_name=run_name, storage_path=storage_path,
                                    cpus_per_worker=cpus_per_worker, use_gpu=use_gpu, max_failures=max_failures))


class _FailedResult:
    def __init__(self, err: Exception):
        self.error, self.metrics, self.checkpoint = err, None, None
