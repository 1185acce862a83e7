"""tune/sha.py: synchronous successive halving. A rung is decided once, on every searched trial; trials that reach
it first pause there; the decision does not depend on the order the trials come in; a paused trial gives back its
place in the ConcurrencyLimiter (or the trials the rung waits for would never be handed out)."""
from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray.tune")
from ray import cloudpickle  # noqa: E402  (Tune writes tuner.pkl with it)
from ray.tune.experiment import Trial as TuneTrial  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter, Searcher  # noqa: E402

from largebatch.tune.sha import HeldSearch, SearchSHA, keep_count, rung_epochs  # noqa: E402


@dataclass(eq=False)
class Trial:
    trial_id: str
    config: dict = field(default_factory=dict)
    status: str = TuneTrial.PENDING


class Limiter:
    def __init__(self):
        self.live_trials: set = set()


class SearchAlg:
    def __init__(self, total: int):
        self.total, self.created = total, 0
        self.searcher = Limiter()

    def is_finished(self) -> bool:
        return self.created >= self.total


class Controller:
    """What Tune's wrapped controller shows a scheduler: get_trials, search_alg, stop_trial."""

    def __init__(self, total: int):
        self.trials: list[Trial] = []
        self.search_alg = SearchAlg(total)
        self.stopped: list[str] = []

    def add(self, sched, trial: Trial) -> Trial:
        self.trials.append(trial)
        self.search_alg.created += 1
        self.search_alg.searcher.live_trials.add(trial.trial_id)
        sched.on_trial_add(self, trial)
        return trial

    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial):
        trial.status = TuneTrial.TERMINATED
        self.stopped.append(trial.trial_id)


def _drive(curves: dict[str, list[float]], order: list[str], rungs=(1, 3), eta=2.0, baseline=None):
    """Run trials one at a time in `order` as Tune would with one slot: a paused trial is resumed when the scheduler
    picks it. Returns ({trial: epochs trained}, controller, scheduler)."""
    sched = SearchSHA(list(rungs), eta, metric="val_acc", mode="max")
    names = list(order) + ([baseline] if baseline else [])
    ctl = Controller(total=len(names))
    trained = {n: 0 for n in names}
    queue = list(names)
    for _ in range(1000):
        trial = None
        chosen = sched.choose_trial_to_run(ctl)
        if chosen is not None and chosen.status == TuneTrial.PAUSED:
            trial = chosen
        elif queue:
            n = queue.pop(0)
            trial = ctl.add(sched, Trial(n, {"arm": "baseline" if n == baseline else "search"}))
        if trial is None:
            break
        trial.status = TuneTrial.RUNNING
        curve = curves[trial.trial_id]
        while True:
            epoch = trained[trial.trial_id] + 1
            trained[trial.trial_id] = epoch
            action = sched.on_trial_result(ctl, trial, {"training_iteration": epoch, "val_acc": curve[epoch - 1]})
            if epoch == len(curve) or action == TrialScheduler.STOP:
                trial.status = TuneTrial.TERMINATED
                sched.on_trial_complete(ctl, trial, {})
                break
            if action == TrialScheduler.PAUSE:
                trial.status = TuneTrial.PAUSED
                break
    return trained, ctl, sched


CURVES = {"a": [0.70, 0.80, 0.85, 0.90], "b": [0.50, 0.55, 0.60, 0.62], "c": [0.65, 0.75, 0.80, 0.82],
          "d": [0.40, 0.50, 0.55, 0.60]}


def test_rungs_and_keep_counts():
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(2, 3, 10) == [2, 6]
    assert rung_epochs(2, 2, 4) == [2]
    assert rung_epochs(4, 3, 4) == []  # the first rung is the end: nothing to decide
    assert rung_epochs(1, 1.5, 4) == [1, 2, 3]  # ceil, without repeats
    assert [keep_count(n, 3) for n in (1, 2, 3, 5, 6, 14)] == [1, 1, 1, 1, 2, 4]


@pytest.mark.parametrize("order", list(itertools.permutations("abcd")))
def test_the_same_trials_go_on_whatever_the_order(order):
    trained, _, _ = _drive(CURVES, list(order))
    # rung 1: best 2 of 4 (a 0.70, c 0.65) go on; rung 3: best 1 of 2 (a) trains to the end
    assert trained == {"a": 4, "c": 3, "b": 1, "d": 1}


def test_a_trial_waits_at_the_rung_and_the_baseline_never_does():
    sched = SearchSHA([1, 3], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=3)
    base = ctl.add(sched, Trial("base", {"arm": "baseline"}))
    a = ctl.add(sched, Trial("a", {"arm": "search"}))
    base.status = a.status = TuneTrial.RUNNING
    assert sched.on_trial_result(ctl, base, {"training_iteration": 1, "val_acc": 0.99}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, a, {"training_iteration": 1, "val_acc": 0.7}) == TrialScheduler.PAUSE
    assert "a" not in ctl.search_alg.searcher.live_trials  # its slot is free for the trial the rung waits for
    a.status = TuneTrial.PAUSED
    b = ctl.add(sched, Trial("b", {"arm": "search"}))
    b.status = TuneTrial.RUNNING
    # cut, but paused rather than stopped: its process stays up until `a` is queued to take it over
    assert sched.on_trial_result(ctl, b, {"training_iteration": 1, "val_acc": 0.5}) == TrialScheduler.PAUSE
    b.status = TuneTrial.PAUSED
    assert sched.choose_trial_to_run(ctl) is a  # promoted, resumed from its rung checkpoint
    assert ctl.stopped == ["b"] and b.status == TuneTrial.TERMINATED  # and then `b` is stopped
    assert "a" in ctl.search_alg.searcher.live_trials
    assert sched.promoted[1] == ["a"] and 0.99 not in sched.records[1].values()


def test_a_trial_that_ends_before_the_rung_does_not_hold_it_up():
    sched = SearchSHA([2], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=3)
    a, b, c = (ctl.add(sched, Trial(n, {"arm": "search"})) for n in "abc")
    assert sched.on_trial_result(ctl, a, {"training_iteration": 2, "val_acc": 0.6}) == TrialScheduler.PAUSE
    a.status = TuneTrial.PAUSED
    assert sched.on_trial_result(ctl, b, {"training_iteration": 2, "val_acc": 0.8}) == TrialScheduler.PAUSE
    b.status = TuneTrial.PAUSED
    c.status = TuneTrial.TERMINATED  # diverged at epoch 1
    sched.on_trial_complete(ctl, c, {"training_iteration": 1, "val_acc": float("nan")})
    assert sched.promoted[2] == ["b"] and ctl.stopped == ["a"]
    assert sched.choose_trial_to_run(ctl) is b


def test_a_trial_ending_at_the_rung_is_not_counted_there():
    sched = SearchSHA([2], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=3)
    a, b, c = (ctl.add(sched, Trial(n, {"arm": "search"})) for n in "abc")
    # c diverged in epoch 2: its final report must not make the rung 3 trials wide (keeping 1 of 3, not 2 of 4)
    assert sched.on_trial_result(ctl, c, {"training_iteration": 2, "val_acc": 0.1, "is_final": True}) == \
        TrialScheduler.CONTINUE
    c.status = TuneTrial.TERMINATED
    sched.on_trial_complete(ctl, c, {})
    assert sched.on_trial_result(ctl, a, {"training_iteration": 2, "val_acc": 0.6}) == TrialScheduler.PAUSE
    a.status = TuneTrial.PAUSED
    assert sched.on_trial_result(ctl, b, {"training_iteration": 2, "val_acc": 0.8}) == TrialScheduler.CONTINUE
    assert sched.records[2] == {"a": 0.6, "b": 0.8} and sched.promoted[2] == ["b"]


def test_no_decision_while_trials_are_still_to_come():
    sched = SearchSHA([1], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=3)  # 3 trials in the space, 2 created
    a, b = (ctl.add(sched, Trial(n, {"arm": "search"})) for n in "ab")
    assert sched.on_trial_result(ctl, a, {"training_iteration": 1, "val_acc": 0.6}) == TrialScheduler.PAUSE
    assert sched.on_trial_result(ctl, b, {"training_iteration": 1, "val_acc": 0.7}) == TrialScheduler.PAUSE
    assert 1 not in sched.promoted


def test_min_mode_nan_is_worst_and_the_state_pickles():
    sched = SearchSHA([1], 2.0, metric="val_loss", mode="min")
    ctl = Controller(total=2)
    a, b = (ctl.add(sched, Trial(n, {"arm": "search"})) for n in "ab")
    assert sched.on_trial_result(ctl, a, {"training_iteration": 1, "val_loss": float("nan")}) == TrialScheduler.PAUSE
    a.status = TuneTrial.PAUSED
    assert sched.on_trial_result(ctl, b, {"training_iteration": 1, "val_loss": 2.0}) == TrialScheduler.CONTINUE
    assert ctl.stopped == ["a"]
    again = pickle.loads(pickle.dumps(sched))  # Tune saves it with the experiment state (--resume)
    assert again.promoted == {1: ["b"]} and again.rungs == [1]


def test_a_rung_is_decided_once_the_search_knows_it_is_over():
    # Tune learns that the search is over on its next ask after the last trial, which may come after that trial
    # paused at the rung: the decision then comes from choose_trial_to_run (else every trial would wait forever)
    sched = SearchSHA([1], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=3)
    a, b = (ctl.add(sched, Trial(n, {"arm": "search"})) for n in "ab")
    a.status = b.status = TuneTrial.RUNNING
    assert sched.on_trial_result(ctl, a, {"training_iteration": 1, "val_acc": 0.6}) == TrialScheduler.PAUSE
    assert sched.on_trial_result(ctl, b, {"training_iteration": 1, "val_acc": 0.7}) == TrialScheduler.PAUSE
    b.status = TuneTrial.PAUSED  # a's rung checkpoint is still being saved: it is RUNNING for Tune
    assert sched.choose_trial_to_run(ctl) is None and sched.holding()
    ctl.search_alg.total = 2  # the third trial never comes
    assert sched.choose_trial_to_run(ctl) is b and sched.promoted[1] == ["b"]
    assert ctl.stopped == []  # not stopped mid-pause ...
    a.status = TuneTrial.PAUSED
    sched.choose_trial_to_run(ctl)
    assert ctl.stopped == ["a"]  # ... but once paused


class FinishedSearcher(Searcher):
    def suggest(self, trial_id):
        return Searcher.FINISHED


def test_the_search_stays_open_while_trials_wait_between_rungs():
    """Tune keeps an ended trial's process for the next trial only while the search is open (is_finished false)."""
    held = HeldSearch(ConcurrencyLimiter(FinishedSearcher(), max_concurrent=2))
    assert held.create_trial_if_possible({}) is None and held.is_finished() and held.all_created()
    sched = SearchSHA([1], 2.0, metric="val_acc", mode="max")
    ctl = Controller(total=2)
    ctl.search_alg = held
    a, b = Trial("a", {"arm": "search"}, TuneTrial.RUNNING), Trial("b", {"arm": "search"}, TuneTrial.RUNNING)
    ctl.trials = [a, b]
    assert sched.on_trial_result(ctl, a, {"training_iteration": 1, "val_acc": 0.8}) == TrialScheduler.PAUSE
    assert not held.is_finished() and held.all_created()  # a waits at the rung: its process is kept
    a.status = TuneTrial.PAUSED
    assert sched.on_trial_result(ctl, b, {"training_iteration": 1, "val_acc": 0.5}) == TrialScheduler.PAUSE
    assert not held.is_finished()  # a is promoted, b hands its process over
    b.status = TuneTrial.PAUSED
    assert sched.choose_trial_to_run(ctl) is a and ctl.stopped == ["b"]
    assert not held.is_finished()
    a.status = TuneTrial.RUNNING
    assert sched.on_trial_result(ctl, a, {"training_iteration": 2, "val_acc": 0.85}) == TrialScheduler.CONTINUE
    assert held.is_finished() and not sched.holding()  # nothing waits: Tune may end processes again
    again = cloudpickle.loads(cloudpickle.dumps(held))  # tuner.pkl: a copy holds nothing until a scheduler links it
    assert again.held_by is None and again.is_finished()
