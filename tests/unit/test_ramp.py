"""Batch-size schedule (Smith et al. 2018, arXiv 1711.00489): phases from resolve(), every phase validated, steps
per epoch and LR changing exactly at the milestones (resolve() and the loop), the examples budget kept, and the
ramp-vs-decay study file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from largebatch.config import (TrialConfig, check_search_resolves, load_study, parse_trial, resolve, search_values,
                               set_dotted)
from largebatch.data import load_dataset
from largebatch.errors import BadInput
from largebatch.train.loop import WorkerContext, train_worker

N = 60000
RAMP_STUDY = Path(__file__).resolve().parents[2] / "tune_spaces" / "fashion-mnist-ramp.yaml"


def T(**over) -> TrialConfig:
    """TrialConfig from `section__key=value` overrides; `ramp=(milestones, factors[, grow])` sets batch_ramp."""
    tree: dict = {"optim": {"base_batch_size": 128, "base_lr": 0.1}}
    ramp = over.pop("ramp", None)
    for k, v in over.items():
        head, key = k.split("__")
        tree.setdefault(head, {})[key] = v
    if ramp is not None:
        tree.setdefault("schedule", {})["batch_ramp"] = dict(zip(("milestones", "factors", "grow"), ramp))
    return parse_trial(tree, prefix="")


def test_no_ramp_is_one_phase_with_the_old_numbers():
    res = resolve(T(data__global_batch_size=128, budget__epochs=2.5), 2, train_size=N)
    (p,) = res.phases
    assert (p.global_batch_size, p.per_worker_batch, p.grad_accum_steps) == (128, 64, 1)
    assert res.total_steps == round(2.5 * (N // 128)) and res.examples_at(10) == 1280
    assert "batch_ramp" not in res.summary()


def test_phases_steps_lr_and_examples_budget():
    res = resolve(T(data__global_batch_size=128, budget__epochs=10, scaling__rule="linear",
                    ramp=([4, 7], [5, 5])), 2, train_size=N)
    batches = [p.global_batch_size for p in res.phases]
    assert batches == [128, 640, 3200]
    assert [p.steps_per_epoch for p in res.phases] == [N // 128, N // 640, N // 3200]
    assert [p.start_step for p in res.phases] == [0, 4 * (N // 128), 4 * (N // 128) + 3 * (N // 640)]
    assert res.total_steps == 4 * (N // 128) + 3 * (N // 640) + 3 * (N // 3200)
    # the examples budget: every epoch shows (almost, drop_last) the whole training set, whatever its batch
    assert res.examples_at(res.total_steps) == sum(N // b * b * e for b, e in zip(batches, (4, 3, 3)))
    assert res.examples_at(res.total_steps) > 0.98 * 10 * N
    # the LR follows the rule for each phase's batch, and changes exactly at the phase's first step
    for p in res.phases:
        assert p.peak_lr == pytest.approx(0.1 * p.global_batch_size / 128)
        assert res.lr_at(p.start_step) == pytest.approx(p.peak_lr)
        if p.start_step:
            assert res.lr_at(p.start_step - 1) == pytest.approx(res.phases[res.phases.index(p) - 1].peak_lr)
    assert res.phase_at_epoch(3).global_batch_size == 128 and res.phase_at_epoch(4).global_batch_size == 640


def test_rule_none_holds_the_lr_and_factor_one_starts_no_phase():
    res = resolve(T(data__global_batch_size=128, ramp=([2, 5], [1, 4])), 1, train_size=N)
    assert [(p.start_epoch, p.global_batch_size) for p in res.phases] == [(0, 128), (5, 512)]
    assert {p.peak_lr for p in res.phases} == {0.1}


def test_grow_batch_vs_grow_accum_and_the_cap():
    grow = resolve(T(data__global_batch_size=256, data__per_worker_batch_cap=128, ramp=([1], [4])), 2,
                   train_size=N)
    assert [(p.per_worker_batch, p.grad_accum_steps) for p in grow.phases] == [(128, 1), (128, 4)]
    acc = resolve(T(data__global_batch_size=256, data__grad_accum_steps=2, ramp=([1], [4], "accum")), 2,
                  train_size=N)
    assert [(p.per_worker_batch, p.grad_accum_steps) for p in acc.phases] == [(64, 2), (64, 8)]
    plain = resolve(T(data__global_batch_size=256, data__grad_accum_steps=2, ramp=([1], [4])), 2, train_size=N)
    assert [(p.per_worker_batch, p.grad_accum_steps) for p in plain.phases] == [(64, 2), (256, 2)]
    for res in (grow, acc, plain):
        for p in res.phases:
            assert p.per_worker_batch * 2 * p.grad_accum_steps == p.global_batch_size


def test_warmup_and_decay_milestones_count_the_steps_of_each_phase():
    res = resolve(T(data__global_batch_size=100, ramp=([1], [2]), schedule__warmup_epochs=1.6,
                    schedule__decay="step", schedule__milestones=[2.0]), 1, train_size=1000)
    assert res.warmup_steps == 10 + 3  # one epoch at B=100, 0.6 of an epoch at B=200 (round(0.6 * 5))
    assert res.milestone_steps == (10 + 5,)
    ex = resolve(T(data__global_batch_size=100, ramp=([1], [2]), schedule__warmup_examples=1400), 1,
                 train_size=1000)
    assert ex.warmup_steps == 10 + 2  # 1000 examples at B=100, then 400 at B=200


@pytest.mark.parametrize("over, workers, field, text", [
    ({"data__global_batch_size": 132, "ramp": ([1], [1.5])}, 4, "schedule.batch_ramp.factors", "does not divide"),
    ({"data__global_batch_size": 100, "ramp": ([1], [1.255])}, 1, "schedule.batch_ramp.factors", "whole"),
    ({"data__global_batch_size": 132, "data__grad_accum_steps": 2, "ramp": ([1], [1.5])}, 2,
     "schedule.batch_ramp.factors", "phase 1 (from epoch 1, B=198)"),
    ({"data__global_batch_size": 96, "data__grad_accum_steps": 2, "ramp": ([1], [1.25], "accum")}, 2,
     "schedule.batch_ramp.factors", "micro-batches of 24"),
    ({"data__global_batch_size": 1024, "ramp": ([1, 2], [8, 8])}, 1, "schedule.batch_ramp.factors",
     "larger than the 60000"),
])
def test_every_phase_is_validated(over, workers, field, text):
    with pytest.raises(BadInput) as e:
        resolve(T(**over), workers, train_size=N, prefix="")
    assert e.value.field == field and text in str(e.value)


@pytest.mark.parametrize("ramp, field", [
    (([1, 2], [2]), "schedule.batch_ramp.factors"),
    (([3, 2], [2, 2]), "schedule.batch_ramp.milestones"),
    (([2, 2], [2, 2]), "schedule.batch_ramp.milestones"),
    (([10], [2]), "schedule.batch_ramp.milestones"),  # not before the end of the 10-epoch budget
    (([1], [0]), "schedule.batch_ramp.factors.0"),
    (([1.5], [2]), "schedule.batch_ramp.milestones.0"),  # whole epochs only
])
def test_bad_ramp_shapes_are_caught_at_load(ramp, field):
    with pytest.raises(BadInput) as e:
        T(ramp=ramp)
    assert e.value.field == field


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP on a shared 2-core machine: one BLAS thread is faster
    yield
    torch.set_num_threads(before)


def test_loop_changes_batch_steps_and_lr_exactly_at_milestones(one_thread):
    digits = load_dataset("digits")
    n = len(digits.y_train)
    cfg = TrialConfig.model_validate({
        "data": {"dataset": "digits", "global_batch_size": 32}, "model": {"name": "mlp", "hidden_sizes": [32]},
        "optim": {"base_lr": 0.02, "base_batch_size": 32}, "scaling": {"rule": "linear"}, "budget": {"epochs": 4},
        "schedule": {"batch_ramp": {"milestones": [1, 3], "factors": [2, 2]}}})
    res = resolve(cfg, 1, train_size=n)
    reports = []
    train_worker(res, WorkerContext(report=lambda m, c: (reports.append(m), shutil.rmtree(c or "", True))), digits)
    assert [r["global_batch_size"] for r in reports] == [32, 64, 64, 128]
    spe = [n // b for b in (32, 64, 64, 128)]
    assert [r["steps"] for r in reports] == [sum(spe[:i + 1]) for i in range(4)]
    assert [r["lr"] for r in reports] == pytest.approx([0.02, 0.04, 0.04, 0.08])  # linear rule, per phase
    assert [r["examples_seen"] for r in reports] == [sum(s * b for s, b in list(zip(spe, (32, 64, 64, 128)))[:i + 1])
                                                     for i in range(4)]
    assert reports[-1]["status"] == "completed" and reports[-1]["val_acc"] > 0.7


def test_ramp_study_loads_and_every_grid_point_resolves():
    study = load_study(RAMP_STUDY)
    assert study.base.instruments.grad_noise_scale and study.base.instruments.sharpness
    assert search_values(study.search["schedule.batch_ramp.factors"]) == [[1, 1], [5, 5]]
    base = study.base.model_dump()
    for factors in ([1, 1], [5, 5]):
        for decay in ("step", "constant"):
            cfg = TrialConfig.model_validate(set_dotted(set_dotted(base, "schedule.batch_ramp.factors", factors),
                                                        "schedule.decay", decay))
            for workers in (1, 2):
                res = resolve(cfg, workers, train_size=N)
                assert len(res.phases) == (3 if factors == [5, 5] else 1)
                assert res.phases[-1].global_batch_size == 128 * (25 if factors == [5, 5] else 1)
    check_search_resolves(load_study(RAMP_STUDY, smoke=True), 2)
