"""`data.per_worker_batch_cap: auto`: the largest micro-batch that fits is found before training, the accumulation
follows from it, training is unchanged by the probe, and the resolved value is reported."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from largebatch.config import parse_trial, resolve
from largebatch.errors import BadInput
from largebatch.tasks import Metric, Task, TaskData
from largebatch.train.loop import WorkerContext, train_worker
from largebatch.train.microbatch import probe_micro_batch


class Picky(nn.Module):
    """A linear model that runs out of memory above `limit` examples per forward pass, and records what it saw."""

    def __init__(self, limit: int):
        super().__init__()
        self.lin, self.limit, self.seen = nn.Linear(4, 1), limit, []

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory: {x.shape[0]} > {self.limit}")
        self.seen.append(x.shape[0])
        return self.lin(x)


def _task(model: nn.Module) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x.sum(1, keepdim=True)
    return Task(data=lambda cfg: TaskData(train=(x, y), eval=(x[:64], y[:64])), model=lambda cfg, d: model,
                loss=nn.functional.mse_loss, metrics=(Metric("mse", "min", lambda o, t: (o - t).square()),))


def _run(tree: dict, model: nn.Module):
    cfg = parse_trial({"data": {"global_batch_size": 64, "eval_batch_size": 16}, "budget": {"epochs": 2}, **tree})
    reports = []

    def report(m, c):
        reports.append(m)
        shutil.rmtree(c or "", True)

    final = train_worker(resolve(cfg, 1, train_size=256), WorkerContext(report=report), task=_task(model))
    return final, reports


def test_auto_halves_until_no_out_of_memory_and_accumulates_the_rest():
    model = Picky(limit=24)
    final, reports = _run({"data": {"global_batch_size": 64, "per_worker_batch_cap": "auto",
                                    "eval_batch_size": 16}}, model)
    assert final["status"] == "completed"
    assert final["auto_micro_batch_cap"] == 16  # 64 and 32 ran out of memory
    assert final["micro_batch"] == 16 and final["grad_accum_steps"] == 4
    assert max(model.seen) <= 16
    assert all(r["auto_micro_batch_cap"] == 16 for r in reports)


def test_the_probe_leaves_training_unchanged():
    """auto with everything fitting trains exactly as no cap (the probe's forward/backward leave no trace)."""
    def fresh() -> Picky:
        torch.manual_seed(7)
        m = Picky(limit=10**6)
        m.lin.weight.data.fill_(0.5)  # far from the solution, so a changed start would show in the losses
        return m

    a, _ = _run({"data": {"global_batch_size": 64, "per_worker_batch_cap": "auto", "eval_batch_size": 16}}, fresh())
    b, _ = _run({}, fresh())
    assert a["auto_micro_batch_cap"] == 64 and a["grad_accum_steps"] == 1
    assert a["train_loss"] == b["train_loss"] and a["val_mse"] == b["val_mse"]
    c, _ = _run({}, Picky(limit=10**6))  # a different start trains differently: the equality above means something
    assert c["train_loss"] != b["train_loss"]


def test_cpu_budget_bounds_the_saved_activations():
    model = nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 1))
    x, y = torch.randn(512, 4), torch.randn(512, 1)
    gather = lambda idx: (x[idx], y[idx])  # noqa: E731
    import contextlib

    free = probe_micro_batch(model, nn.functional.mse_loss, gather, 512, 512, contextlib.nullcontext)
    # ~3 KiB of saved tensors per example (two 256-wide activations and the input): 0.2 MiB holds 64 at most
    tight = probe_micro_batch(model, nn.functional.mse_loss, gather, 512, 512, contextlib.nullcontext,
                              budget_mb=0.2)
    assert free == 512 and 16 <= tight <= 64
    assert all(p.grad is None for p in model.parameters())


def test_auto_is_config_not_a_number():
    assert parse_trial({"data": {"per_worker_batch_cap": "auto"}}).data.per_worker_batch_cap == "auto"
    with pytest.raises(BadInput, match="per_worker_batch_cap"):
        parse_trial({"data": {"per_worker_batch_cap": "big"}})
    with pytest.raises(BadInput, match="give one of the two"):
        resolve(parse_trial({"data": {"per_worker_batch_cap": "auto", "grad_accum_steps": 2}}), 1, train_size=100)
    # on the driver, auto resolves as no cap: the workers settle it
    assert resolve(parse_trial({"data": {"global_batch_size": 64, "per_worker_batch_cap": "auto"}}), 2,
                   train_size=100).grad_accum_steps == 1


def test_cpu_budget_never_allocates_a_full_batch():
    """With `full` the largest candidate is the whole training set: under a budget, a small forward estimates the
    saved bytes per example and the candidates above the budget are never run."""
    import contextlib

    seen = []

    class Recorder(nn.Sequential):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    model = Recorder(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 1))
    x, y = torch.randn(4096, 4), torch.randn(4096, 1)
    gather = lambda idx: (x[idx], y[idx])  # noqa: E731
    tight = probe_micro_batch(model, nn.functional.mse_loss, gather, 4096, 4096, contextlib.nullcontext,
                              budget_mb=0.2)
    assert 16 <= tight <= 64 and max(seen) <= 64  # ~3 KiB per example: 4096 would be 12 MiB
    seen.clear()
    assert probe_micro_batch(model, nn.functional.mse_loss, gather, 4096, 4096, contextlib.nullcontext) == 4096
    assert seen[0] == 4096  # without a budget the probe starts at the largest, as before
