"""The vocabulary every layer shares: trial statuses and metric names (with their direction and where each is logged).

Pure Python, no imports beyond the standard library: the config loader, the loop, tracking and the report all read it.
A status or metric list is defined here once; tests/unit/test_structure.py fails on a second list of status strings.

Metric names, by where they are logged (per epoch by the training loop, train/loop.py, into Ray Train/Tune results
and MLflow metrics; tracking/ logs a trial's summaries; report/ reads the summaries back from MLflow):

| names                                   | direction      | logged                                        |
|-----------------------------------------|----------------|-----------------------------------------------|
| train_loss, val_loss (LOSS_METRICS)      | min            | every epoch, every task (the loop)            |
| val_<m>, train_<m> (a task's metrics)    | the task's     | every epoch (the loop); see metrics.py         |
| best_<metric>, final_<metric> (SUMMARIES)| the metric's   | once per trial (loop's final result; tracking) |
| LOOP_METRICS                             | none           | every epoch (the loop's bookkeeping)          |
| INSTRUMENT_METRICS                       | none           | per epoch when switched on (instruments/)     |
| TRIAL_FIGURES                            | none           | per trial (tracking); averaged by the report  |
"""
from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A trial's status: the `status` in its results and its MLflow status tag (tracking.STATUS_TAG)."""

    COMPLETED = "completed"  # ran its budget (stopping at target_val_acc is STOPPED_EARLY, train/loop.py)
    DIVERGED = "diverged"  # non-finite loss or above budget.divergence_loss; a result, not an error
    STOPPED_EARLY = "stopped_early"  # ended by the scheduler (ASHA) or at its target: what it reached counts
    FAILED = "failed"  # an exception or a worker lost past tuner.max_failures
    RUNNING = "running"  # not ended (yet): a study cut short


# Plain-string tuples (not enum members), so what is logged, compared and dumped to JSON is unchanged.
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)  # every status, in the report's count order
# a trial's status tag once it has ended
FINAL_STATUSES: tuple[str, ...] = (Status.COMPLETED.value, Status.DIVERGED.value, Status.FAILED.value,
                                   Status.STOPPED_EARLY.value)
# statuses whose metric is a result; stopped_early (e.g. ASHA) counts: it is what the trial reached
SCORED_STATUSES: tuple[str, ...] = (Status.COMPLETED.value, Status.STOPPED_EARLY.value)
# statuses whose reason is shown beside the trial (console, report failures, run description)
PROBLEM_STATUSES: tuple[str, ...] = (Status.DIVERGED.value, Status.FAILED.value)
# the trial ran to an outcome (`largebatch train` exits 0): diverging is a finding, not an error
OUTCOME_STATUSES: tuple[str, ...] = (Status.COMPLETED.value, Status.DIVERGED.value, Status.STOPPED_EARLY.value)
# a recipe none of whose trials scored takes the first of these its trials have (the report)
UNSCORED_PRECEDENCE: tuple[str, ...] = (Status.DIVERGED.value, Status.FAILED.value, Status.RUNNING.value,
                                        Status.STOPPED_EARLY.value, Status.COMPLETED.value)

# ---------------------------------------------------------------- metric names
MODES: tuple[str, ...] = ("max", "min")  # a quality metric's direction
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
