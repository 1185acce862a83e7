"""Broken task factories for the CLI's bad-input table (imported by name from a study's task.name), and a
Dataset whose items name themselves."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from largebatch.tasks import Metric, Task, TaskData


def _data(cfg) -> TaskData:
    return TaskData(train=(torch.zeros(64, 2), torch.zeros(64)), eval=(torch.zeros(8, 2), torch.zeros(8)))


def no_loss() -> Task:
    return Task(data=_data, model=lambda cfg, d: torch.nn.Linear(2, 1), loss=None,  # type: ignore[arg-type]
                metrics=(Metric("mse", "min", lambda o, y: (o - y) ** 2),))


def not_a_task() -> dict:
    return {"data": _data}


class _Lists(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        return [0.0, 1.0], 0  # python lists, not tensors


def list_items() -> Task:
    return Task(data=lambda cfg: TaskData(train=_Lists(), eval=_Lists()), model=lambda cfg, d: torch.nn.Linear(2, 1),
                loss=torch.nn.functional.mse_loss)


class Indexed(Dataset):
    """Item i is (x=[i, i], y=i): a batch or a split shows which examples it holds."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i), float(i)]), torch.tensor(i)
