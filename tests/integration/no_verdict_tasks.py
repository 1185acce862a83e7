"""User tasks for tests/integration/test_no_verdict_study.py (imported by name from a study's task.name, on the
driver and in the Ray workers)."""
from __future__ import annotations

import os

import torch
from torch import nn

from largebatch.tasks import Metric, Task, TaskData

DRIVER_PID_ENV = "LB_TEST_DRIVER_PID"  # the test's own process: the only one where the loss is a scalar


def per_example_loss_in_ray(points: str) -> Task:
    """Data read from `points` (a torch-saved (n, 4) tensor; the study gives a relative path). The loss is the mean
    in the test's own process, so a check that runs there before Ray starts passes, and per example (not a scalar)
    in any other process: the throughput profile's Ray task and every trial fail at backward()."""

    def data(cfg) -> TaskData:
        x = torch.load(points)
        y = x.sum(1, keepdim=True)
        return TaskData(train=(x, y), eval=(x[:16], y[:16]))

    def loss(out, y):
        per_example = (out - y).square().flatten()
        return per_example.mean() if os.environ.get(DRIVER_PID_ENV) == str(os.getpid()) else per_example

    return Task(data=data, model=lambda cfg, d: nn.Linear(4, 1), loss=loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y).square().flatten()),), name="per-example")
