"""Task factories for the overfit check (largebatch/check.py), named from a study's task.name as
`tests.unit.check_fixtures:<factory>` with `kwargs: {fault: true|false}`: each factory with fault=False is a good task
that passes, and with fault=True has exactly one fault the check must catch. Synthetic tensors only: seconds on a CPU,
nothing read from outside the repository."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.tasks import Metric, Task, TaskData

N_TRAIN, N_EVAL, DIM, CLASSES = 256, 64, 8, 4


def _points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian points labelled by which of CLASSES fixed directions they lean to most: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    w = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(99))
    return x, (x @ w).argmax(1)


def _data(cfg) -> TaskData:
    return TaskData(train=_points(N_TRAIN, 1), eval=_points(N_EVAL, 2))


def _mlp(out: int = CLASSES) -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, out))


def correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.argmax(1) == target


ACC = (Metric("acc", "max", correct, train=True),)


def scalar_loss(fault: bool = False) -> Task:
    """Fault: the loss is one value per example (reduction='none'): backward() cannot start from it."""
    loss = (lambda o, y: F.cross_entropy(o, y, reduction="none")) if fault else F.cross_entropy
    return Task(data=_data, model=lambda cfg, d: _mlp(), loss=loss, metrics=ACC, train_size=lambda cfg: N_TRAIN,
                name="check-scalar-loss")


class Squeezed(nn.Module):
    """A regression head whose output is (N,), one number per example."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _regression(cfg) -> TaskData:
    (x, _), (xe, _) = _points(N_TRAIN, 1), _points(N_EVAL, 2)
    w = torch.randn(DIM, 1, generator=torch.Generator().manual_seed(7))
    return TaskData(train=(x, torch.tanh(x @ w)), eval=(xe, torch.tanh(xe @ w)))  # targets (N, 1)


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.reshape(target.shape) - target).square().flatten()


def output_shape(fault: bool = False) -> Task:
    """The model's output is (N,) and the targets (N, 1). Fault: mse_loss broadcasts them to (N, N) and trains on
    every output against every target. Good: the loss reshapes the output first."""
    loss = F.mse_loss if fault else (lambda o, y: F.mse_loss(o.view_as(y), y))
    return Task(data=_regression, model=lambda cfg, d: Squeezed(), loss=loss,
                metrics=(Metric("mse", "min", squared_error),), train_size=lambda cfg: N_TRAIN,
                name="check-output-shape")


def nan_inputs(fault: bool = False) -> Task:
    """Fault: a few inputs hold NaN (missing values never imputed), so the loss is NaN at step 1."""

    def data(cfg) -> TaskData:
        d = _data(cfg)
        if fault:
            d.train[0][::2, 3] = float("nan")  # half the examples miss feature 3
        return d

    return Task(data=data, model=lambda cfg, d: _mlp(), loss=F.cross_entropy, metrics=ACC,
                train_size=lambda cfg: N_TRAIN, name="check-nan-inputs", cache_data=False)


def dead_model(fault: bool = False) -> Task:
    """Fault: the hidden layer is initialised to zero weights and a negative bias, so every ReLU is dead: no
    gradient reaches it and only the last bias learns (the labels' frequencies, not the examples)."""

    def model(cfg, d) -> nn.Module:
        m = _mlp()
        if fault:
            with torch.no_grad():
                m[0].weight.zero_()
                m[0].bias.fill_(-1.0)
        return m

    return Task(data=_data, model=model, loss=F.cross_entropy, metrics=ACC, train_size=lambda cfg: N_TRAIN,
                name="check-dead-model")


# ---- further faults, checked in-process (tests/unit/test_check.py)
class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return out, out.softmax(1)  # logits and probabilities, as some libraries return


def tuple_output() -> Task:
    return Task(data=_data, model=lambda cfg, d: Pair(), loss=F.cross_entropy, metrics=ACC, name="check-tuple")


def frozen() -> Task:
    def model(cfg, d) -> nn.Module:
        m = _mlp()
        m.requires_grad_(False)
        return m

    return Task(data=_data, model=model, loss=F.cross_entropy, metrics=ACC, name="check-frozen")


def metric_raises() -> Task:
    return Task(data=_data, model=lambda cfg, d: _mlp(), loss=F.cross_entropy,
                metrics=(Metric("acc", "max", lambda o, y: o.argmax(2) == y),), name="check-metric-raises")


def float_loss() -> Task:
    return Task(data=_data, model=lambda cfg, d: _mlp(), loss=lambda o, y: F.cross_entropy(o, y).item(),
                metrics=ACC, name="check-float-loss")


def wrong_classes() -> Task:
    """The model has 3 outputs for 4 classes: cross_entropy refuses label 3."""
    return Task(data=_data, model=lambda cfg, d: _mlp(CLASSES - 1), loss=F.cross_entropy, metrics=ACC,
                name="check-wrong-classes")


def unstable(blowup_at: int = 3) -> Task:
    """Finite at step 1, then the model's output overflows (a counter in forward stands in for an instability)."""

    class Blows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.calls = _mlp(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.net(x)
            return out * float("inf") if self.calls >= blowup_at else out

    return Task(data=_data, model=lambda cfg, d: Blows(), loss=F.cross_entropy, metrics=ACC, name="check-unstable")


def ray_rows() -> Task:
    """A Ray Data task: its training rows exist only inside Ray (the check must not read them), its eval split is
    tensors."""

    def rows(cfg):
        raise AssertionError("the check must not read a Ray Data task's training rows")

    return Task(data=lambda cfg: TaskData(train=None, eval=_points(N_EVAL, 2)),  # type: ignore[arg-type]
                model=lambda cfg, d: _mlp(), loss=F.cross_entropy, metrics=ACC, train_size=lambda cfg: N_TRAIN,
                ray_data=rows, name="check-ray-rows")
