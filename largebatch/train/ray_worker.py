"""The Ray Train entry point (`train_loop_per_worker`): turns Ray's context into a WorkerContext.

The trial arrives resolved (`TrialSpec`, train/spec.py); the worker checks it against its worker group and the data it
loaded, and trains. Rank 0 hands its checkpoints to storage itself (train/persist.py `TrainBackend`), so storage
that does not take one fails nothing: the epoch is reported without it and the checkpoint is kept locally.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from largebatch.train.spec import TrialSpec


def train_func(config: dict[str, Any]) -> None:
    import ray.train
    import torch.distributed as dist

    from largebatch.tasks import build_data, task_of
    from largebatch.train.loop import HISTORY_FILE, WorkerContext, train_worker
    from largebatch.train.persist import KEPT_KEY, UNPERSISTED_TAG, CheckpointKeeper, TrainBackend, leave_outcome
    from largebatch.tracking import EpochLogger

    spec: TrialSpec = config["spec"]
    # 2 workers on 2 cores must not each start 2 BLAS threads: use this worker's CPU share
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    ctx_ray = ray.train.get_context()
    rank, world = ctx_ray.get_world_rank(), ctx_ray.get_world_size()
    device = torch.device("cpu")
    if spec.use_gpu:
        from ray.train.torch import get_device

        device = get_device()

    cfg = spec.cfg
    task = task_of(cfg)
    data = build_data(task, cfg)
    if task.ray_data is not None:  # this rank's share of the Ray Dataset the trainer was given (tasks/raydata.py)
        from largebatch.tasks import TaskData
        from largebatch.tasks.raydata import RayShard

        assert task.train_size is not None  # a task with ray_data has train_size (tasks/api.py checks it)
        shard = RayShard(ray.train.get_dataset_shard("train"), int(task.train_size(cfg)))
        data = TaskData(train=shard, eval=data.eval, info=data.info)
    res = spec.check(world, data.train_size)
    # MLflow: rank 0 only, the child run id travels in the config (a restarted worker logs to the same run)
    logger = EpochLogger.from_spec(spec.tracking) if rank == 0 else None
    # only rank 0 saves checkpoints (train/loop.py); every rank reports every epoch, as Ray Train requires
    keeper = CheckpointKeeper(TrainBackend()) if rank == 0 else None

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if logger is not None:
            logger.log_epoch(metrics)  # first: the epoch's metrics do not wait for (or depend on) storage
        if keeper is not None:
            keeper.report(dict(metrics), ckpt_dir)  # with the checkpoint if storage takes it (else kept locally)
        else:
            ray.train.report(dict(metrics), checkpoint=None)

    restore = ray.train.get_checkpoint()
    with (restore.as_directory() if restore else _null()) as restore_dir:
        if restore_dir and logger is not None:
            # epochs that were checkpointed but not yet in MLflow (a crash between the two) are logged now
            logger.backfill(json.loads(Path(restore_dir, HISTORY_FILE).read_text())["history"])
        ctx = WorkerContext(rank=rank, world=world, device=device, restore_dir=restore_dir, report=report,
                            t_submit=spec.t_submit)
        # where the DDP ranks landed (one all_gather at start-up): recorded on the trial's MLflow run
        node_ids = [ray.get_runtime_context().get_node_id()]
        if world > 1:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, node_ids[0])
            node_ids = gathered
        if rank == 0:
            backend = dist.get_backend() if dist.is_initialized() else "none"  # nccl on GPUs, gloo on CPUs
            if logger is not None:
                logger.set_tags({"node_ids": ",".join(node_ids), "num_nodes": str(len(set(node_ids))),
                                 "process_group": backend, "device": str(device)})
            print(f"[largebatch] ranks on {len(set(node_ids))} node(s); {world} workers on {device} "
                  f"({backend} process group), per-worker batch {res.per_worker_batch} x {res.grad_accum_steps} "
                  f"accum, peak lr {res.peak_lr:.4g}", flush=True)
        final = train_worker(res, ctx, data, task)
        if keeper is not None and keeper.final_kept:
            # the run's Result would carry an older epoch (train/persist.py): leave this one for fit_outcome
            kept = Path(keeper.kept, HISTORY_FILE) if keeper.kept is not None else None
            history = json.loads(kept.read_text())["history"] if kept is not None else [dict(final)]
            leave_outcome(ctx_ray.get_experiment_name(), {"metrics": {**final, KEPT_KEY: keeper.final_kept},
                                                          "history": history})
            if logger is not None:
                logger.set_tags({UNPERSISTED_TAG: keeper.final_kept})
        if logger is not None:
            logger.close()  # epochs MLflow missed while it was down go out now (a bounded wait)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
