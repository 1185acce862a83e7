"""The critical batch from steps-to-target (pure; the report's sections that use it are in report/sections.py).

McCandlish et al. 2018 (arXiv 1812.06162, eq. 2.11): the steps S and examples E = B·S needed to reach a target obey
(S/S_min − 1)(E/E_min − 1) = 1, i.e. S(B) = S_min + E_min/B, with the critical batch B_crit = E_min/S_min, which
B_simple (the measured gradient noise scale) approximates. Shallue et al. 2018 (arXiv 1811.03600) name the three
regions of the steps-vs-batch curve; on the fitted curve we draw them where
- perfect scaling: steps within 90% of the linear speed-up, E_min/B ÷ S(B) >= 0.9  <=>  B <= B_crit/9;
- maximal data parallelism: steps within 10% of S_min  <=>  B >= 10·B_crit;
- diminishing returns in between.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

PERFECT_SCALING_DIV = 9.0  # B <= B_crit/9: at least 90% of the linear speed-up
MAX_PARALLELISM_MUL = 10.0  # B >= 10·B_crit: within 10% of S_min


def fit_critical_batch(batches: list[float], steps: list[float]) -> Optional[dict[str, float]]:
    """Fit S(B) = S_min + E_min/B to (batch, steps-to-target) points, least squares in RELATIVE error (each point
    counts alike, B=16 or B=4096). None with fewer than 2 batch sizes or a non-physical fit (S_min or E_min <= 0)."""
    pts = [(float(b), float(s)) for b, s in zip(batches, steps) if b > 0 and s > 0]
    if len({b for b, _ in pts}) < 2:
        return None
    # residual (S - a - c/B)/S: rows [1/S, 1/(B S)] · [a, c] ≈ 1
    a_mat = np.array([[1.0 / s, 1.0 / (b * s)] for b, s in pts])
    (s_min, e_min), *_ = np.linalg.lstsq(a_mat, np.ones(len(pts)), rcond=None)
    if not (s_min > 0 and e_min > 0):
        return None
    b_crit = e_min / s_min
    return {"S_min": float(s_min), "E_min": float(e_min), "B_crit": float(b_crit),
            "perfect_scaling_below": b_crit / PERFECT_SCALING_DIV,
            "max_parallelism_above": b_crit * MAX_PARALLELISM_MUL}
