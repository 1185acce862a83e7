"""A task whose metric name MLflow refuses (`mse@1`), for the CLI's bad-input table (issue #28)."""
from __future__ import annotations

import torch

from largebatch.tasks import Metric, Task, TaskData


def _data(cfg) -> TaskData:
    return TaskData(train=(torch.zeros(64, 2), torch.zeros(64, 1)), eval=(torch.zeros(8, 2), torch.zeros(8, 1)))


def at_sign_metric() -> Task:
    return Task(data=_data, model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss,
                metrics=(Metric("mse@1", "min", lambda o, y: (o - y) ** 2),), name="at_sign_metric")


def _counted(count) -> Task:
    return Task(data=_data, model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y) ** 2),), train_size=lambda cfg: count,
                name="counted")


def zero_train_size() -> Task:
    return _counted(0)  # "use at most 0" was the answer to any batch


def text_train_size() -> Task:
    return _counted("many")


def factory_raises() -> Task:
    raise RuntimeError("cannot build: token expired")  # a traceback, not one line, before the driver caught it


def _data_raises(cfg) -> TaskData:
    raise OSError("data server down")


def data_raises() -> Task:
    return Task(data=_data_raises, model=lambda cfg, d: torch.nn.Linear(2, 1), loss=torch.nn.functional.mse_loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y) ** 2),), name="data_raises")
