"""LAMB: Layer-wise Adaptive Moments for Batch training (You et al. 2019, arXiv 1904.00962).

Per layer: r = m_hat / (sqrt(v_hat) + eps) + wd * w;  w -= lr * (||w|| / ||r||) * r   (phi = identity).

m_hat, v_hat are Adam's bias-corrected moments. Groups with `trust_ratio=False` (biases, norm params; see
`param_groups.py`) take ratio 1, i.e. plain Adam with decoupled weight decay. `step()` is pure tensor math: no
`.item()`, so it never forces a CPU-GPU sync.
"""
from __future__ import annotations

from typing import Optional

import torch
from largebatch.optim.trust import TrustRatioOptimizer


class Lamb(TrustRatioOptimizer):
    """LAMB with bias correction, decoupled weight decay inside the trust ratio, and per-group opt-out.

    Args:
        params: iterable of parameters or param-group dicts (a group may set `trust_ratio: False`).
        lr: global learning rate.
        betas: (beta1, beta2) for the first and second moments.
        eps: added to sqrt(v_hat) in the Adam direction.
        weight_decay: decoupled weight decay wd, added to the Adam direction before the trust ratio.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if lr < 0.0:
            raise ValueError(f"Lamb: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: betas must each be in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"Lamb: eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"Lamb: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, trust_ratio=True)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict, use_trust: bool) -> Optional[torch.Tensor]:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            # step is a host-side int: bias correction stays a Python float, no device round trip.
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1.0 - beta1)  # m = b1 * m + (1 - b1) * g
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias1, bias2 = 1.0 - beta1**step, 1.0 - beta2**step

        update = (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt_().add_(eps))
        if wd != 0.0:
            update.add_(p, alpha=wd)
        if not use_trust:
            p.sub_(update, alpha=lr)
            return None
        w_norm = torch.linalg.vector_norm(p)
        r_norm = torch.linalg.vector_norm(update)
        ratio = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
        update.mul_(ratio * lr)
        p.sub_(update)
        return ratio
