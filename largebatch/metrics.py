"""Metric names and their directions: the one vocabulary the loop, the tuner check and the report share.

Torch-free (the config loader reads it). A task reports `train_loss` and `val_loss` always, `val_<name>` for each
of its metrics and `train_<name>` for those also measured on training micro-batches; `best_<metric>` is the best
value over epochs (in the metric's direction) and `final_<metric>` the last epoch's.
"""
from __future__ import annotations

import math
from typing import Iterable, Literal

Mode = Literal["max", "min"]
MODES: tuple[str, ...] = ("max", "min")

# reported for every task by the training loop
LOSS_METRICS: dict[str, str] = {"train_loss": "min", "val_loss": "min"}
# the loop's bookkeeping, reported every epoch whatever the task (not a quality: no direction)
LOOP_METRICS = ("epoch", "lr", "global_batch_size", "steps", "examples_seen", "wall_s", "epoch_s", "throughput")
# instruments, when switched on (largebatch/instruments)
INSTRUMENT_METRICS = ("grad_noise_scale", "sharpness", "sharpness_x_lr_over_2", "trust_ratio_median")
# per-trial instrument and target figures the report averages per recipe (records carry their last values)
TRIAL_FIGURES = ("grad_noise_scale", "sharpness", "sharpness_x_lr_over_2", "steps_to_target", "examples_to_target",
                 "time_to_target_s")
# the report's summary of a trial: best over epochs, or the last epoch's value
SUMMARIES = ("best", "final")


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
