"""Optimizer registry and `create_optimizer`.

Every entry is an `OptimInfo` (timm's shape): how to build the optimizer and which `optim.*` settings it takes,
declared once, here. `create_optimizer` passes an optimizer exactly its own settings, so a new optimizer is one
registration (and its new settings one field each in config/schema.py OptimConfig). Parameters are always split by
`param_groups.py`: biases and norm params get no weight decay and no LARS/LAMB trust ratio; the decay group's
`weight_decay` reaches the optimizers that take it (`decays`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.param_groups import create_param_groups
from largebatch.registry import Registry


@dataclass(frozen=True, slots=True)
class OptimInfo:
    """One registered optimizer.

    build: (param_groups, lr=..., **settings) -> Optimizer, called with exactly `settings`.
    settings: the OptimConfig fields (config/schema.py) it takes, by name; lists arrive as tuples.
    decays: whether it applies the param groups' weight_decay (Rprop has none: weight_decay > 0 is refused).
    full_batch_only: refused at a global batch smaller than the training set (config/resolve.py).
    """

    build: Callable[..., Optimizer]
    settings: tuple[str, ...] = ()
    decays: bool = True
    full_batch_only: bool = False


OPTIMIZERS: Registry[OptimInfo] = Registry("optimizer")

_ = OPTIMIZERS.add
_("sgd", OptimInfo(torch.optim.SGD, ("momentum", "nesterov")),
  "SGD with momentum (optionally Nesterov); the small-batch baseline")
_("adamw", OptimInfo(torch.optim.AdamW, ("betas", "eps")),
  "AdamW, decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101)")
_("adam", OptimInfo(torch.optim.Adam, ("betas", "eps")),
  "Adam, weight decay as an L2 term in the gradient (Kingma & Ba, arXiv 1412.6980)")
_("rmsprop", OptimInfo(torch.optim.RMSprop, ("alpha", "eps", "momentum", "centered")),
  "RMSprop: the step divided by a running RMS of the gradient (Tieleman & Hinton 2012); mini-batch Rprop")
_("rprop", OptimInfo(torch.optim.Rprop, ("etas", "step_sizes"), decays=False, full_batch_only=True),
  "Rprop: a per-weight step from the gradient's sign alone (Riedmiller & Braun 1993); full batch only")
_("lars", OptimInfo(Lars, ("momentum", "nesterov", "trust_coefficient")),
  "LARS, layer-wise trust ratio on momentum SGD (You et al., arXiv 1708.03888)")
_("lamb", OptimInfo(Lamb, ("betas", "eps")),
  "LAMB, layer-wise trust ratio on Adam (You et al., arXiv 1904.00962)")
del _


def all_settings() -> set[str]:
    """Every setting some registered optimizer takes."""
    return {s for e in OPTIMIZERS.entries() for s in e.obj.settings}


def optim_settings(optim: Any) -> dict[str, Any]:
    """The settings optimizer `optim.name` takes, read from an OptimConfig (or anything with those attributes),
    plus weight_decay: the keyword arguments of `create_optimizer` after the LR."""
    info = OPTIMIZERS.get(optim.name)
    return {"weight_decay": optim.weight_decay, **{s: getattr(optim, s) for s in info.settings}}


def create_optimizer(model: torch.nn.Module, name: str, lr: float, *, weight_decay: float = 0.0,
                     **settings: Any) -> Optimizer:
    """Build optimizer `name` over `model`, with decay/no-decay param groups. Unknown name -> KeyError.

    `settings` may hold any registered optimizer's settings (so one call serves every name); `name` gets its own,
    and the ones not given take OptimConfig's defaults. A setting no optimizer takes is a TypeError."""
    from largebatch.config.schema import OptimConfig

    info = OPTIMIZERS.get(name)
    unknown = set(settings) - all_settings()
    if unknown:
        raise TypeError(f"create_optimizer: no optimizer takes {', '.join(sorted(unknown))}; settings: "
                        f"{', '.join(sorted(all_settings()))}")
    defaults = OptimConfig.model_fields
    kw = {s: settings[s] if s in settings else defaults[s].default for s in info.settings}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    if weight_decay and not info.decays:
        raise ValueError(f"create_optimizer: {name} takes no weight decay, got weight_decay={weight_decay}")
    return info.build(create_param_groups(model, weight_decay), lr=lr, **kw)


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
