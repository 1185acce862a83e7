"""The Ray Train entry point (`train_loop_per_worker`): the Ray Train worker's host for the trial runner.

The trial arrives resolved (`TrialSpec`, train/spec.py); the runner (train/runner.py) checks it against the worker
group and the data it loaded, and trains. Here is what a Train worker does its own way: its rank, world and device
from Train's context, this rank's share of a Ray Data dataset, the checkpoint to resume from, the node ids of the
DDP ranks, and the reports. Rank 0 hands its checkpoints to storage itself (train/persist.py `TrainBackend`), so
storage that does not take one fails nothing: the epoch is reported without it and the checkpoint is kept locally.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from largebatch.train.runner import Host, checkpoint_history, run_trial_here
from largebatch.train.spec import TrialSpec

if TYPE_CHECKING:
    from largebatch.config import Resolved, TrialConfig
    from largebatch.tasks import Task, TaskData
    from largebatch.tracking import EpochLogger
    from largebatch.train.persist import CheckpointKeeper


def train_func(config: dict[str, Any]) -> None:
    spec: TrialSpec = config["spec"]
    run_trial_here(spec, RayTrainHost(spec))


class RayTrainHost(Host):
    def __init__(self, spec: TrialSpec):
        import ray.train

        self.train_ctx = ray.train.get_context()
        self.rank, self.world = self.train_ctx.get_world_rank(), self.train_ctx.get_world_size()
        self.device = torch.device("cpu")
        if spec.use_gpu:
            from ray.train.torch import get_device

            self.device = get_device()

    def load_data(self, task: Task, cfg: TrialConfig) -> TaskData:
        import ray.train

        from largebatch.tasks import build_data  # looked up when called (bench/ray_overhead.py times it)

        data = build_data(task, cfg)
        if task.ray_data is not None:  # this rank's share of the Ray Dataset the trainer was given (tasks/raydata.py)
            from largebatch.tasks import TaskData
            from largebatch.tasks.raydata import RayShard

            assert task.train_size is not None  # a task with ray_data has train_size (tasks/api.py checks it)
            shard = RayShard(ray.train.get_dataset_shard("train"), int(task.train_size(cfg)))
            data = TaskData(train=shard, eval=data.eval, info=data.info)
        return data

    def make_keeper(self) -> Optional[CheckpointKeeper]:
        from largebatch.train.persist import CheckpointKeeper, TrainBackend

        return CheckpointKeeper(TrainBackend()) if self.rank == 0 else None

    def restore_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, keeper: Optional[CheckpointKeeper], metrics: dict, ckpt_dir: Optional[str]) -> None:
        import ray.train

        if keeper is not None:
            keeper.report(dict(metrics), ckpt_dir)
        else:
            ray.train.report(dict(metrics), checkpoint=None)

    def announce(self, res: Resolved, logger: Optional[EpochLogger]) -> None:
        import ray
        import torch.distributed as dist

        # where the DDP ranks landed (one all_gather at start-up): recorded on the trial's MLflow run
        node_ids = [ray.get_runtime_context().get_node_id()]
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, node_ids[0])
            node_ids = gathered
        if self.rank == 0:
            backend = dist.get_backend() if dist.is_initialized() else "none"  # nccl on GPUs, gloo on CPUs
            if logger is not None:
                logger.set_tags({"node_ids": ",".join(node_ids), "num_nodes": str(len(set(node_ids))),
                                 "process_group": backend, "device": str(self.device)})
            print(f"[largebatch] ranks on {len(set(node_ids))} node(s); {self.world} workers on {self.device} "
                  f"({backend} process group), per-worker batch {res.per_worker_batch} x {res.grad_accum_steps} "
                  f"accum, peak lr {res.peak_lr:.4g}", flush=True)

    def unpersisted(self, final: dict[str, Any], keeper: CheckpointKeeper) -> None:
        from largebatch.train.persist import KEPT_KEY, leave_outcome

        # the run's Result would carry an older epoch (train/persist.py): leave this one for fit_outcome
        kept = Path(keeper.kept) if keeper.kept is not None else None
        history = checkpoint_history(kept) if kept is not None else [dict(final)]
        leave_outcome(self.train_ctx.get_experiment_name(), {"metrics": {**final, KEPT_KEY: keeper.final_kept},
                                                             "history": history})
