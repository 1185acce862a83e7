"""Optimizers for large-batch training: a registry of `OptimInfo` entries and `create_optimizer`."""
from largebatch.optim.factory import OPTIMIZERS, OptimInfo, create_optimizer, optim_settings, trust_ratio_summary
from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.param_groups import create_param_groups, split_decay_params

__all__ = [
    "OPTIMIZERS",
    "Lamb",
    "Lars",
    "OptimInfo",
    "create_optimizer",
    "create_param_groups",
    "optim_settings",
    "split_decay_params",
    "trust_ratio_summary",
]
