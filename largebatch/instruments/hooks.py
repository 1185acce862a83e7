"""The instruments as loop hooks (the Composer pattern): small objects the loop calls at three marked places.

    after_backward(micro_step, accum)   after each micro-step's backward (device work only, no sync)
    after_sync(global_batch, micro)     after the gradient all-reduce of each optimizer step (no sync)
    epoch_end(end) -> dict              once per epoch, on every rank: the metrics it adds (may sync)

`build_hooks` lists them once, from `cfg.instruments`; an instrument that is off is not in the list, so the loop
pays one empty-list test per micro-step for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class EpochEnd:
    """What an instrument may read at the end of an epoch."""
    epoch: int
    lr: float
    done: bool        # the trial's last epoch (budget reached, diverged or stopped)
    diverged: bool
    is_rank0: bool


class Hook:
    def after_backward(self, micro_step: int, accum: int) -> None:
        pass

    def after_sync(self, global_batch: int, micro_batch: int) -> None:
        pass

    def epoch_end(self, end: EpochEnd) -> dict[str, Any]:
        return {}


class NoiseScaleHook(Hook):
    """B_simple = tr(Sigma)/|G|^2 from the micro-batch and all-reduced gradient norms (noise_scale.py)."""

    def __init__(self, gns):
        self.gns = gns

    def after_backward(self, micro_step: int, accum: int) -> None:
        self.gns.after_backward(micro_step, accum)

    def after_sync(self, global_batch: int, micro_batch: int) -> None:
        self.gns.after_sync(global_batch, micro_batch)

    def epoch_end(self, end: EpochEnd) -> dict[str, Any]:
        return self.gns.epoch_metrics()  # one all-reduce of 3 scalars (every rank)


class SharpnessHook(Hook):
    """Top Hessian eigenvalue on a fixed, seeded probe batch (sharpness.py), rank 0 only, at the end and every K
    epochs; the other ranks wait at the next collective."""

    def __init__(self, model: torch.nn.Module, probe, loss_fn: Callable, iters: int, every: Optional[int],
                 seed: int):
        self.model, self.probe, self.loss_fn = model, probe, loss_fn
        self.iters, self.every, self.seed = iters, every, seed

    def epoch_end(self, end: EpochEnd) -> dict[str, Any]:
        due = end.done or (self.every and (end.epoch + 1) % self.every == 0)
        if not end.is_rank0 or end.diverged or not due:
            return {}
        from largebatch.instruments.sharpness import sharpness_metrics

        return sharpness_metrics(self.model, self.probe, end.lr, iters=self.iters, seed=self.seed,
                                 loss_fn=self.loss_fn)


class TrustRatioHook(Hook):
    """LARS/LAMB layer-wise trust ratios (min/median/max); other optimizers report nothing."""

    def __init__(self, opt):
        self.opt = opt

    def epoch_end(self, end: EpochEnd) -> dict[str, Any]:
        from largebatch.optim import trust_ratio_summary

        return trust_ratio_summary(self.opt) or {}


def build_hooks(cfg, res, *, model, net, opt, world: int, device, probe_feed, loss_fn, is_rank0: bool) -> list[Hook]:
    """The study's instruments, in the order their metrics are added: those with collectives first, then the
    rank-0-only ones (sharpness), so that no rank waits in a collective while rank 0 works alone."""
    ins = cfg.instruments
    hooks: list[Hook] = []
    if ins.grad_noise_scale:
        from largebatch.instruments.noise_scale import GradNoiseScale

        hooks.append(NoiseScaleHook(GradNoiseScale(net, list(model.parameters()), world, decay=ins.noise_scale_ema,
                                                   device=device,
                                                   min_accum=min(p.grad_accum_steps for p in res.phases))))
        if is_rank0 and world == 1 and all(p.grad_accum_steps == 1 for p in res.phases):
            print("[largebatch] grad_noise_scale needs two batch sizes per step: with 1 worker and no accumulation "
                  "it is left out; set data.grad_accum_steps: 2 to measure it", flush=True)
    if ins.trust_ratio:
        hooks.append(TrustRatioHook(opt))
    if ins.sharpness:  # a fixed, seeded probe batch: the same examples for every batch size of a study seed
        g = torch.Generator().manual_seed(int(cfg.seed))
        probe = probe_feed.gather(torch.randperm(len(probe_feed), generator=g)[: ins.sharpness_probe_size])
        hooks.append(SharpnessHook(model, probe, loss_fn, ins.sharpness_iters, ins.sharpness_every_epochs,
                                   int(cfg.seed)))
    return hooks
