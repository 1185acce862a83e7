"""LR scaling rules (docs/design.md §4): every RULES entry, by formula, at B0, and monotone in B."""
from __future__ import annotations

import math

import pytest

from largebatch.scaling import RULES, scaled_lr

BASE_LR, B0 = 0.01, 16
ALPHA = 0.75


def expected(rule: str, batch: int, base_batch: int = B0, base_lr: float = BASE_LR, alpha: float = ALPHA) -> float:
    """The formulas of docs/design.md §4, written out independently of the code under test."""
    ratio = batch / base_batch
    return {
        "none": base_lr,
        "linear": base_lr * ratio,
        "sqrt": base_lr * math.sqrt(ratio),
        "power": base_lr * ratio**alpha,
    }[rule]


def test_registry_has_the_documented_rules():
    assert set(RULES.names()) >= {"none", "linear", "sqrt", "power"}


@pytest.mark.parametrize("rule", RULES.names())
def test_every_rule_has_a_formula_here_and_a_description(rule):
    # a new rule must come with its expected formula in this file (and a line for `largebatch list`)
    expected(rule, 1024)
    assert next(e for e in RULES.entries() if e.name == rule).description.strip()


@pytest.mark.parametrize(
    "rule, want",
    [("none", 0.01), ("linear", 0.64), ("sqrt", 0.08), ("power", 0.01 * 64**0.75)],  # B/B0 = 1024/16 = 64
)
def test_documented_values_at_1024(rule, want):
    assert scaled_lr(rule, BASE_LR, 1024, B0, ALPHA) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("rule", RULES.names())
@pytest.mark.parametrize("batch, base_batch", [(1024, 16), (256, 256), (32, 256), (8192, 256), (3, 2)])
def test_formula(rule, batch, base_batch):
    got = scaled_lr(rule, BASE_LR, batch, base_batch, ALPHA)
    assert got == pytest.approx(expected(rule, batch, base_batch), rel=1e-12)


@pytest.mark.parametrize("rule", RULES.names())
@pytest.mark.parametrize("base_batch", [1, 16, 256])
def test_rule_at_base_batch_is_base_lr(rule, base_batch):
    assert scaled_lr(rule, 0.1, base_batch, base_batch, ALPHA) == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("rule", RULES.names())
def test_monotone_non_decreasing_in_batch(rule):
    batches = [1, 2, 8, 16, 17, 64, 100, 256, 1024, 4096, 65536]
    lrs = [scaled_lr(rule, BASE_LR, b, B0, ALPHA) for b in batches]
    assert all(a <= b for a, b in zip(lrs, lrs[1:])), lrs
    assert all(lr > 0 for lr in lrs)


@pytest.mark.parametrize("alpha, same_as", [(0.0, "none"), (0.5, "sqrt"), (1.0, "linear")])
def test_power_interpolates_the_other_rules(alpha, same_as):
    for batch in (32, 1024, 4096):
        assert scaled_lr("power", BASE_LR, batch, B0, alpha) == pytest.approx(
            scaled_lr(same_as, BASE_LR, batch, B0, alpha), rel=1e-12)


def test_unknown_rule_names_the_valid_ones():
    with pytest.raises(KeyError, match="linear"):
        scaled_lr("linaer", BASE_LR, 1024, B0)
