"""The trial-scheduler registry (`tuner.scheduler`): name -> factory(study) -> a Ray Tune scheduler.

Ray-free at import (a factory imports Ray when called), so `largebatch list` shows it and load_study checks the name
(config/names.py) before Ray starts.
"""
from __future__ import annotations

from largebatch.config import StudyConfig
from largebatch.registry import Registry

SCHEDULERS: Registry = Registry("scheduler")


@SCHEDULERS.register("fifo", "run every trial to its budget")
def _fifo(study: StudyConfig):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SCHEDULERS.register("asha", "stop the worse trials early at epoch milestones (tuner.grace_period_epochs, "
                             "tuner.reduction_factor); stopped trials count as stopped_early")
def _asha(study: StudyConfig):
    from ray.tune.schedulers import ASHAScheduler

    t = study.tuner
    max_t = max(int(study.base.budget.epochs), t.grace_period_epochs)
    # stop_last_trials=False: a trial reaching max_t ends by itself, so it logs its final status and fit_s
    # (with the default, Tune kills it at its last epoch and it would be recorded stopped_early)
    return ASHAScheduler(time_attr="training_iteration", grace_period=t.grace_period_epochs, max_t=max_t,
                         reduction_factor=t.reduction_factor, stop_last_trials=False)
