"""StepSums (train/stepsums.py): the loop's per-step bookkeeping deferred to the divergence check gives the sums a
per-step reduction gives, whatever is kept, computed at once, or does not stack."""
from __future__ import annotations

import math

import pytest
import torch

from largebatch.tasks.api import Metric
from largebatch.train import stepsums
from largebatch.train.stepsums import StepSums

ACC = Metric("acc", "max", lambda out, y: out.argmax(1) == y, train=True)
ERR = Metric("sq", "min", lambda out, y: (out[:, 0] - y.float()).square(), train=True)


def _steps(sizes, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand((), generator=g), torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,),
                                                                                              generator=g))
            for n in sizes]


def _direct(steps, metrics):
    loss = sum(float(lv) * len(y) for lv, _, y in steps)
    return [loss, *(sum(float(m.fn(o, y).double().sum()) for _, o, y in steps) for m in metrics)], \
        [sum(m.fn(o, y).numel() for _, o, y in steps) for m in metrics]


@pytest.mark.parametrize("sizes", [[8] * 6, [8, 8, 3, 8, 5]], ids=["equal", "unequal"])
def test_flush_matches_a_per_step_reduction(sizes):
    steps = _steps(sizes)
    s = StepSums([ACC, ERR], torch.device("cpu"))
    for i, (lv, o, y) in enumerate(steps):
        s.add(lv, len(y), o, y)
        if i == 2:
            s.flush()  # a divergence check mid-window
    got = s.flush().tolist()
    want, counts = _direct(steps, [ACC, ERR])
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(got, want)), (got, want)
    assert s.counts == counts == [sum(sizes)] * 2


def test_outputs_beyond_the_byte_cap_are_computed_at_once(monkeypatch):
    steps = _steps([16] * 5)
    monkeypatch.setattr(stepsums, "KEEP_OUTPUT_BYTES", 2 * 16 * 5 * 4)  # room for two steps' logits
    s = StepSums([ACC], torch.device("cpu"))
    for lv, o, y in steps:
        s.add(lv, len(y), o, y)
    assert len(s._kept) == 2 and len(s._values[0]) == 3  # the rest went straight to values
    got = s.flush().tolist()
    want, counts = _direct(steps, [ACC])
    assert got == pytest.approx(want, rel=1e-12) and s.counts == counts
    assert not s._kept and not s._values[0]  # nothing held after a flush


def test_outputs_that_do_not_stack_fall_back_to_one_call_each():
    steps = _steps([4, 4], classes=3) + _steps([4], classes=7, seed=1)  # trailing dims differ: torch.cat fails
    s = StepSums([ACC], torch.device("cpu"))
    for lv, o, y in steps:
        s.add(lv, len(y), o, y)
    want, counts = _direct(steps, [ACC])
    assert s.flush().tolist() == pytest.approx(want, rel=1e-12) and s.counts == counts


def test_no_metrics_sums_the_loss_only():
    steps = _steps([8, 8])
    s = StepSums([], torch.device("cpu"))
    for lv, o, y in steps:
        s.add(lv, len(y), o, y)
    assert s.flush().tolist() == pytest.approx([_direct(steps, [])[0][0]], rel=1e-12)
    assert not s._kept
