"""Optimizer registry and `create_optimizer`.

Every entry is a builder `(param_groups, lr, OptimizerArgs) -> Optimizer`; a variant is a registration, not a
subclass. Parameters are always split by `param_groups.py`: biases and norm params get no weight decay and no
LARS/LAMB trust ratio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.optim import Optimizer

from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.param_groups import create_param_groups
from largebatch.registry import Registry


@dataclass(frozen=True, slots=True)
class OptimizerArgs:
    """Hyperparameters shared by all builders; each builder reads the ones its optimizer has."""

    weight_decay: float = 0.0  # applied to the decay group only
    momentum: float = 0.9  # sgd, lars
    nesterov: bool = False  # sgd, lars
    betas: tuple[float, float] = (0.9, 0.999)  # adamw, lamb
    eps: float = 1e-8  # adamw, lamb
    trust_coefficient: float = 0.001  # lars: eta in local_lr = eta * ||w|| / (||g|| + wd * ||w||)


Builder = Callable[[list[dict], float, OptimizerArgs], Optimizer]
OPTIMIZERS: Registry[Builder] = Registry("optimizer")


@OPTIMIZERS.register("sgd", "SGD with momentum (optionally Nesterov); the small-batch baseline")
def _sgd(groups: list[dict], lr: float, a: OptimizerArgs) -> Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=a.momentum, nesterov=a.nesterov, weight_decay=a.weight_decay)


@OPTIMIZERS.register("adamw", "AdamW, decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101)")
def _adamw(groups: list[dict], lr: float, a: OptimizerArgs) -> Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)


@OPTIMIZERS.register("lars", "LARS, layer-wise trust ratio on momentum SGD (You et al., arXiv 1708.03888)")
def _lars(groups: list[dict], lr: float, a: OptimizerArgs) -> Optimizer:
    return Lars(
        groups,
        lr=lr,
        momentum=a.momentum,
        weight_decay=a.weight_decay,
        trust_coefficient=a.trust_coefficient,
        nesterov=a.nesterov,
    )


@OPTIMIZERS.register("lamb", "LAMB, layer-wise trust ratio on Adam (You et al., arXiv 1904.00962)")
def _lamb(groups: list[dict], lr: float, a: OptimizerArgs) -> Optimizer:
    return Lamb(groups, lr=lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)


def create_optimizer(
    model: torch.nn.Module,
    name: str,
    lr: float,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    trust_coefficient: float = 0.001,
) -> Optimizer:
    """Build optimizer `name` over `model`, with decay/no-decay param groups. Unknown name -> KeyError."""
    builder = OPTIMIZERS.get(name)
    args = OptimizerArgs(
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        betas=tuple(betas),
        eps=eps,
        trust_coefficient=trust_coefficient,
    )
    return builder(create_param_groups(model, weight_decay), lr, args)


def trust_ratio_summary(opt: Optimizer) -> dict[str, float] | None:
    """{"trust_ratio_min", "trust_ratio_median", "trust_ratio_max"} over the last step's per-layer ratios.

    None for optimizers without trust ratios (sgd, adamw) or before the first step. This is a CPU-GPU sync
    point (one `.tolist()`): call it once per epoch / logging interval, not per micro-step.
    """
    ratios = getattr(opt, "last_trust_ratios", None)
    if not ratios:
        return None
    stacked = torch.stack([r.detach().float() for r in ratios])
    lo, med, hi = torch.stack([stacked.min(), stacked.median(), stacked.max()]).tolist()  # sync point
    return {"trust_ratio_min": lo, "trust_ratio_median": med, "trust_ratio_max": hi}
