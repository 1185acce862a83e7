"""tune/asha.py: ASHA's rungs hold the searched trials only. The baseline (many small steps per epoch, ahead of every
large batch at an early rung) is trained to its budget and sets no cutoff."""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray.tune")
from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402

from largebatch.tune.asha import SearchASHA  # noqa: E402

KW = dict(metric="val_acc", mode="max", time_attr="training_iteration", grace_period=1, max_t=4,
          reduction_factor=2, stop_last_trials=False)


@dataclass
class Trial:
    trial_id: str
    config: dict = field(default_factory=dict)


def _run(sched, trials_and_values):
    """Each (trial, [val_acc at epoch 1, 2, ...]) in turn; returns {trial_id: epochs it was allowed}."""
    allowed = {}
    for trial, values in trials_and_values:
        sched.on_trial_add(None, trial)
        for epoch, v in enumerate(values, 1):
            action = sched.on_trial_result(None, trial, {"training_iteration": epoch, "val_acc": v})
            allowed[trial.trial_id] = epoch
            if action == TrialScheduler.STOP:
                break
        else:
            sched.on_trial_complete(None, trial, {"training_iteration": len(values), "val_acc": values[-1]})
    return allowed


BASELINE = (Trial("b", {"arm": "baseline"}), [0.84, 0.86, 0.87, 0.88])
FIRST = (Trial("s1", {"arm": "search"}), [0.70, 0.80, 0.85, 0.87])
WORSE = (Trial("s2", {"arm": "search"}), [0.50, 0.55, 0.60, 0.62])


def test_the_baseline_sets_no_cutoff():
    # plain ASHA: the baseline's 0.84 at rung 1 stops the first searched trial at once
    assert _run(ASHAScheduler(**KW), [BASELINE, FIRST])["s1"] == 1
    # ours: the first searched trial has no searched rival at any rung, so it trains to its budget
    assert _run(SearchASHA(**KW), [BASELINE, FIRST])["s1"] == 4


def test_searched_trials_still_compete():
    allowed = _run(SearchASHA(**KW), [BASELINE, FIRST, WORSE])
    assert allowed == {"b": 4, "s1": 4, "s2": 1}  # the worse one is cut at the first rung


def test_the_baseline_is_never_stopped():
    allowed = _run(SearchASHA(**KW), [FIRST, (Trial("b", {"arm": "baseline"}), [0.1, 0.1, 0.1, 0.1])])
    assert allowed["b"] == 4


def test_it_survives_tunes_pickling():
    sched = SearchASHA(**KW)
    _run(sched, [BASELINE, FIRST])
    again = pickle.loads(pickle.dumps(sched))
    assert type(again) is SearchASHA
    assert _run(again, [WORSE])["s2"] == 1  # the rung records came along
