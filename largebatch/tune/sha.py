"""Synchronous successive halving over the searched trials (tuner.scheduler: sha; tune/schedulers.py builds it).

ASHA (tune/asha.py) decides at each rung from the trials that happen to have reached it: the first trials meet
empty rungs and train to the end whatever their quality, so what it costs depends on the order of the space
(bench/search_efficiency, 2026-11-30: the six B=256 trials came first and three of them trained all 10 epochs;
ASHA cost 0.485 of the grid). Here a rung is decided once, on every searched trial: a trial that reaches it
pauses there (Tune keeps the checkpoint it reported with that epoch) until every other searched trial has
reached it or ended (diverged, failed) before it; then the best max(1, floor(n / eta)) go on from their rung
checkpoint and the rest are stopped (stopped_early). Every comparison is between trials that have seen the same
examples, whatever their batch size, and the result does not depend on the trial order.

Rungs are at grace, grace*eta, ... epochs below the budget (the grace period raised past any searched warmup, as
for ASHA); the driver makes every trial save a checkpoint at those epochs (checkpoint.at_epochs), so a paused
trial resumes where it stopped. The baseline never enters a rung and trains to its budget.

A paused trial gives back its slot: the study's ConcurrencyLimiter (the searcher Tune passes us as `search_alg`)
would otherwise count it as running and never hand out the trials the rung is waiting for.
A paused trial's process is kept for the trial that resumes next (HeldSearch): Tune keeps a finished trial's
process only while its search is open, so once every trial has been created, each pause would end a process and
each promoted trial would start a new one (imports and data: 3-4 s here).
A module of its own, importing Ray at the top: Tune pickles the scheduler into the run folder's tuner.pkl when
the study starts, and --resume unpickles it there (in that initial state: Tune saves no scheduler state later).
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import SearchGenerator

from largebatch.tune.asha import is_baseline


def rung_epochs(grace: int, eta: float, max_t: int) -> list[int]:
    """The rung milestones in epochs: grace, grace*eta, ... strictly below the budget (the last epoch is the end)."""
    out: list[int] = []
    r = float(grace)
    while math.ceil(r) < max_t:
        if not out or math.ceil(r) > out[-1]:
            out.append(math.ceil(r))
        r *= eta
    return out


def keep_count(n: int, eta: float) -> int:
    """How many of n trials at a rung go on: the best 1/eta, at least one."""
    return max(1, int(math.floor(n / eta + 1e-9)))


class HeldSearch(SearchGenerator):
    """Tune's SearchGenerator (around the study's ConcurrencyLimiter) whose search stays open while a scheduler holds
    trials between rungs (paused, waiting for a decision or to resume).

    Tune's controller keeps the process of a trial that pauses or ends (reuse_actors) only while the search may
    still create trials (`is_finished()` false), so the next trial takes it over. While a rung is being decided,
    a trial will need it: the promoted ones resume. Holding the search open keeps one such process (Tune keeps at
    most one spare when nothing is queued). `all_created()` is the searcher's own answer, which the rung decision
    needs. The scheduler links itself on each event (`held_by`), so a copy unpickled for --resume holds nothing.
    """

    held_by: Optional["SearchSHA"] = None

    def all_created(self) -> bool:
        return super().is_finished()

    def is_finished(self) -> bool:
        return super().is_finished() and not (self.held_by is not None and self.held_by.holding())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "held_by": None}


class SearchSHA(FIFOScheduler):
    """Successive halving decided per rung on all searched trials; paused trials wait for the decision."""

    def __init__(self, rungs: list[int], reduction_factor: float, metric: Optional[str] = None,
                 mode: Optional[str] = None):
        super().__init__()
        self.rungs = sorted(int(r) for r in rungs)
        self.eta = float(reduction_factor)
        self._metric, self._mode = metric, mode
        self.records: dict[int, dict[str, float]] = {r: {} for r in self.rungs}  # rung -> trial id -> score
        self.promoted: dict[int, list[str]] = {}  # decided rungs -> the trial ids that go on
        self.waiting: dict[str, int] = {}  # trial id -> the rung it is paused at, undecided
        self.to_unpause: set[str] = set()
        self.ended: set[str] = set()  # trials that ended, or that we stopped
        self.stop_when_paused: set[str] = set()  # cut at a rung, paused to hand their process over

    def holding(self) -> bool:
        """Trials paused at an undecided rung, promoted and not yet resumed, or cut and not yet stopped."""
        return bool(self.waiting or self.to_unpause or self.stop_when_paused)

    def _link(self, tune_controller) -> None:
        search_alg = getattr(tune_controller, "search_alg", None)
        if isinstance(search_alg, HeldSearch):
            search_alg.held_by = self

    # ---- Tune's scheduler interface
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        if metric and not self._metric:
            self._metric = metric
        if mode and not self._mode:
            self._mode = mode
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._link(tune_controller)
        if is_baseline(trial):
            return TrialScheduler.CONTINUE
        self.to_unpause.discard(trial.trial_id)
        t = result.get("training_iteration")
        if t is None or result.get("is_final"):
            # its last report (a divergence, the target reached): it ends here and takes no place at the rung
            return TrialScheduler.CONTINUE
        reached = [r for r in self.rungs if r <= t]
        for r in reached:
            self.records[r].setdefault(trial.trial_id, self._score(result))
        if not reached:
            return TrialScheduler.CONTINUE
        rung = reached[-1]
        if rung not in self.promoted and not self._decide(tune_controller, rung, current=trial.trial_id):
            self.waiting[trial.trial_id] = rung
            self._slot(tune_controller, trial.trial_id, release=True)
            return TrialScheduler.PAUSE
        if trial.trial_id in self.promoted[rung]:
            return TrialScheduler.CONTINUE
        self.ended.add(trial.trial_id)
        if self.to_unpause:
            # Paused, not stopped: Tune would end its process at once (no new trial is queued once the search is
            # over), and the trial resuming next would pay a new process (imports, data: seconds). Paused, the
            # process stays up while Tune saves, the resuming trial is queued meanwhile and takes it over; the
            # trial is then stopped from its paused state (choose_trial_to_run).
            self.stop_when_paused.add(trial.trial_id)
            return TrialScheduler.PAUSE
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._link(tune_controller)
        self.ended.add(trial.trial_id)
        self.waiting.pop(trial.trial_id, None)
        self.to_unpause.discard(trial.trial_id)
        self.stop_when_paused.discard(trial.trial_id)
        for r in self.rungs:  # its end may be what a rung was waiting for
            if r not in self.promoted:
                self._decide(tune_controller, r, current=None)

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        self._link(tune_controller)
        trials = tune_controller.get_trials()
        for r in sorted(set(self.waiting.values())):  # the search may have learnt it is over after the last arrival
            self._decide(tune_controller, r, current=None)
        for tid in self.waiting:  # idempotent: a slot the limiter took back (its own restored state) is freed again
            self._slot(tune_controller, tid, release=True)
        for trial in trials:
            if trial.trial_id in self.stop_when_paused and trial.status in (Trial.PAUSED, Trial.TERMINATED,
                                                                             Trial.ERROR):
                self.stop_when_paused.discard(trial.trial_id)
                if trial.status == Trial.PAUSED:
                    tune_controller.stop_trial(trial)
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.to_unpause:
                return trial
        return None

    def debug_string(self) -> str:
        decided = ", ".join(f"epoch {r}: {len(self.promoted[r])} of {len(self.records[r])} go on"
                            for r in self.rungs if r in self.promoted)
        return f"Successive halving at epochs {self.rungs} (eta {self.eta:g}); {decided or 'no rung decided yet'}"

    # ---- the decision
    def _score(self, result: dict) -> float:
        v = result.get(self._metric) if self._metric else None
        if v is None:
            return -math.inf
        try:
            v = float(v)
        except (TypeError, ValueError):
            return -math.inf
        if math.isnan(v):
            return -math.inf
        return -v if self._mode == "min" else v

    def _decide(self, tune_controller, rung: int, current: Optional[str]) -> bool:
        """Decide `rung` if every searched trial has reached it or ended; returns whether it is decided."""
        if rung in self.promoted:
            return True
        search_alg = getattr(tune_controller, "search_alg", None)
        # every trial handed out (HeldSearch.all_created; a plain search algorithm's is_finished)
        if search_alg is not None and not getattr(search_alg, "all_created", search_alg.is_finished)():
            return False  # trials still to be created will reach this rung too
        recorded = self.records[rung]
        trials = tune_controller.get_trials()
        for trial in trials:
            if is_baseline(trial) or trial.trial_id in recorded or trial.trial_id in self.ended:
                continue
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                continue  # ended before this rung (diverged, failed, stopped at an earlier one)
            return False
        if not recorded:
            return False
        ranked = sorted(recorded, key=lambda tid: recorded[tid], reverse=True)
        self.promoted[rung] = ranked[:keep_count(len(ranked), self.eta)]
        go_on = set(self.promoted[rung])
        by_id = {t.trial_id: t for t in trials}
        for tid, r in list(self.waiting.items()):
            if r != rung or tid == current:
                continue
            del self.waiting[tid]
            self._slot(tune_controller, tid, release=False)  # counted again, so its end reaches the searcher
            trial = by_id.get(tid)
            if tid in go_on:
                self.to_unpause.add(tid)
            else:
                self.ended.add(tid)
                if trial is not None and trial.status == Trial.RUNNING:
                    self.stop_when_paused.add(tid)  # its pause (the rung checkpoint) is still being saved
                elif trial is not None and trial.status not in (Trial.TERMINATED, Trial.ERROR):
                    tune_controller.stop_trial(trial)
        return True

    @staticmethod
    def _slot(tune_controller, trial_id: str, release: bool) -> None:
        """Give a paused trial's place in the ConcurrencyLimiter back (release) or take it again."""
        limiter: Any = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
        live = getattr(limiter, "live_trials", None)
        if not isinstance(live, set):
            return
        if release:
            live.discard(trial_id)
        else:
            live.add(trial_id)
