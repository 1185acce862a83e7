"""Learning-rate scaling rules: peak LR as a function of the global batch.

`base_lr` is the LR at `base_batch_size` (B0), e.g. 0.1 per 256 examples. Each rule maps (base_lr, B, B0, alpha)
to the peak LR that the schedule warms up to. LARS/LAMB apply their per-layer trust ratio on top of this global LR.
"""
from __future__ import annotations

import math
from typing import Callable

from largebatch.registry import Registry

Rule = Callable[[float, int, int, float], float]
RULES: Registry[Rule] = Registry("scaling rule")


@RULES.register("none", "lr = base_lr; the LR is left unchanged as the batch grows (the control)")
def no_scaling(base_lr: float, batch: int, base_batch: int, alpha: float) -> float:
    return base_lr


@RULES.register("linear", "lr = base_lr * B/B0 (Goyal et al. 2017, arXiv 1706.02677); pair it with warmup")
def linear(base_lr: float, batch: int, base_batch: int, alpha: float) -> float:
    return base_lr * batch / base_batch


@RULES.register("sqrt", "lr = base_lr * sqrt(B/B0) (Hoffer et al. 2017, arXiv 1705.08741): "
                        "keeps gradient-noise variance")
def sqrt(base_lr: float, batch: int, base_batch: int, alpha: float) -> float:
    return base_lr * math.sqrt(batch / base_batch)


@RULES.register("power", "lr = base_lr * (B/B0)**alpha; interpolates none (0), sqrt (0.5) and linear (1)")
def power(base_lr: float, batch: int, base_batch: int, alpha: float) -> float:
    return base_lr * (batch / base_batch) ** alpha


def scaled_lr(rule: str, base_lr: float, batch: int, base_batch: int, alpha: float = 0.5) -> float:
    """The peak LR for `batch` under `rule`."""
    return RULES.get(rule)(base_lr, batch, base_batch, alpha)
