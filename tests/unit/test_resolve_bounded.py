"""resolve() plans a trial in time and memory bounded by the number of batch-ramp phases, not by budget.epochs
(MAX_EPOCHS is 100,000): no per-epoch list, no sum over one per epoch. The step arithmetic is unchanged: it equals
a per-epoch reference (the former implementation) on configs with ramps, fractional epochs, max_steps, warmup in
epochs or examples and decay milestones."""
from __future__ import annotations

import bisect
import itertools
import math
import time
import tracemalloc

import pytest

from largebatch.config import MAX_EPOCHS, TrialConfig, parse_trial, resolve


def T(epochs: float, B: int = 32, ramp=None, **over) -> TrialConfig:
    tree: dict = {"data": {"dataset": "digits", "global_batch_size": B}, "budget": {"epochs": epochs},
                  "optim": {"base_batch_size": 32, "base_lr": 0.1}}
    for k, v in over.items():
        head, key = k.split("__")
        tree.setdefault(head, {})[key] = v
    if ramp is not None:
        tree.setdefault("schedule", {})["batch_ramp"] = dict(zip(("milestones", "factors"), ramp))
    return parse_trial(tree, prefix="")


def _peak_kib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("extra", [
    lambda n: {}, lambda n: {"budget__max_steps": 500 * n}, lambda n: {"budget__max_steps": 3},
    lambda n: {"schedule__warmup_examples": 1000 * n}, lambda n: {"schedule__warmup_epochs": n - 0.5}],
    ids=["epochs", "max_steps-late", "max_steps-early", "warmup-examples", "warmup-epochs"])
def test_max_epochs_resolves_fast_in_bounded_memory(extra):
    resolve(T(10, **extra(10)), 1, train_size=1797)  # imports done before measuring
    small = _peak_kib(lambda: resolve(T(10, ramp=([5], [2]), **extra(10)), 1, train_size=1797))
    t0 = time.perf_counter()
    big_cfg = T(MAX_EPOCHS, ramp=([50_000], [2]), **extra(MAX_EPOCHS))
    big = _peak_kib(lambda: resolve(big_cfg, 1, train_size=1797))
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"resolve() of {MAX_EPOCHS} epochs took {elapsed:.1f} s"
    # the same few phases whatever the epoch count: memory does not grow with it (a list of 100k ints is ~800 KiB)
    assert big < small + 64, f"peak {big:.0f} KiB for {MAX_EPOCHS} epochs, {small:.0f} KiB for 10"


# ---------------------------------------------------------------- the arithmetic is the per-epoch one
def _reference(cfg, train_size: int) -> tuple:
    """(total_steps, epochs, warmup_steps, milestone_steps, phase start steps): resolve()'s former per-epoch code."""
    s, b, ramp = cfg.schedule, cfg.budget, cfg.schedule.batch_ramp
    starts, batches = [0], [cfg.data.global_batch_size]
    for m, f in zip(ramp.milestones, ramp.factors):
        if round(batches[-1] * f) != batches[-1]:
            starts.append(m)
            batches.append(int(round(batches[-1] * f)))
    n_epochs = math.ceil(b.epochs)
    spe = [train_size // batches[bisect.bisect_right(starts, e) - 1] for e in range(n_epochs)]

    def steps_at(x):
        whole = int(x)
        return (sum(spe[:whole]) + max(0, whole - n_epochs) * spe[-1]
                + round((x - whole) * spe[min(whole, n_epochs - 1)]))

    total, epochs = steps_at(b.epochs), n_epochs
    if b.max_steps is not None:
        total = min(total, b.max_steps)
        epochs = min(epochs, next(e + 1 for e in range(n_epochs) if sum(spe[:e + 1]) >= total))
    total = max(total, 1)
    if s.warmup == "none":
        warmup = 0
    elif s.warmup_examples is not None:
        warmup, left = 0, s.warmup_examples
        for e in range(n_epochs):
            Be = batches[bisect.bisect_right(starts, e) - 1]
            if left <= spe[e] * Be:
                warmup += math.ceil(left / Be)
                break
            warmup, left = warmup + spe[e], left - spe[e] * Be
        else:
            warmup += math.ceil(left / batches[-1])
    else:
        warmup = steps_at(s.warmup_epochs)
    return total, epochs, warmup, tuple(steps_at(m) for m in s.milestones), tuple(steps_at(st) for st in starts)


CASES = [dict(epochs=e, ramp=r, **w, **m)
         for e, r, w, m in itertools.product(
             [1, 2.5, 7, 10.3],
             [None, ([1], [2]), ([1, 3], [2, 4]), ([2], [1])],
             [{}, {"schedule__warmup_epochs": 0.7}, {"schedule__warmup_examples": 0},
              {"schedule__warmup_examples": 1}, {"schedule__warmup_examples": 500},
              {"schedule__warmup_examples": 1792}, {"schedule__warmup_examples": 2000}],
             [{}, {"budget__max_steps": 1}, {"budget__max_steps": 60}, {"budget__max_steps": 130},
              {"schedule__decay": "step", "schedule__milestones": [0.5, 1.5, 12.0]}])]


def test_step_arithmetic_equals_the_per_epoch_reference():
    checked = 0
    for case in CASES:
        case = dict(case)
        ramp = case.pop("ramp")
        if ramp is not None and ramp[0][-1] >= case["epochs"]:
            continue
        cfg = T(case.pop("epochs"), ramp=ramp, **case)
        try:
            ref = _reference(cfg, 1797)
        except StopIteration:
            continue
        if ref[2] > ref[0]:  # a warmup longer than training is refused (tested in test_config.py)
            continue
        res = resolve(cfg, 1, train_size=1797)
        got = (res.total_steps, res.epochs, res.warmup_steps, res.milestone_steps,
               tuple(p.start_step for p in res.phases))
        assert got == ref, (cfg.schedule, cfg.budget)
        checked += 1
    assert checked > 300
