"""Split a model's parameters into a decay group and a no-decay group.

Large-batch recipes (Goyal et al. 2017, arXiv 1706.02677; You et al. 2017, arXiv 1708.03888) exclude biases and
normalization parameters from weight decay, and LARS/LAMB also exclude them from the layer-wise trust ratio: a
bias or a BatchNorm scale has a norm that says nothing about the layer's scale, so its ratio would be noise.

Rule: a parameter decays iff it has ndim >= 2 and does not belong to a normalization layer.
"""
from __future__ import annotations

from torch import nn

# _NormBase covers BatchNorm{1,2,3}d, SyncBatchNorm and InstanceNorm{1,2,3}d (with affine=True).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def split_decay_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): weights with ndim >= 2 outside norm layers decay; biases, norm params, 1-D params don't.

    Frozen parameters (requires_grad=False) are left out; a parameter shared by two modules appears once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for _, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm or param.ndim < 2 else decay).append(param)
    return decay, no_decay


def create_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer param groups: decay params get `weight_decay` and the trust ratio; the rest get neither.

    The `trust_ratio` flag is read by LARS/LAMB; SGD/AdamW keep it as an inert group key. Empty groups are dropped.
    """
    decay, no_decay = split_decay_params(model)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "trust_ratio": True},
        {"params": no_decay, "weight_decay": 0.0, "trust_ratio": False},
    ]
    return [g for g in groups if g["params"]]


def is_trust_group(group: dict) -> bool:
    """True when LARS/LAMB should apply the layer-wise trust ratio to this group (the default)."""
    return bool(group.get("trust_ratio", True))

