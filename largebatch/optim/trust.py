"""The step LARS and LAMB share: the closure, the walk over the parameters that have a gradient, and the layer-wise
trust ratios kept as telemetry (`last_trust_ratios`, 0-d tensors: no `.item()`, no CPU-GPU sync). A subclass updates
one parameter in `_update` and returns its trust ratio, or None for a group that opts out (`trust_ratio: False`,
see `param_groups.py`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.optim import Optimizer

from largebatch.optim.param_groups import is_trust_group


class TrustRatioOptimizer(Optimizer):
    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        # Telemetry: 0-d tensors from the last step, one per trust-group param with a grad (no sync to keep them).
        self.last_trust_ratios: list[torch.Tensor] = []

    @torch.no_grad()
    # torch's Optimizer.step overloads type a closure as returning float; ours returns the loss tensor, as
    # torch's own optimizers accept
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        ratios: list[torch.Tensor] = []
        for group in self.param_groups:
            use_trust = is_trust_group(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                ratio = self._update(p, p.grad, group, use_trust)
                if ratio is not None:
                    ratios.append(ratio)
        self.last_trust_ratios = ratios
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict, use_trust: bool) -> Optional[torch.Tensor]:
        raise NotImplementedError
