"""The trial-scheduler registry (`tuner.scheduler`): name -> factory(study) -> a Ray Tune scheduler.

Ray-free at import (a factory imports Ray when called), so `largebatch list` shows it and load_study checks the name
(config/names.py) before Ray starts.
"""
from __future__ import annotations

from largebatch.config import StudyConfig
from largebatch import choices

# the names and descriptions are listed in choices.py (below config/), which imports these factories lazily
SCHEDULERS = choices.SCHEDULERS


def fifo_scheduler(study: StudyConfig):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def asha_scheduler(study: StudyConfig):
    from largebatch.tune.asha import SearchASHA

    grace, max_t = _rung_range(study)
    # stop_last_trials=False: a trial reaching max_t ends by itself, so it logs its final status and fit_s
    # (with the default, Tune kills it at its last epoch and it would be recorded stopped_early)
    # one report per epoch: a rung is a number of passes over the data, the same examples for every batch size
    # the baseline stays out of the rungs (tune/asha.py): searched trials are compared with each other only
    return SearchASHA(time_attr="training_iteration", grace_period=grace, max_t=max_t,
                      reduction_factor=study.tuner.reduction_factor, stop_last_trials=False)


def sha_scheduler(study: StudyConfig):
    from largebatch.tune.sha import SearchSHA, rung_epochs

    grace, max_t = _rung_range(study)
    return SearchSHA(rung_epochs(grace, study.tuner.reduction_factor, max_t), study.tuner.reduction_factor)


def _rung_range(study: StudyConfig) -> tuple[int, int]:
    """(first rung, budget) in epochs, for asha and sha alike."""
    grace = asha_grace_epochs(study)
    return grace, max(int(study.base.budget.epochs), grace)


def asha_grace_epochs(study: StudyConfig) -> int:
    """ASHA's first rung, in epochs: tuner.grace_period_epochs, raised so that it never falls inside a trial's
    warmup. A large batch still warming up is behind by construction; cut there, the search would be biased against
    exactly the recipes it is meant to find."""
    import math

    warmups = [study.base.schedule.warmup_epochs, float((study.baseline or {}).get("schedule.warmup_epochs") or 0)]
    domain = study.search.get("schedule.warmup_epochs")
    if domain:  # grid/choice: the values; uniform/loguniform: [low, high]
        warmups += [float(v) for v in next(iter(domain.values())) if isinstance(v, (int, float))]
    return max(study.tuner.grace_period_epochs, math.ceil(max(warmups)))
