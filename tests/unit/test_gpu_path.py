"""The loop on a CUDA device: data on the device, bf16 autocast, the DataLoader path with pinned memory, and the
same numbers as on the CPU for a fixed seed in fp32. These need a GPU: on a machine without one (CI) every test
here is skipped with that reason, and bench/gpu_check.py is the longer check a GPU machine runs."""
from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch

from largebatch.config import TrialConfig, resolve
from largebatch.data import load_dataset
from largebatch.tasks import TaskData
from largebatch.tasks.classification import classification
from largebatch.train.loop import WorkerContext, train_worker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")


def _cfg(**over) -> TrialConfig:
    tree = {"data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [32]},
            "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64, "momentum": 0.9},
            "budget": {"epochs": 3}}
    for k, v in over.items():
        head, _, key = k.partition("__")
        if key:
            tree.setdefault(head, {})[key] = v
        else:
            tree[head] = v
    return TrialConfig.model_validate(tree)


def _run(cfg: TrialConfig, device: torch.device, task=None) -> list[dict]:
    reports: list[dict] = []

    def report(metrics, ckpt):
        reports.append(metrics)
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)

    train_worker(resolve(cfg, 1), WorkerContext(device=device, report=report), task=task)
    return reports


@pytest.fixture
def fp32_exact():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_fp32_on_the_gpu_matches_the_cpu(fp32_exact):
    # the same seeded permutation and initial weights on both devices: the curves agree to float tolerance
    cpu = _run(_cfg(), torch.device("cpu"))
    gpu = _run(_cfg(), torch.device("cuda", 0))
    assert [m["steps"] for m in gpu] == [m["steps"] for m in cpu]
    for c, g in zip(cpu, gpu):
        for k in ("train_loss", "val_loss"):
            assert math.isclose(c[k], g[k], rel_tol=1e-3), (k, c[k], g[k])
        assert abs(c["val_acc"] - g["val_acc"]) <= 2 / 360  # at most two of the 360 test digits flip


def test_bf16_autocast_trains_on_the_gpu():
    reports = _run(_cfg(precision="bf16", budget__epochs=5), torch.device("cuda", 0))
    assert reports[-1]["status"] == "completed"
    assert reports[-1]["val_acc"] > 0.8
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_a_dataset_task_reads_pinned_batches_onto_the_gpu(monkeypatch):
    from largebatch.data import feed

    base = classification()

    class Split(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    def data(cfg) -> TaskData:
        d = base.data(cfg)
        return TaskData(train=Split(*d.train), eval=d.eval, info=d.info)

    seen = []
    real_to = feed._to

    def spy(batch, device):
        seen.append((batch[0].is_pinned(), device.type))
        return real_to(batch, device)

    monkeypatch.setattr(feed, "_to", spy)
    task = dataclasses.replace(base, data=data, cache_data=False)
    reports = _run(_cfg(budget__epochs=2), torch.device("cuda", 0), task=task)
    assert reports[-1]["status"] == "completed"
    assert seen and all(pinned and dev == "cuda" for pinned, dev in seen)
    digits = load_dataset("digits")
    assert reports[-1]["steps"] == 2 * (len(digits.y_train) // 64)
