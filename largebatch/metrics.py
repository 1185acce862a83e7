"""Metric names and their directions: the helpers over the vocabulary (the names are in vocab.py).

Torch-free (the config loader reads it). A task reports `train_loss` and `val_loss` always, `val_<name>` for each
of its metrics and `train_<name>` for those also measured on training micro-batches; `best_<metric>` is the best
value over epochs (in the metric's direction) and `final_<metric>` the last epoch's.
"""
from __future__ import annotations

import math
from typing import Iterable

# the names themselves live in vocab.py (one vocabulary); re-exported here for the modules that import them from here
from largebatch.vocab import (  # noqa: F401
    INSTRUMENT_METRICS, LOOP_METRICS, LOSS_METRICS, MODES, SUMMARIES, TRIAL_FIGURES,
)


def reported_metrics(metrics: Iterable[tuple[str, str, bool]]) -> dict[str, str]:
    """{logged name: direction} of the quality metrics a task reports, from its (name, mode, train) triples."""
    out = dict(LOSS_METRICS)
    for name, mode, train in metrics:
        out[f"val_{name}"] = mode
        if train:
            out[f"train_{name}"] = mode
    return out


def summary_name(metric: str, summary: str = "best") -> str:
    """`val_acc` -> `best_val_acc`; a name that already is a summary stays as it is."""
    return metric if metric.split("_", 1)[0] in SUMMARIES else f"{summary}_{metric}"


def better(a: float, b: float, mode: str) -> bool:
    """a strictly better than b in direction `mode` (NaN is never better)."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if mode == "max" else a < b


def best_of(values: Iterable[float], mode: str) -> float:
    """The best finite value (NaN when there is none)."""
    best = float("nan")
    for v in values:
        if better(v, best, mode):
            best = v
    return best
