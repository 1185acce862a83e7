"""`search: {data.global_batch_size: {around_critical: [0.25, 1, 4]}}`: a batch grid placed by the gradient noise
scale (docs/design.md §11). Pure: the factors' checks and the rounding; the probe that measures B_noise is
largebatch/probe.py, the placement before the search tune/critical.py.

A factor f asks for the batch f·B_noise, rounded to a batch every trial can run: the nearest power of two (in log
scale) when the granularity (workers × explicit accumulation) is one, else the nearest multiple of the granularity;
never below the granularity, never above the training set (the largest such batch that fits).
"""
from __future__ import annotations

import math
from typing import Any

from largebatch.errors import BadInput

AROUND_CRITICAL = "around_critical"
AROUND_KEY = "data.global_batch_size"  # the only search key it may place
MAX_FACTORS = 16
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # what `largebatch probe` shows when the study names none


def check_factors(key: str, values: Any, source: str = "<study>", field: str = "search") -> list[float]:
    """around_critical's factors: on data.global_batch_size only; 1 to MAX_FACTORS positive finite numbers."""
    example = "{around_critical: [0.25, 1, 4]}"
    if key != AROUND_KEY:
        raise BadInput(f"around_critical places batch sizes only; got it on {key!r}; move it to search."
                       f"{AROUND_KEY} or use {{grid: [..]}} here", source=source, field=field)
    if not isinstance(values, list) or not values:
        raise BadInput(f"around_critical needs a non-empty list of factors of B_noise, got {values!r}; e.g. "
                       f"{example}", source=source, field=field)
    if len(values) > MAX_FACTORS:
        raise BadInput(f"around_critical takes at most {MAX_FACTORS} factors, got {len(values)}; drop some",
                       source=source, field=field)
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok:
            raise BadInput(f"around_critical factor {v!r} is not a positive finite number; use factors of B_noise "
                           f"such as {example}", source=source, field=field)
    return [float(v) for v in values]


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def round_batch(x: float, granularity: int = 1, upper: int | None = None) -> int:
    """A batch near x that every trial can run: a power of two (granularity a power of two) or a multiple of the
    granularity, >= granularity, <= upper (the largest such batch <= upper)."""
    g = max(1, int(granularity))
    pow2 = is_power_of_two(g)

    def snap(v: float) -> int:
        if pow2:
            return 2 ** round(math.log2(max(v, 1.0)))
        return max(1, round(v / g)) * g

    def floor(v: int) -> int:
        return 2 ** int(math.log2(v)) if pow2 else (v // g) * g

    b = max(snap(x), g)
    if upper is not None and b > upper:
        b = floor(upper)
        if b < g:
            raise BadInput(f"no batch fits: the granularity {g} (workers x accumulation) exceeds the {upper} "
                           f"training examples", field=AROUND_KEY)
    return int(b)


def critical_grid(b_noise: float, factors: list[float], granularity: int = 1,
                  upper: int | None = None) -> list[int]:
    """The batches f·b_noise rounded (round_batch), in the factors' order, duplicates dropped."""
    if not (math.isfinite(b_noise) and b_noise > 0):
        raise BadInput(f"the measured B_noise is {b_noise!r}, not a positive number: the probe did not resolve the "
                       f"gradient noise; probe longer (largebatch probe --epochs) or use {{grid: [..]}}",
                       field=AROUND_KEY)
    out: list[int] = []
    for f in factors:
        b = round_batch(f * b_noise, granularity, upper)
        if b not in out:
            out.append(b)
    return out


def around_factors(search: dict[str, Any]) -> list[float] | None:
    """The factors of the study's around_critical entry, None when it has none (already checked at load)."""
    entry = search.get(AROUND_KEY)
    if isinstance(entry, dict) and AROUND_CRITICAL in entry:
        return [float(v) for v in entry[AROUND_CRITICAL]]
    return None
