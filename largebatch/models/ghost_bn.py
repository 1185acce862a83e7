"""Ghost batch normalisation (Hoffer, Hubara & Soudry 2017, arXiv 1705.08741, "Train longer, generalize better").

In training, a batch of n examples is split into k = n // ghost_batch_size virtual ("ghost") batches and each is
normalised with its own mean and variance, so the noise of BN statistics stays that of a small batch however
large the real batch grows. The running statistics are updated once per forward, by the mean of the k chunks'
updates:  running <- (1 - m) * running + m * mean_k(stat_k). Eval is plain BatchNorm with the running statistics.

`apply_ghost_batchnorm(model, ghost_batch_size)` swaps every nn.BatchNorm1d/2d for the ghost version in place
(Composer style: a pure trick, usable without the rest of largebatch). The ghost modules subclass the BatchNorm
they replace, so state_dict keys and shapes are unchanged and checkpoints load into either.
"""
from __future__ import annotations

from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _GhostMixin(_BatchNorm):
    """Train-mode forward shared by the 1d and 2d variants; everything else is nn.BatchNorm*d's. It subclasses their
    common base (listed before nn.BatchNorm*d, so the method resolution order is the same as for a plain mixin)."""

    ghost_batch_size: int

    def _init_ghost(self, ghost_batch_size: int) -> None:
        if ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size must be >= 2 (BN needs 2 values per channel), got {ghost_batch_size}")
        self.ghost_batch_size = int(ghost_batch_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n <= self.ghost_batch_size:
            return super().forward(x)
        self._check_input_dim(x)
        factor = self._momentum_factor()
        k = n // self.ghost_batch_size  # every virtual batch has >= ghost_batch_size examples
        if n % k == 0:
            return self._forward_equal_chunks(x, k, factor)
        return self._forward_unequal_chunks(x, k, factor)

    def _momentum_factor(self) -> float:
        # Same bookkeeping as nn.modules.batchnorm._BatchNorm.forward: one tracked batch per forward, not per chunk.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return factor

    def _running_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(running_mean, running_var) when running statistics are tracked, else None (BN registers both or neither)."""
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            return self.running_mean, self.running_var
        return None

    def _forward_equal_chunks(self, x: torch.Tensor, k: int, factor: float) -> torch.Tensor:
        # One kernel call instead of k: fold the k chunks into the channel axis, (n, C, *s) -> (g, k*C, *s), so
        # each (chunk, channel) pair is its own BN channel. Costs one copy of x each way.
        n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
        g = n // k
        folded = x.reshape(k, g, c, *rest).transpose(0, 1).reshape(g, k * c, *rest)
        stats = self._running_stats()
        w = self.weight.repeat(k) if self.weight is not None else None
        b = self.bias.repeat(k) if self.bias is not None else None
        if stats is None:
            y = F.batch_norm(folded, None, None, w, b, True, factor, self.eps)
        else:
            running_mean, running_var = stats
            rm, rv = running_mean.repeat(k), running_var.repeat(k)
            y = F.batch_norm(folded, rm, rv, w, b, True, factor, self.eps)
            with torch.no_grad():
                running_mean.copy_(rm.view(k, c).mean(0))
                running_var.copy_(rv.view(k, c).mean(0))
        return y.reshape(g, k, c, *rest).transpose(0, 1).reshape(n, c, *rest)

    def _forward_unequal_chunks(self, x: torch.Tensor, k: int, factor: float) -> torch.Tensor:
        # n is not a multiple of k: tensor_split gives k chunks whose sizes differ by at most one.
        stats = self._running_stats()
        outs: list[torch.Tensor] = []
        means: list[torch.Tensor] = []
        vars_: list[torch.Tensor] = []
        for chunk in torch.tensor_split(x, k, dim=0):
            if stats is None:
                outs.append(F.batch_norm(chunk, None, None, self.weight, self.bias, True, factor, self.eps))
                continue
            rm, rv = stats[0].clone(), stats[1].clone()
            outs.append(F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, factor, self.eps))
            means.append(rm)
            vars_.append(rv)
        if stats is not None:
            with torch.no_grad():
                stats[0].copy_(torch.stack(means).mean(0))
                stats[1].copy_(torch.stack(vars_).mean(0))
        return torch.cat(outs, dim=0)


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """BatchNorm1d whose training statistics come from virtual batches of `ghost_batch_size` (arXiv 1705.08741)."""

    def __init__(self, num_features: int, ghost_batch_size: int, **bn_kwargs):
        super().__init__(num_features, **bn_kwargs)
        self._init_ghost(ghost_batch_size)


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from virtual batches of `ghost_batch_size` (arXiv 1705.08741)."""

    def __init__(self, num_features: int, ghost_batch_size: int, **bn_kwargs):
        super().__init__(num_features, **bn_kwargs)
        self._init_ghost(ghost_batch_size)


_GHOST_OF: dict[type[nn.Module], type[GhostBatchNorm1d] | type[GhostBatchNorm2d]] = {
    nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d,
}


def _replaceable(module: nn.Module) -> TypeGuard[_BatchNorm]:
    """An exact nn.BatchNorm1d/2d (the keys of _GHOST_OF): not a subclass such as SyncBatchNorm or a ghost module."""
    return type(module) in _GHOST_OF


def _to_ghost(bn: _BatchNorm, ghost_batch_size: int) -> nn.Module:
    ghost_cls = _GHOST_OF[type(bn)]
    ghost = ghost_cls(
        bn.num_features, ghost_batch_size, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    ref = next(iter(bn.state_dict().values()), None)
    if ref is not None:
        ghost = ghost.to(device=ref.device)
    if bn.weight is not None:
        ghost = ghost.to(dtype=bn.weight.dtype)
    ghost.load_state_dict(bn.state_dict())  # affine params and running stats, keys unchanged
    ghost.train(bn.training)
    return ghost


def apply_ghost_batchnorm(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Replace every nn.BatchNorm1d/2d in `model` with its ghost version, in place; returns the model.

    Only exact BatchNorm1d/2d are replaced (not SyncBatchNorm, not modules that are already ghost). If `model`
    is itself a BatchNorm, the ghost module is returned instead (a root cannot be replaced in place).
    """
    if _replaceable(model):
        return _to_ghost(model, ghost_batch_size)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _replaceable(child):
                setattr(parent, name, _to_ghost(child, ghost_batch_size))
    return model
