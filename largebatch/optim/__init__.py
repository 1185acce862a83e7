"""Optimizers for large-batch training: a registry (sgd, adamw, lars, lamb) and `create_optimizer`."""
from largebatch.optim.factory import OPTIMIZERS, OptimizerArgs, create_optimizer, trust_ratio_summary
from largebatch.optim.lamb import Lamb
from largebatch.optim.lars import Lars
from largebatch.optim.param_groups import create_param_groups, split_decay_params

__all__ = [
    "OPTIMIZERS",
    "Lamb",
    "Lars",
    "OptimizerArgs",
    "create_optimizer",
    "create_param_groups",
    "split_decay_params",
    "trust_ratio_summary",
]
