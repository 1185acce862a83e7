"""Stop at the target (`budget.stop_at_target: true`): a searched trial ends at the first epoch whose metric reaches
the baseline's quality minus the tolerance (or budget.target_val_acc), so a study whose large batches get a long
budget (a cap: base `budget.epochs` larger than the baseline's) pays only for the examples each one needs.

The target is learnt during the study: a Ray Tune Stopper (run by the driver on every trial result) watches the
baseline trials and sets it when every seed of the baseline has ended (the mean of their best values, moved by the
tolerance as report/target.py does, so the report and the stopper aim at the same value). Trials whose results
arrive before then run on; the report reads every trial's steps to target from its per-epoch curve anyway, so what
the stopper changes is compute, never the figures. The baseline itself is never stopped. With budget.target_val_acc
set the loop stops its own trial (train/loop.py); this stopper applies the same value to every trial.

An extension (`--extend`) runs no baseline: its target comes from the baseline trials the study already finished.
A resumed study (`--resume`) gets the stopper Tune pickled when the study started, which learns the target only if
its baseline is still to finish.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional

from largebatch.metrics import SUMMARIES, summary_name
from largebatch.report.target import meets, target_value
from largebatch.tune.runtime import is_baseline_sample


def per_epoch_metric(metric: str) -> str:
    """best_val_acc -> val_acc; val_acc stays."""
    head, _, rest = metric.partition("_")
    return rest if head in SUMMARIES and rest else metric


def _stopper_base():
    from ray.tune import Stopper

    return Stopper


class TargetStopper(_stopper_base()):
    def __init__(self, metric: str, mode: str, tolerance: float, units: str, n_baseline: int,
                 explicit: Optional[float] = None):
        self.key, self.summary = per_epoch_metric(metric), summary_name(metric)
        self.mode, self.tolerance, self.units = mode, tolerance, units
        self.n_baseline = n_baseline
        self.target: Optional[float] = explicit
        self.baseline: dict[str, float] = {}  # baseline trial id -> its best value, once it has ended
        self.stopped: dict[str, str] = {}  # trial id -> why it was stopped (the MLflow run's reason)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.key)
        if is_baseline_sample(result.get("config")):
            best = result.get(self.summary)
            if result.get("is_final") and isinstance(best, (int, float)) and best == best:
                self.baseline[trial_id] = float(best)
                if self.target is None and len(self.baseline) >= self.n_baseline:
                    self.target = target_value(statistics.fmean(self.baseline.values()), self.tolerance, self.mode,
                                               self.units)
                    print(f"[largebatch] target set by the baseline: {self.key} "
                          f"{'>=' if self.mode == 'max' else '<='} {self.target:.4g}; searched trials stop when "
                          f"they reach it", flush=True)
            return False
        if self.target is None or not isinstance(value, (int, float)) or result.get("is_final"):
            return False
        if meets(float(value), self.target, self.mode):
            self.stopped[trial_id] = (f"reached the target {self.key} {value:.4g} (target {self.target:.4g}) at step "
                                      f"{result.get('steps', '?')}")
            return True
        return False

    def stop_all(self) -> bool:
        return False

    def learn_from_records(self, records: list[dict[str, Any]]) -> None:
        """An extension (tune/extend.py) runs no baseline: the target comes from the baseline trials the study
        already finished (records.py records), when every seed of them has a result."""
        if self.target is not None:
            return
        best = [float(r[self.summary]) for r in records if r.get("is_baseline") and r.get("status") == "completed"
                and isinstance(r.get(self.summary), (int, float)) and r[self.summary] == r[self.summary]]
        if best and len(best) >= self.n_baseline:
            self.target = target_value(statistics.fmean(best), self.tolerance, self.mode, self.units)


def create_stopper(study) -> Optional[TargetStopper]:
    """The study's stopper, or None when budget.stop_at_target is off or the study has no baseline."""
    from largebatch.report.target import explicit_target

    budget, t = study.base.budget, study.tuner
    if not budget.stop_at_target or study.baseline is None:
        return None
    # load_study filled in tuner.mode and report.tolerance_units from the metric's direction (config/study.py)
    return TargetStopper(t.metric, t.mode, study.report.tolerance, study.report.tolerance_units,
                         n_baseline=len(t.seeds), explicit=explicit_target(t.metric, budget.target_val_acc))
