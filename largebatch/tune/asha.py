"""ASHA over the searched trials only (tuner.scheduler: asha; tune/schedulers.py builds it).

The baseline is the reference every searched recipe is scored against, not a point of the search: Tune's ASHA would
record its value at every rung like any trial's, and a small batch takes many more steps per epoch, so at an early
rung it is ahead of every large batch by construction. With it in the rungs' records, the cutoff at each rung was
the baseline's value or near it, and every large-batch trial was stopped by epoch 4 of 10 (bench/search_efficiency,
2026-11-30: ASHA's best ended 2.7 points under the grid's). Here the baseline is trained to its budget and never
enters a rung; searched trials are compared with each other at equal epochs (equal examples seen, whatever the
batch size). A module of its own, importing Ray at the top: Tune pickles the scheduler with the experiment state,
and a class made inside a factory function would not unpickle on --resume.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from largebatch.tune.runtime import is_baseline_sample


def is_baseline(trial) -> bool:
    return is_baseline_sample(getattr(trial, "config", None))


class SearchASHA(ASHAScheduler):
    """ASHAScheduler whose rungs hold searched trials only; the baseline always continues."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_baseline(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if is_baseline(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)
