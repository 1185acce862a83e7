"""One trial on a real local Ray Train (TorchTrainer, gloo DDP): learning, replica sync, accumulation, divergence,
resume. Digits keeps each trial to seconds of training on top of Ray's ~12 s start-up."""
from __future__ import annotations

import pytest

from largebatch.config import TrialConfig, apply_overrides, resolve
from largebatch.train.trial import run_trial

BASE = {"data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [64]},
        "optim": {"name": "sgd", "base_lr": 0.1, "base_batch_size": 64}, "budget": {"epochs": 4}}


def _res(workers: int, **over):
    return resolve(TrialConfig.model_validate(apply_overrides(BASE, over)), workers)


def test_two_worker_ddp_learns_and_replicas_agree(local_ray, tmp_path):
    out = run_trial(_res(2), run_name="ddp2", storage_path=str(tmp_path))
    assert out["status"] == "completed"
    assert out["val_acc"] > 0.85  # chance is 0.1
    assert out["replica_divergence"] == 0.0  # both ranks end with identical weights
    assert [h["epoch"] for h in out["history"]] == [0, 1, 2, 3]
    assert out["startup_s"] > 0 and out["wall_s"] > 0


def test_accumulation_matches_more_workers(local_ray, tmp_path):
    a = run_trial(_res(1, **{"data.grad_accum_steps": 2}), run_name="acc2", storage_path=str(tmp_path))
    b = run_trial(_res(2), run_name="w2", storage_path=str(tmp_path / "b"))
    assert a["status"] == b["status"] == "completed"
    # the same global batches and the same loss normalisation: equal to float tolerance
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-4)


def test_absurd_lr_is_diverged_not_an_error(local_ray, tmp_path):
    out = run_trial(_res(2, **{"optim.base_lr": 1e6}), run_name="div", storage_path=str(tmp_path))
    assert out["status"] == "diverged"
    assert len(out["history"]) == 1


def test_resume_continues_at_the_right_epoch(local_ray, tmp_path):
    # Train V2 restores a run from its latest checkpoint when the same name + storage is reused
    first = run_trial(_res(1, **{"budget.epochs": 2}), run_name="resume", storage_path=str(tmp_path))
    assert [h["epoch"] for h in first["history"]] == [0, 1]
    second = run_trial(_res(1, **{"budget.epochs": 4}), run_name="resume", storage_path=str(tmp_path))
    assert [h["epoch"] for h in second["history"]] == [0, 1, 2, 3]
    assert second["history"][:2] == first["history"]  # the first two epochs came from the checkpoint
    assert second["steps"] == 4 * _res(1).steps_per_epoch
