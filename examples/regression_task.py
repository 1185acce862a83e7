"""A task defined outside largebatch: regression onto a fixed random "teacher" network, scored by val_mse (min).

It shows the whole task API (docs/tasks.md): a map-style torch Dataset (read through a DataLoader), a model, a loss
that is the mean over the micro-batch, and a metric with a direction. Use it from a study with

    task:
      name: examples.regression_task:make_task     # the repository root must be on PYTHONPATH
      kwargs: {n_train: 4096, noise: 0.1}
    tuner:
      metric: val_mse                              # mode defaults to the metric's direction (min)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from largebatch.tasks import Metric, Task, TaskData

TEACHER_SEED = 1234  # the function to learn is the same for every trial and seed


class TeacherPoints(Dataset):
    """n points x ~ N(0, I) in `dim` dimensions and y = teacher(x) + noise; item i is (x_i, y_i), both tensors."""

    def __init__(self, n: int, dim: int, noise: float, split_seed: int):
        g = torch.Generator().manual_seed(TEACHER_SEED)
        w1, w2 = torch.randn(dim, 32, generator=g) / dim ** 0.5, torch.randn(32, 1, generator=g) / 32 ** 0.5
        g = torch.Generator().manual_seed(split_seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.tanh(self.x @ w1) @ w2 + noise * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One value per example: its mean over the eval split is the MSE."""
    return (output - target).square().flatten()


def make_task(n_train: int = 4096, n_eval: int = 1024, dim: int = 16, noise: float = 0.1, hidden: int = 64) -> Task:
    def data(cfg) -> TaskData:
        # fixed split seeds: every trial sees the same points; cfg.seed drives init and batch order only
        return TaskData(train=TeacherPoints(n_train, dim, noise, split_seed=1),
                        eval=TeacherPoints(n_eval, dim, noise, split_seed=2), info={"dim": dim})

    def model(cfg, data: TaskData) -> nn.Module:
        d = data.info["dim"]
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 1))

    return Task(data=data, model=model, loss=nn.functional.mse_loss,
                metrics=(Metric("mse", "min", squared_error),), train_size=lambda cfg: n_train,
                name="teacher-regression")
