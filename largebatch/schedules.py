"""LR schedules: warmup x decay, as pure functions of the step (nanoGPT's get_lr, timm's stateless schedulers).

The loop owns the step counter and calls `lr_factor(step, ...)`; nothing here keeps state, so a resumed trial gets
the exact LR it would have had. Lengths arrive in steps; `config.resolve()` converts the user's epochs/examples
(units that do not change with B) into steps.

lr(step) = peak_lr * warmup(step) * decay(step)   during warmup decay is held at its start value (1.0).
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

from largebatch.registry import Registry

# warmup(step, warmup_steps, start_factor) -> factor in [start_factor, 1]; reaches exactly 1.0 at step warmup_steps-1
Warmup = Callable[[int, int, float], float]
# decay(step_after_warmup, decay_steps, min_factor, milestones, gamma) -> factor
Decay = Callable[[int, int, float, Sequence[int], float], float]

WARMUPS: Registry[Warmup] = Registry("warmup")
DECAYS: Registry[Decay] = Registry("decay")


@WARMUPS.register("none", "no warmup: the peak LR from the first step")
def warmup_none(step: int, warmup_steps: int, start_factor: float) -> float:
    return 1.0


@WARMUPS.register("linear", "gradual linear ramp per step from start_factor*lr to lr "
                            "(Goyal et al. 2017, arXiv 1706.02677)")
def warmup_linear(step: int, warmup_steps: int, start_factor: float) -> float:
    if warmup_steps <= 1 or step >= warmup_steps - 1:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / (warmup_steps - 1)


@WARMUPS.register("exponential", "geometric ramp from start_factor*lr to lr: factor = start_factor**(1 - t)")
def warmup_exponential(step: int, warmup_steps: int, start_factor: float) -> float:
    if warmup_steps <= 1 or step >= warmup_steps - 1:
        return 1.0
    return start_factor ** (1.0 - step / (warmup_steps - 1))


@DECAYS.register("constant", "hold the peak LR after warmup")
def decay_constant(step: int, decay_steps: int, min_factor: float, milestones: Sequence[int], gamma: float) -> float:
    return 1.0


@DECAYS.register("cosine", "half-cosine from 1 to min_factor over the steps after warmup "
                           "(Loshchilov & Hutter, arXiv 1608.03983)")
def decay_cosine(step: int, decay_steps: int, min_factor: float, milestones: Sequence[int], gamma: float) -> float:
    if decay_steps <= 0:
        return 1.0
    t = min(step, decay_steps) / decay_steps
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


@DECAYS.register("linear", "linear from 1 to min_factor over the steps after warmup")
def decay_linear(step: int, decay_steps: int, min_factor: float, milestones: Sequence[int], gamma: float) -> float:
    if decay_steps <= 0:
        return 1.0
    t = min(step, decay_steps) / decay_steps
    return 1.0 + (min_factor - 1.0) * t


@DECAYS.register("step", "multiply by gamma at each milestone (epochs, converted to absolute steps)")
def decay_step(step: int, decay_steps: int, min_factor: float, milestones: Sequence[int], gamma: float) -> float:
    # milestones are absolute steps here (resolve() converted them); `step` is the absolute step too, see lr_factor
    return gamma ** bisect.bisect_right(list(milestones), step)


def lr_factor(
    step: int,
    total_steps: int,
    *,
    warmup: str = "linear",
    warmup_steps: int = 0,
    start_factor: float = 0.1,
    decay: str = "constant",
    min_factor: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier on the peak LR at optimizer step `step` (0-based) of `total_steps`."""
    if step < warmup_steps:
        return WARMUPS.get(warmup)(step, warmup_steps, start_factor)
    if decay == "step":  # milestones are absolute, so warmup does not shift them
        return decay_step(step, 0, min_factor, milestones, gamma)
    return DECAYS.get(decay)(step - warmup_steps, total_steps - warmup_steps, min_factor, milestones, gamma)
