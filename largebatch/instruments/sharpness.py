"""Sharpness: the top eigenvalue λ_max of the loss Hessian on a fixed probe batch (Keskar et al. 2016,
arXiv 1609.04836: large batches go to sharp minima).

λ_max comes from power iteration on Hessian-vector products (Pearlmutter's trick, double backward): v <- Hv/|Hv|,
λ = vᵀHv, with no Hessian ever formed. Power iteration finds the eigenvalue of largest MAGNITUDE; near a minimum
the Hessian's dominant eigenvalue is positive, so that is λ_max (reported as is, sign included).

λη/2 (`sharpness_x_lr_over_2`) puts it next to the step size: plain gradient descent on a quadratic is stable only
while λ·η < 2, i.e. λη/2 < 1 (for heavy-ball momentum β the bound is 2(1+β)/η), so values near 1 mean training
sits at the edge of stability. η is the global LR of the last step (LARS/LAMB rescale it per layer).

The model is put in eval mode for the probe (BatchNorm uses its running statistics and dropout is off), so the
value is a property of the weights alone, not of the batch it happens to see; train mode is restored after.
The probe batch is a seeded draw from the training set: the same examples for every batch size of a study seed,
so sharpness compares across trials. It runs outside the training steps (rank 0, end of training / every K epochs)
and syncs once per power iteration.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, cast

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def probe_batch(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` examples of (x, y) drawn by a generator seeded with `seed` (fixed for the whole trial)."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x.shape[0], generator=g)[: min(size, x.shape[0])].to(x.device)
    return x[idx], y[idx]


def top_hessian_eigenvalue(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           loss_fn: LossFn = F.cross_entropy, iters: int = 50, tol: float = 1e-4,
                           seed: int = 0) -> float:
    """λ_max of ∇²_w loss_fn(model(x), y) by power iteration (at most `iters` HVPs; stops when λ changes by less
    than `tol` relative). BN/dropout in eval mode during the probe. Returns NaN for a non-finite loss."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):  # sync point (outside the training steps)
            return float("nan")
        grads = torch.autograd.grad(loss, params, create_graph=True)
        g = torch.Generator().manual_seed(int(seed))
        v = [torch.randn(p.shape, generator=g).to(p) for p in params]
        v = _normalised(v)
        lam: Optional[float] = None
        for _ in range(iters):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            new = float(sum((h * u).sum() for h, u in zip(hv, v)))  # Rayleigh quotient vᵀHv; sync point
            norm = math.sqrt(float(sum(h.square().sum() for h in hv)))
            if norm == 0.0 or not math.isfinite(norm):
                return new if math.isfinite(new) else float("nan")
            v = [h / norm for h in hv]
            if lam is not None and abs(new - lam) <= tol * abs(new):
                return new
            lam = new
        assert lam is not None  # iters > 0 (instruments.sharpness_iters)
        return float(lam)
    finally:
        model.train(was_training)


def _normalised(v: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(cast(torch.Tensor, sum(t.square().sum() for t in v)))  # v is never empty: a tensor
    return [t / norm for t in v]


def sharpness_metrics(model: torch.nn.Module, probe: tuple[torch.Tensor, torch.Tensor], lr: float, *,
                      iters: int = 50, seed: int = 0, loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """{"sharpness": λ_max, "sharpness_x_lr_over_2": λ·lr/2} on the probe batch, for the task's loss."""
    lam = top_hessian_eigenvalue(model, *probe, iters=iters, seed=seed, loss_fn=loss_fn)
    return {"sharpness": lam, "sharpness_x_lr_over_2": lam * lr / 2.0}
