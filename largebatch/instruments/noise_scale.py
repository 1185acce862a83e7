"""Gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish, Kaplan, Amodei et al. 2018, arXiv 1812.06162).

G is the true gradient and Σ the per-example gradient covariance. B_simple estimates the critical batch: below it a
larger batch cuts the steps almost proportionally, above it the gain fades. It is estimated during training at no
extra backward pass, from squared gradient norms at two batch sizes (App. A.1 of the paper): a batch of B examples
gives E|G_B|² = |G|² + tr(Σ)/B, so with B_small < B_big

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

are unbiased. Each is smoothed by its own EMA over optimizer steps, and the ratio is taken of the smoothed values
(the ratio of two noisy estimates is biased; the paper smooths numerator and denominator separately).

Which gradients (B_small is always the micro-batch, B_big the global batch of the step):
- accumulation > 1 (any worker count): after micro-step 0, under `no_sync`, `p.grad` holds this worker's first
  micro-batch gradient divided by `accum` (the loss is scaled by 1/accum), so |g_small|² = accum² |p.grad|².
- accumulation == 1, workers > 1: the local gradient is never in `p.grad` (DDP all-reduces inside backward), so a
  DDP comm hook adds |bucket|² of each bucket BEFORE calling the default all-reduce hook: the local micro-batch's
  squared norm, summed over buckets. The hook costs one norm per bucket; it is registered only with this instrument.
- accumulation == 1, one worker: there is one gradient per step, B_small == B_big, and the two-batch estimator does
  not exist. The metric is left out (we do not silently change the step); set `data.grad_accum_steps: 2` to get it
  from two half-size micro-batches over the same examples.
|G_big|² is the norm of `p.grad` after the sync (the all-reduced mean), before clipping and the optimizer step.

No sync in the micro-step loop: norms and EMAs stay device tensors. Each rank keeps EMAs of ITS estimates (its own
small-batch norm); the estimators and the EMA are linear, so the sum over ranks at the end of the epoch (one
all-reduce of 3 scalars, `epoch_metrics`) is exactly the EMA of the estimates averaged over ranks. Under fp16 loss
scaling both norms carry the same scale², which cancels in the ratio; steps with non-finite norms are skipped.
The EMAs live in memory only: a trial resumed from a checkpoint starts them afresh.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.distributed as dist


def grad_sq_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Σ |p.grad|² as a 0-d float64 device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    return torch.nn.utils.get_total_norm(grads).double().square()


def noise_estimates(small_sq, big_sq, b_small: float, b_big: float):
    """Unbiased (|G|², tr Σ) from |G_small|², |G_big|² at batch sizes b_small < b_big (floats or tensors)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


class NoiseScaleEMA:
    """EMAs of |G|² and tr(Σ) on the device, plus an update count: state = [ema_g2, ema_trace, n]."""

    def __init__(self, decay: float = 0.95, device: torch.device | str = "cpu"):
        self.decay = decay
        self.state = torch.zeros(3, dtype=torch.float64, device=device)

    def update(self, g2: torch.Tensor, trace: torch.Tensor) -> None:
        new = torch.stack([g2, trace]).to(self.state)
        ok = torch.isfinite(new).all()  # a skipped fp16 step or a diverging one must not poison the EMA
        blended = self.decay * self.state[:2] + (1.0 - self.decay) * new
        self.state[:2] = torch.where(ok, blended, self.state[:2])
        self.state[2] += ok.to(self.state.dtype)

    @staticmethod
    def ratio(state: list[float]) -> Optional[float]:
        """B_simple from a (summed) state; None before any update, NaN while |G|² is not yet resolved (<= 0).
        The EMAs share their (1 - decay^n) start-up bias, which cancels in the ratio."""
        g2, trace, n = state
        if n <= 0:
            return None
        return trace / g2 if g2 > 0 and math.isfinite(trace / g2) else float("nan")


class GradNoiseScale:
    """The loop's hook: `after_backward(i, accum)` per micro-step, `after_sync(B, micro)` per optimizer step,
    `epoch_metrics()` once per epoch on every rank. Construct it after wrapping the model in DDP.
    `min_accum`: the smallest accumulation of any phase; the comm hook is registered only where it is 1."""

    def __init__(self, net: torch.nn.Module, params: list[torch.nn.Parameter], world: int, *,
                 decay: float = 0.95, device: torch.device | str = "cpu", min_accum: int = 1):
        self.params, self.world = params, world
        self.ema = NoiseScaleEMA(decay, device)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self._small, self._have_small = zero, False  # accum > 1: the first micro-batch's local |g|^2
        self._hook_sq, self._hook_fired = zero, False  # accum == 1, DDP: the local |g|^2, summed over buckets
        if isinstance(net, torch.nn.parallel.DistributedDataParallel) and min_accum == 1:
            net.register_comm_hook(self, _local_norm_then_allreduce)

    def after_backward(self, i: int, accum: int) -> None:
        """After micro-step i's backward. With accum > 1, micro-step 0 ran under no_sync: p.grad is local."""
        if i == 0 and accum > 1:
            self._small, self._have_small = grad_sq_norm(self.params) * accum ** 2, True

    def after_sync(self, global_batch: int, micro_batch: int) -> None:
        """After the last micro-step (gradients all-reduced), before clipping and the optimizer step."""
        accum = global_batch // (micro_batch * self.world)
        if accum == 1 and self.world > 1:
            small, ok = self._hook_sq, self._hook_fired
        else:
            small, ok = self._small, self._have_small
        self._have_small, self._hook_fired = False, False
        self._hook_sq = torch.zeros_like(self._hook_sq)
        if not ok or micro_batch >= global_batch:
            return  # one worker without accumulation: no second batch size this step
        g2, trace = noise_estimates(small, grad_sq_norm(self.params), micro_batch, global_batch)
        self.ema.update(g2, trace)

    def epoch_metrics(self) -> dict[str, float]:
        """{"grad_noise_scale": B_simple} over all ranks, or {} when it is unavailable. Call on EVERY rank.
        Sync point: one all-reduce of 3 scalars and one device-to-host copy, once per epoch."""
        state = self.ema.state.clone()
        if self.world > 1:
            dist.all_reduce(state, op=dist.ReduceOp.SUM)
        value = NoiseScaleEMA.ratio(state.tolist())
        return {} if value is None else {"grad_noise_scale": value}


def _local_norm_then_allreduce(state, bucket):  # no annotations: DDP rejects the string ones of __future__
    """DDP comm hook (state: GradNoiseScale, bucket: dist.GradBucket): add this rank's |bucket|^2 (the local, not
    yet reduced gradient), then DDP's default all-reduce (mean over ranks), so training is unchanged."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state._hook_sq = state._hook_sq + torch.linalg.vector_norm(bucket.buffer(), dtype=torch.float64).square()
    state._hook_fired = True
    return allreduce_hook(None, bucket)
