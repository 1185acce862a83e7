"""The per-worker loop in-process (no Ray): metric names, step accounting, LR schedule, divergence, resume."""
from __future__ import annotations

import math
import shutil
import pickle
from pathlib import Path

import pytest
import torch

from largebatch.config import TrialConfig, resolve
from largebatch.data import load_dataset
from largebatch.train.loop import WorkerContext, train_worker

EPOCH_METRICS = {"train_loss", "train_acc", "val_loss", "val_acc", "gen_gap", "lr", "global_batch_size", "steps",
                 "examples_seen", "wall_s", "epoch_s", "throughput"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(**over) -> TrialConfig:
    tree = {"data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [32]},
            "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 3}}
    for k, v in over.items():
        head, key = k.split("__")
        tree.setdefault(head, {})[key] = v
    return TrialConfig.model_validate(tree)


class Recorder:
    def __init__(self):
        self.reports, self.ckpts = [], []

    def __call__(self, metrics, ckpt):
        self.reports.append(metrics)
        self.ckpts.append(ckpt)


def test_epoch_metrics_and_steps(digits):
    res = resolve(_cfg(), 1, train_size=len(digits.y_train))
    rec = Recorder()
    final = train_worker(res, WorkerContext(report=rec), digits)
    assert len(rec.reports) == 3
    for i, m in enumerate(rec.reports):
        assert EPOCH_METRICS <= m.keys()
        assert m["epoch"] == i
        assert m["steps"] == (i + 1) * res.steps_per_epoch
        assert m["examples_seen"] == m["steps"] * 64
        assert math.isclose(m["gen_gap"], m["train_acc"] - m["val_acc"])
    assert final["status"] == "completed" and final["is_final"]
    assert final["best_val_acc"] == max(m["val_acc"] for m in rec.reports)
    assert final["val_acc"] > 0.7  # digits learns in 3 epochs
    assert rec.reports[0]["train_loss"] > rec.reports[-1]["train_loss"]
    for d in rec.ckpts:
        shutil.rmtree(d, ignore_errors=True)


def test_warmup_lr_reported(digits):
    res = resolve(_cfg(scaling__rule="linear", data__global_batch_size=128, schedule__warmup_epochs=2.0,
                       budget__epochs=3), 1, train_size=len(digits.y_train))
    rec = Recorder()
    train_worker(res, WorkerContext(report=rec), digits)
    assert res.peak_lr == pytest.approx(0.1)
    # lr reported is the last step's LR of each epoch: below peak during warmup, exactly peak after
    assert rec.reports[0]["lr"] < res.peak_lr
    assert rec.reports[1]["lr"] == pytest.approx(res.peak_lr)
    assert rec.reports[2]["lr"] == pytest.approx(res.peak_lr)


def test_absurd_lr_diverges_without_raising(digits):
    res = resolve(_cfg(optim__base_lr=1e6), 1, train_size=len(digits.y_train))
    rec = Recorder()
    final = train_worker(res, WorkerContext(report=rec), digits)
    assert final["status"] == "diverged"
    assert "loss" in final["reason"]
    assert len(rec.reports) == 1  # it stopped at once, in the first epoch


def test_resume_from_checkpoint_continues_at_the_right_epoch(digits):
    res = resolve(_cfg(budget__epochs=4), 1, train_size=len(digits.y_train))
    full = Recorder()
    train_worker(res, WorkerContext(report=full), digits)

    first = Recorder()
    res2 = resolve(_cfg(budget__epochs=2), 1, train_size=len(digits.y_train))
    train_worker(res2, WorkerContext(report=first), digits)
    resumed = Recorder()
    train_worker(res, WorkerContext(report=resumed, restore_dir=first.ckpts[-1]), digits)
    assert [m["epoch"] for m in resumed.reports] == [2, 3]
    assert resumed.reports[0]["steps"] == 3 * res.steps_per_epoch
    # same seeded permutations + restored optimizer state: the resumed run matches the uninterrupted one
    assert resumed.reports[-1]["train_loss"] == pytest.approx(full.reports[-1]["train_loss"], rel=1e-5)
    for d in full.ckpts + first.ckpts + resumed.ckpts:
        if d:
            shutil.rmtree(d, ignore_errors=True)


class _Payload:
    """What a tampered checkpoint could carry: unpickling it would run code (here: create a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_is_never_unpickled(digits, tmp_path):
    from largebatch.train.loop import CKPT_FILE

    res = resolve(_cfg(budget__epochs=2), 1, train_size=len(digits.y_train))
    first = Recorder()
    train_worker(res, WorkerContext(report=first), digits)
    ckpt = Path(first.ckpts[-1]) / CKPT_FILE
    state = torch.load(ckpt, weights_only=True)  # what we save loads without pickle
    marker = tmp_path / "code-ran"
    torch.save({**state, "history": [_Payload(str(marker))]}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        train_worker(res, WorkerContext(report=Recorder(), restore_dir=str(ckpt.parent)), digits)
    assert not marker.exists()
    for d in first.ckpts:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("every_epochs,every_s,saved", [
    (None, None, [3]),            # only the last epoch
    (2, None, [1, 3]),            # every 2nd epoch, and the last
    (None, 1e-9, [0, 1, 2, 3]),   # every epoch: the time cadence has always come round
    (None, 3600.0, [3]),          # a short trial saves once, at the end
])
def test_checkpoint_cadence_in_epochs_or_seconds_and_always_at_the_end(digits, every_epochs, every_s, saved):
    res = resolve(_cfg(budget__epochs=4, checkpoint__every_epochs=every_epochs, checkpoint__every_s=every_s), 1,
                  train_size=len(digits.y_train))
    rec = Recorder()
    train_worker(res, WorkerContext(report=rec), digits)
    assert [i for i, d in enumerate(rec.ckpts) if d] == saved
    for d in rec.ckpts:
        if d:
            shutil.rmtree(d, ignore_errors=True)


def test_divergence_is_caught_within_a_fixed_number_of_steps(digits):
    from largebatch.train.loop import DIVERGENCE_CHECK_STEPS

    # B=8: 180+ steps per epoch; the LR blows the loss up within the first steps
    res = resolve(_cfg(data__global_batch_size=8, optim__base_batch_size=8, optim__base_lr=1e6), 1,
                  train_size=len(digits.y_train))
    assert res.steps_per_epoch > 10 * DIVERGENCE_CHECK_STEPS
    final = train_worker(res, WorkerContext(report=Recorder()), digits)
    assert final["status"] == "diverged" and final["steps"] <= DIVERGENCE_CHECK_STEPS, final["reason"]
