"""Large-batch instruments: why a batch size works or not, measured during training (Composer style: each is a
pure function usable without largebatch, plus a thin hook in train/loop.py that says when it runs).

| config (`base.instruments.`)  | metric(s), per epoch                          | module                         |
|-------------------------------|-----------------------------------------------|--------------------------------|
| grad_noise_scale: true        | grad_noise_scale (B_simple)                   | noise_scale.py (arXiv 1812.06162) |
| sharpness: true               | sharpness, sharpness_x_lr_over_2 (at the end, | sharpness.py (arXiv 1609.04836) |
|   sharpness_every_epochs: K   |   and every K epochs)                         |                                |
| trust_ratio: true (default)   | trust_ratio_min/median/max (LARS/LAMB only)   | largebatch.optim.trust_ratio_summary |
The critical-batch fit is in critical_batch.py (pure); the report's "Critical batch" and "Why" sections that use it
are in largebatch/report/sections.py.

Submodules import torch/numpy; this package imports nothing eagerly, so the report can use critical_batch.py
without loading torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GradNoiseScale": "noise_scale", "NoiseScaleEMA": "noise_scale", "noise_estimates": "noise_scale",
    "grad_sq_norm": "noise_scale", "top_hessian_eigenvalue": "sharpness", "sharpness_metrics": "sharpness",
    "probe_batch": "sharpness", "fit_critical_batch": "critical_batch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'largebatch.instruments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"largebatch.instruments.{_EXPORTS[name]}"), name)
