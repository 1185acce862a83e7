"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017, arXiv 1708.03888).

Per layer: local_lr = eta * ||w|| / (||g|| + wd * ||w||);  v = m * v + lr * local_lr * (g + wd * w);  w -= v.

Groups with `trust_ratio=False` (biases, norm params; see `param_groups.py`) take local_lr = 1, i.e. plain
momentum SGD. `step()` is pure tensor math: no `.item()`, so it never forces a CPU-GPU sync.
"""
from __future__ import annotations

from typing import Optional

import torch
from largebatch.optim.trust import TrustRatioOptimizer


class Lars(TrustRatioOptimizer):
    """LARS with momentum (optionally Nesterov), weight decay inside the trust ratio, and per-group opt-out.

    Args:
        params: iterable of parameters or param-group dicts (a group may set `trust_ratio: False`).
        lr: global learning rate (LARS recipes use O(1) values, since eta scales it down per layer).
        momentum: momentum factor m.
        weight_decay: L2 coefficient wd, added to the gradient and to the trust-ratio denominator.
        trust_coefficient: eta, the trust coefficient (paper: 0.001).
        nesterov: use the Nesterov form w -= s + m * v, where s = lr * local_lr * g'.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        nesterov: bool = False,
    ):
        if lr < 0.0:
            raise ValueError(f"Lars: lr must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"Lars: momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Lars: weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum <= 0.0:
            raise ValueError("Lars: nesterov=True needs momentum > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            nesterov=nesterov,
            trust_ratio=True,
        )
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict, use_trust: bool) -> Optional[torch.Tensor]:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        eta, nesterov = group["trust_coefficient"], group["nesterov"]
        local_lr = None
        if use_trust:
            w_norm = torch.linalg.vector_norm(p)
            g_norm = torch.linalg.vector_norm(grad)
            raw = eta * w_norm / (g_norm + wd * w_norm)
            # Zero weights (fresh init) or zero grads: fall back to ratio 1 without a host branch.
            local_lr = torch.where((w_norm > 0) & (g_norm > 0), raw, torch.ones_like(raw))
        if wd != 0.0:
            grad = grad.add(p, alpha=wd)
        scaled = grad * (local_lr * lr) if local_lr is not None else grad * lr
        if momentum == 0.0:
            p.sub_(scaled)
            return local_lr
        state = self.state[p]
        if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = scaled.clone()
        else:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(scaled)
        p.sub_(scaled.add(buf, alpha=momentum) if nesterov else buf)
        return local_lr
