"""The built-in `classification` task: the registered datasets (data.dataset) and models (model.name), cross-entropy,
accuracy. The default task; it is what every study did before tasks existed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from largebatch.data import dataset_size, load_dataset
from largebatch.data.datasets import TensorData
from largebatch.models import create_model
from largebatch.tasks.api import TASKS, Metric, Task, TaskData


def correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 where the top class is the label: its mean is the accuracy."""
    return output.argmax(1) == target


def from_tensors(d: TensorData) -> TaskData:
    return TaskData(train=(d.x_train, d.y_train), eval=(d.x_test, d.y_test),
                    info={"input_shape": d.input_shape, "num_classes": d.num_classes, "mean": d.mean, "std": d.std})


def _data(cfg) -> TaskData:
    return from_tensors(load_dataset(cfg.data.dataset, cfg.data.path, cfg.data.train_subset, seed=cfg.seed))


def _model(cfg, data: TaskData) -> torch.nn.Module:
    m = cfg.model
    return create_model(m.name, data.info["input_shape"], data.info["num_classes"],
                        hidden_sizes=tuple(m.hidden_sizes), depth=m.depth, width=m.width, dropout=m.dropout,
                        factory=m.factory, kwargs=m.kwargs, ghost_batch_size=m.ghost_batch_size)


def _train_size(cfg) -> int:
    return dataset_size(cfg.data.dataset, cfg.data.path)


@TASKS.register("classification", "data.dataset x model.name, cross-entropy, val_acc (max); the default")
def classification() -> Task:
    return Task(data=_data, model=_model, loss=F.cross_entropy,
                metrics=(Metric("acc", "max", correct, train=True),), train_size=_train_size,
                name="classification")
