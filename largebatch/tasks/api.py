"""The task API: what a workload gives largebatch (a model, train and eval data, a loss, metrics).

A Task is a dataclass of builders, in the manner of torchtitan's TrainSpec: nothing is built when the Task is made,
so the driver can check a study (its metric names, its parts) before any trial starts. The optimizer, the LR and its
schedule, and the batch semantics stay the study's; a task never sees them.

A study names its task in `task.name`: a registered one (`largebatch list`) or `package.module:function`, a factory
called with `task.kwargs` that returns a Task. Such a factory is the user's code: importing it runs it, on the driver
and on every worker, with the study's privileges.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from largebatch.errors import BadInput, unknown_choice
from largebatch.metrics import MODES, reported_metrics
from largebatch.registry import Registry

if TYPE_CHECKING:
    from largebatch.config import TrialConfig
    from largebatch.tasks.raydata import RayShard

# a split: in-memory (inputs, targets) tensors, batched by index_select; or a map-style Dataset of (input, target)
Split = Union[tuple[torch.Tensor, torch.Tensor], Dataset, "RayShard"]


@dataclass(frozen=True)
class Metric:
    """An evaluation metric, logged as `val_<name>` (and `train_<name>` when `train`).

    fn(output, target) returns one value per element (example, token, ...); the metric is their mean over the whole
    eval split, summed across ranks. With `train`, it is also averaged over the training micro-batches of an epoch and
    the first such metric gives `gen_gap = train_<name> - val_<name>`."""

    name: str
    mode: str  # "max" or "min": which way is better
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train: bool = False


@dataclass(frozen=True)
class TaskData:
    train: Split
    eval: Split
    info: dict[str, Any] = field(default_factory=dict)  # what the model builder needs: shapes, vocabulary, ...

    @property
    def train_size(self) -> int:
        return split_len(self.train)  # a Ray Data shard (tasks/raydata.py) has len() = the dataset's rows


@dataclass(frozen=True)
class Task:
    """data(cfg) -> TaskData; model(cfg, data) -> nn.Module; loss(output, target) -> the MEAN over the micro-batch
    (a 0-d tensor; largebatch divides by the accumulation steps and DDP averages over ranks, so the step's gradient is
    the mean over the global batch); metrics: the evaluation metrics; train_size(cfg): optional, the number of
    training examples without loading them (else the data is built to count them); ray_data(cfg): optional, the
    training data as a Ray Data dataset with columns x and y (largebatch/tasks/raydata.py), read through Ray Train's
    dataset shards instead of data(cfg).train (which may then be None); it needs train_size. cache_data: see below."""

    data: Callable[["TrialConfig"], TaskData]
    model: Callable[["TrialConfig", TaskData], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: tuple[Metric, ...] = ()
    train_size: Optional[Callable[["TrialConfig"], int]] = None
    name: str = ""
    ray_data: Optional[Callable[["TrialConfig"], Any]] = None
    # data(cfg) reads only task.*, data.dataset/path/train_subset and seed, so a process that runs several trials
    # builds it once (tasks/build.py cached_data, keyed also by data.eval_subset, which the builder applies after
    # data(cfg)); False for a task whose data depends on other fields
    cache_data: bool = True

    def reported(self) -> dict[str, str]:
        """{metric name: direction} of every quality metric this task reports (train_loss, val_loss, val_<m>...)."""
        return reported_metrics((m.name, m.mode, m.train) for m in self.metrics)


TaskFactory = Callable[..., Task]
TASKS: Registry[TaskFactory] = Registry("task")


def split_len(split: Split) -> int:
    return int(split[0].shape[0]) if isinstance(split, tuple) else len(split)  # type: ignore[arg-type]


def _import(spec: str, field_name: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"got {spec!r}: not a registered task ({', '.join(TASKS.names())}) nor of the form "
                       f"'package.module:function'", field=field_name)
    try:
        fn: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BadInput(f"task factory {spec!r}: cannot import module {module_name!r} ({e}); install it or put it on "
                       f"PYTHONPATH (and ship it to the Ray workers)", field=field_name) from None
    except Exception as e:  # the user's module raised while importing
        raise BadInput(f"task factory {spec!r}: importing {module_name!r} raised {type(e).__name__}: {e}",
                       field=field_name) from None
    try:
        for part in attr.split("."):
            fn = getattr(fn, part)
    except AttributeError:
        raise BadInput(f"task factory {spec!r}: module {module_name!r} has no attribute {attr!r}",
                       field=field_name) from None
    if not callable(fn):
        raise BadInput(f"task factory {spec!r} is not callable", field=field_name)
    return fn


def load_task(name: str, kwargs: Optional[dict[str, Any]] = None, field_name: str = "task.name") -> Task:
    """The Task for a study's `task.name` and `task.kwargs`; a broken factory or Task is a BadInput."""
    if name in TASKS:
        factory = TASKS.get(name)
    elif ":" in name:
        factory = _import(name, field_name)
    else:
        raise BadInput(unknown_choice("task", name, TASKS.names()) + "; or give 'package.module:function'",
                       field=field_name)
    try:
        task = factory(**(kwargs or {}))
    except TypeError as e:
        raise BadInput(f"task {name!r} does not take these task.kwargs ({e})", field="task.kwargs") from None
    return check_parts(task, name, field_name)


def check_parts(task: Any, name: str, field_name: str = "task.name") -> Task:
    if not isinstance(task, Task):
        raise BadInput(f"task factory {name!r} returned {type(task).__name__}, not a largebatch.tasks.Task",
                       field=field_name)
    for part in ("data", "model", "loss"):
        if not callable(getattr(task, part)):
            raise BadInput(f"task {name!r} has no {part} (got {getattr(task, part)!r}); give a callable "
                           f"(see docs/tasks.md)", field=field_name)
    if task.ray_data is not None and (not callable(task.ray_data) or task.train_size is None):
        raise BadInput(f"task {name!r}: ray_data needs a callable and train_size(cfg), the dataset's row count "
                       f"(largebatch.tasks.raydata.parquet_rows counts a Parquet folder)", field=field_name)
    seen = set()
    for m in task.metrics:
        if not isinstance(m, Metric) or not callable(m.fn):
            raise BadInput(f"task {name!r}: metrics must be largebatch.tasks.Metric(name, mode, fn), got {m!r}",
                           field=field_name)
        if m.mode not in MODES:
            raise BadInput(f"task {name!r}: metric {m.name!r} has mode {m.mode!r}; use 'max' or 'min'",
                           field=field_name)
        if m.name in seen or m.name == "loss":
            raise BadInput(f"task {name!r}: metric name {m.name!r} is repeated or reserved (val_loss is always "
                           f"reported)", field=field_name)
        seen.add(m.name)
    return task


def task_of(cfg: "TrialConfig") -> Task:
    return load_task(cfg.task.name, cfg.task.kwargs)
