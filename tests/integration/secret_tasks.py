"""A user task for tests/integration/test_secret_values.py (imported by name from a study's task.name, on the driver
and in the trial processes): it takes a store URL holding a password, as a task that reads from a database would,
and refuses a masked one, so a trial that got the reference instead of the real URL fails."""
from __future__ import annotations

import torch
from torch import nn

from largebatch.tasks import Metric, Task, TaskData


def regression_with_store(store_url: str, n_train: int = 256) -> Task:
    if "***" in store_url or "(secret " in store_url:
        raise ValueError("the task got a masked store_url, not the one the study gives")  # never quotes the URL

    def data(cfg) -> TaskData:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_train + 64, 4, generator=g)
        y = x.sum(1, keepdim=True)
        return TaskData(train=(x[:n_train], y[:n_train]), eval=(x[n_train:], y[n_train:]))

    return Task(data=data, model=lambda cfg, d: nn.Linear(4, 1), loss=nn.functional.mse_loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y).square().flatten()),),
                train_size=lambda cfg: n_train, name="regression-with-store")
