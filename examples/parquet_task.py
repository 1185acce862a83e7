"""A task whose training data is a Ray Data dataset read from Parquet (local folder or s3://), sharded over the DDP
workers by Ray Train. Rows: `x` (a float vector), `y` (a float vector of 1). Evaluation data is a second Parquet
folder, read whole into tensors with pyarrow. See docs/tasks.md ("Ray Data") for the ordering guarantee.

    task:
      name: examples.parquet_task:make_task
      kwargs: {train: /data/points/train, eval: /data/points/eval}
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from largebatch.tasks import Metric, Task, TaskData
from largebatch.tasks.raydata import parquet_rows


def _squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).square().flatten()


def _tensors(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet").to_table(columns=["x", "y"])
    x = np.stack(table.column("x").to_numpy(zero_copy_only=False)).astype(np.float32)
    y = np.stack(table.column("y").to_numpy(zero_copy_only=False)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y.reshape(len(y), -1))


def make_task(train: str, eval: str, hidden: int = 32) -> Task:  # noqa: A002  (the study's words)
    def ray_data(cfg):
        import ray.data

        return ray.data.read_parquet(train)

    def data(cfg) -> TaskData:
        x, y = _tensors(eval)
        return TaskData(train=None, eval=(x, y), info={"dim": x.shape[1]})  # type: ignore[arg-type]

    def model(cfg, d: TaskData) -> nn.Module:
        return nn.Sequential(nn.Linear(d.info["dim"], hidden), nn.ReLU(), nn.Linear(hidden, 1))

    return Task(data=data, model=model, loss=nn.functional.mse_loss, metrics=(Metric("mse", "min", _squared_error),),
                train_size=lambda cfg: parquet_rows(train), ray_data=ray_data, name="parquet-regression")
