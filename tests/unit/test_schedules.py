"""Warmup x decay (docs/design.md §4): pure functions of the step, parametrized over every WARMUPS x DECAYS pair."""
from __future__ import annotations

import math

import pytest

from largebatch.schedules import DECAYS, WARMUPS, lr_factor

TOTAL, WARMUP, START = 100, 10, 0.1
MILESTONES = (40, 70)  # absolute steps, after warmup
GAMMA, MIN_FACTOR = 0.1, 0.05

PAIRS = [(w, d) for w in WARMUPS.names() for d in DECAYS.names()]


def factor(step: int, warmup: str = "linear", decay: str = "constant", *, total: int = TOTAL,
           warmup_steps: int = WARMUP, start: float = START, min_factor: float = MIN_FACTOR,
           milestones=MILESTONES, gamma: float = GAMMA) -> float:
    return lr_factor(step, total, warmup=warmup, warmup_steps=warmup_steps, start_factor=start, decay=decay,
                     min_factor=min_factor, milestones=milestones, gamma=gamma)


def test_registries_have_the_documented_entries():
    assert set(WARMUPS.names()) >= {"none", "linear", "exponential"}
    assert set(DECAYS.names()) >= {"constant", "cosine", "linear", "step"}


@pytest.mark.parametrize("warmup, decay", PAIRS)
@pytest.mark.parametrize("min_factor", [0.0, MIN_FACTOR])
def test_factor_in_zero_one_on_every_training_step(warmup, decay, min_factor):
    for step in range(TOTAL):
        f = factor(step, warmup, decay, min_factor=min_factor)
        assert 0.0 < f <= 1.0, (step, f)


@pytest.mark.parametrize("warmup, decay", PAIRS)
def test_pure_same_inputs_same_output(warmup, decay):
    # stateless: calling out of order, or twice, changes nothing (a resumed trial gets the same LR)
    first = [factor(s, warmup, decay) for s in range(TOTAL)]
    shuffled = {s: factor(s, warmup, decay) for s in reversed(range(TOTAL))}
    assert first == [shuffled[s] for s in range(TOTAL)]
    assert first == [factor(s, warmup, decay) for s in range(TOTAL)]


@pytest.mark.parametrize("warmup, decay", PAIRS)
def test_no_warmup_steps_starts_at_the_decay_value(warmup, decay):
    # warmup_steps=0: step 0 is the decay at its start, whatever the warmup kind
    got = factor(0, warmup, decay, warmup_steps=0)
    assert got == factor(0, "none", decay, warmup_steps=0) == 1.0
    # and the whole curve is the decay alone
    assert [factor(s, warmup, decay, warmup_steps=0) for s in range(TOTAL)] == \
        [factor(s, "none", decay, warmup_steps=0) for s in range(TOTAL)]


@pytest.mark.parametrize("warmup", ["linear", "exponential"])
@pytest.mark.parametrize("decay", DECAYS.names())
@pytest.mark.parametrize("warmup_steps", [2, 3, 10, 37])
def test_warmup_reaches_one_exactly_at_its_last_step_and_not_before(warmup, decay, warmup_steps):
    ramp = [factor(s, warmup, decay, warmup_steps=warmup_steps) for s in range(warmup_steps)]
    assert ramp[-1] == 1.0
    assert all(f < 1.0 for f in ramp[:-1]), ramp
    assert ramp[0] == pytest.approx(START)
    assert all(a < b for a, b in zip(ramp, ramp[1:])), "the ramp rises every step"


@pytest.mark.parametrize("decay", DECAYS.names())
@pytest.mark.parametrize("start", [0.01, 0.1, 0.5])
def test_linear_warmup_is_linear_per_step_from_start_factor(decay, start):
    n = 11
    ramp = [factor(s, "linear", decay, warmup_steps=n, start=start) for s in range(n)]
    for s, f in enumerate(ramp):
        assert f == pytest.approx(start + (1.0 - start) * s / (n - 1), rel=1e-12)
    increments = [b - a for a, b in zip(ramp, ramp[1:])]
    assert max(increments) == pytest.approx(min(increments), rel=1e-9)


def test_exponential_warmup_is_geometric():
    n = 11
    ramp = [factor(s, "exponential", warmup_steps=n) for s in range(n)]
    ratios = [b / a for a, b in zip(ramp, ramp[1:])]
    assert ratios == pytest.approx([START ** (-1 / (n - 1))] * (n - 1), rel=1e-9)


@pytest.mark.parametrize("warmup", WARMUPS.names())
def test_warmup_of_one_step_is_no_warmup(warmup):
    assert factor(0, warmup, warmup_steps=1) == 1.0


def test_none_warmup_is_flat():
    assert [factor(s, "none", warmup_steps=WARMUP) for s in range(WARMUP)] == [1.0] * WARMUP


@pytest.mark.parametrize("warmup", WARMUPS.names())
@pytest.mark.parametrize("min_factor", [0.0, 0.05, 0.5])
def test_cosine_ends_at_min_factor(warmup, min_factor):
    curve = [factor(s, warmup, "cosine", min_factor=min_factor) for s in range(WARMUP, TOTAL + 5)]
    assert curve[0] == 1.0  # the decay starts at the peak right after warmup
    assert factor(TOTAL, warmup, "cosine", min_factor=min_factor) == pytest.approx(min_factor, abs=1e-12)
    assert factor(TOTAL + 50, warmup, "cosine", min_factor=min_factor) == pytest.approx(min_factor, abs=1e-12)
    assert all(a >= b for a, b in zip(curve, curve[1:])), "cosine never rises"
    # halfway through the decay it is halfway between 1 and min_factor
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert factor(mid, warmup, "cosine", min_factor=min_factor) == pytest.approx((1 + min_factor) / 2, rel=1e-9)


@pytest.mark.parametrize("warmup", WARMUPS.names())
def test_linear_decay_ends_at_min_factor(warmup):
    assert factor(TOTAL, warmup, "linear") == pytest.approx(MIN_FACTOR, abs=1e-12)
    curve = [factor(s, warmup, "linear") for s in range(WARMUP, TOTAL + 1)]
    steps = [a - b for a, b in zip(curve, curve[1:])]
    assert steps == pytest.approx([(1 - MIN_FACTOR) / (TOTAL - WARMUP)] * len(steps), rel=1e-9)


@pytest.mark.parametrize("warmup", WARMUPS.names())
def test_constant_decay_holds_the_peak(warmup):
    assert [factor(s, warmup, "constant") for s in range(WARMUP, TOTAL)] == [1.0] * (TOTAL - WARMUP)


@pytest.mark.parametrize("warmup", WARMUPS.names())
@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_step_decay_multiplies_by_gamma_exactly_at_milestones(warmup, gamma):
    curve = {s: factor(s, warmup, "step", gamma=gamma) for s in range(WARMUP, TOTAL)}
    m1, m2 = MILESTONES
    for s, f in curve.items():
        want = 1.0 if s < m1 else gamma if s < m2 else gamma**2
        assert f == pytest.approx(want, rel=1e-12), s
    # the drop happens at the milestone step itself, not one step early or late
    assert curve[m1 - 1] == 1.0 and curve[m1] == pytest.approx(gamma)
    assert curve[m2 - 1] == pytest.approx(gamma) and curve[m2] == pytest.approx(gamma**2)


def test_step_decay_milestones_are_absolute_steps_not_shifted_by_warmup():
    # resolve() gives absolute milestone steps; a longer warmup must not move them
    for warmup_steps in (0, 5, 20):
        assert factor(MILESTONES[0] - 1, "linear", "step", warmup_steps=warmup_steps) == 1.0
        assert factor(MILESTONES[0], "linear", "step", warmup_steps=warmup_steps) == pytest.approx(GAMMA)


@pytest.mark.parametrize("warmup, decay", PAIRS)
def test_continuous_at_the_end_of_warmup(warmup, decay):
    # the last warmup step and the first decay step are both the peak: no jump up or down at the seam
    assert factor(WARMUP - 1, warmup, decay) == 1.0
    assert factor(WARMUP, warmup, decay) == 1.0
    assert math.isfinite(factor(TOTAL - 1, warmup, decay))


@pytest.mark.parametrize("warmup", ["lin", "Linear"])
def test_unknown_warmup_is_an_error(warmup):
    with pytest.raises(KeyError, match="linear"):
        factor(0, warmup)


def test_unknown_decay_is_an_error():
    with pytest.raises(KeyError, match="cosine"):
        factor(WARMUP + 1, "linear", "cosin")
