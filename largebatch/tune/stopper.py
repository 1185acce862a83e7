"""Stop at the target (`budget.stop_at_target: true`) and the study's budget (`tuner.budget_runs`).

**Stop at the target.** A searched trial ends at the first epoch whose metric reaches the baseline's quality minus
the tolerance (or budget.target_val_acc), so a study whose large batches get a long budget (a cap: base
`budget.epochs` larger than the baseline's) pays only for the examples each one needs.

The target is learnt during the study: a Ray Tune Stopper (run by the driver on every trial result) watches the
baseline trials and sets it when every seed of the baseline has ended (the mean of their best values, moved by the
tolerance as report/target.py does, so the report and the stopper aim at the same value). Trials whose results
arrive before then run on; the report reads every trial's steps to target from its per-epoch curve anyway, so what
the stopper changes is compute, never the figures. The baseline itself is never stopped. With budget.target_val_acc
set the loop stops its own trial (train/loop.py); this stopper applies the same value to every trial.

**The budget** (`tuner.budget_runs: N`, docs/design.md §13). Its unit is one baseline run: the baseline's projected
training to its full budget (its total steps x its batch's profiled step time, tune/throughput.py), the unit of the
report's `cost_baseline_runs`. With it set, searched trials also stop at the target, and:

- *Spend*: every trial's projected training so far (steps x profiled step time of its batch). The baseline seeds are
  counted whole from the start: they always run to their budget.
- *Cannot beat*: once a searched trial has reached the target at projected time T* (the soonest so far; the epochs
  trials reported before the baseline ended count too), any running trial whose next evaluation (an epoch end: its
  projected time so far plus one epoch) would come at or after T* stops: it can no longer reach the target sooner.
  A trial not yet started whose first epoch alone takes T* or more is not started. With several seeds
  (`tuner.seeds`) this is off: a recipe's time is the mean over its seeds, which one trial's T* does not bound.
- *Budget*: a running trial stops when the spend, plus one more epoch of every running searched trial, would pass
  N baseline runs; a trial whose first epoch would not fit is not started (the searcher skips it,
  tune/space.py WithBaseline.gate). The study is then marked "budget reached".
- *Confirmation* (one seed s): once the search is done and nothing runs, the searcher asks `confirmation()` for one
  more trial: the leader (soonest to the target) again on seed s + 1. The search keeps the leader's T* in reserve
  for it. It is not cut on T*; it stops at the target, once its next evaluation would come after the baseline's own
  time to the target, or on the budget. If it misses, the next recipe that reached the target follows (at most
  MAX_CONFIRMATIONS). The report (report/verdict.py) reads each seed from the records: a miss drops the recipe.

These need the throughput profile (the driver hands it over through `plan`); without one the budget is not applied
and the study says so. Which trials run within the budget depends on the order the searcher hands them out in (the
grid's is the YAML's): list the most promising first.

An extension (`--extend`) runs no baseline: its target comes from the baseline trials the study already finished.
A resumed study (`--resume`) gets the stopper Tune pickled when the study started, which learns the target only if
its baseline is still to finish.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional

from ray.tune import Stopper

from largebatch.metrics import SUMMARIES, summary_name
from largebatch.report.speed import projected
from largebatch.report.target import meets, target_value
from largebatch.tune.runtime import StudyRuntime, is_baseline_sample
from largebatch.vocab import Status

_EPS = 1e-9
MAX_CONFIRMATIONS = 2  # second-seed trials a budgeted study may run: the leader, then the next recipe if it misses
CONFIRMS_KEY = "confirms"  # in a confirmation trial's Tune sample: the label of the recipe it re-runs


def per_epoch_metric(metric: str) -> str:
    """best_val_acc -> val_acc; val_acc stays."""
    head, _, rest = metric.partition("_")
    return rest if head in SUMMARIES and rest else metric


class TargetStopper(Stopper):
    def __init__(self, metric: str, mode: str, tolerance: float, units: str, n_baseline: int,
                 explicit: Optional[float] = None, budget_runs: Optional[float] = None,
                 seeds: Optional[list[int]] = None):
        self.key, self.summary = per_epoch_metric(metric), summary_name(metric)
        self.mode, self.tolerance, self.units = mode, tolerance, units
        self.n_baseline = n_baseline
        self.target: Optional[float] = explicit
        self.baseline: dict[str, float] = {}  # baseline trial id -> its best value, once it has ended
        self.stopped: dict[str, str] = {}  # trial id -> why it was stopped (the MLflow run's reason)
        # ---- the budget (tuner.budget_runs); figures in projected seconds, set by plan()
        self.budget_runs = budget_runs
        self.step_s: dict[int, float] = {}  # global batch -> profiled seconds per step
        self.unit: Optional[float] = None  # one baseline run: its projected training to its full budget
        self.spent: dict[str, float] = {}  # searched trial id -> projected training so far
        self.epoch: dict[str, float] = {}  # running searched trial id -> projected seconds of its last epoch
        self.best: Optional[tuple[float, str]] = None  # (T*, the recipe): the soonest projected time to target
        self.curves: dict[str, list[tuple[float, float]]] = {}  # searched trial -> (projected s, metric) per epoch
        self.budget_reached = False
        self.not_started: list[str] = []  # "label: why" of the points the searcher did not hand out
        self._labels: dict[str, str] = {}
        self._runtime: Optional[StudyRuntime] = None
        # several seeds: a recipe's time to target is their mean, which one trial's T* does not bound (budget only)
        self.prunes = n_baseline == 1
        # ---- confirmation on a second seed (one-seed budgeted studies)
        first = (seeds or [0])[0]
        self.confirm_seed = first + 1 if first < 2**32 - 1 else first - 1  # numpy and torch take 0..2**32-1
        self.samples: dict[str, dict] = {}  # searched trial id -> its Tune sample (a confirmation re-runs it)
        self.reach: dict[str, float] = {}  # searched trial id -> projected time it first met the target
        self.confirmations: list[dict[str, Any]] = []  # one per confirmation handed out or refused (accounts())
        self.baseline_curve: list[tuple[float, float]] = []  # (projected s, metric) of the baseline's epochs
        self.baseline_time: Optional[float] = None  # the baseline's own projected time to the target

    # ---- the plan: the driver hands over the throughput profile once it is measured
    def plan(self, profile: Optional[dict], runtime, searcher=None) -> None:
        """Step times from the profile, the unit from the baseline's total steps (runtime.trial_spec resolves it),
        and the searcher's gate (tune/space.py WithBaseline). Without a profile the budget is off (one line)."""
        from largebatch.report.speed import step_times

        self.step_s, self._runtime = step_times(profile), runtime
        if self.budget_runs is None:
            return
        res = runtime.trial_spec({"arm": "baseline", "seed": runtime.seeds[0]})[0].res
        if res.global_batch_size not in self.step_s or len(res.phases) > 1:
            why = (profile or {}).get("reason") or f"B={res.global_batch_size} was not profiled"
            print(f"[largebatch] tuner.budget_runs {self.budget_runs:g} is not applied: it is counted in projected "
                  f"training and the study has no throughput profile ({why})", flush=True)
            self.budget_runs = None
            return
        self.unit = res.total_steps * self.step_s[res.global_batch_size]
        if searcher is not None:
            searcher.gate = self.admit
            if self.confirms():
                searcher.confirm = self.confirmation
        print(f"[largebatch] budget: {self.budget_runs:g} baseline runs of projected training (1 run = "
              f"{self.unit:.3g} s, B={res.global_batch_size} x {res.total_steps} steps), the baseline's "
              f"{self.n_baseline} included; searched trials stop at the target and once they cannot beat the "
              f"soonest recipe", flush=True)

    # ---- Tune's Stopper interface
    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.key)
        if is_baseline_sample(result.get("config")):
            at = self._at(result)
            if at is not None and isinstance(value, (int, float)) and value == value:
                self.baseline_curve.append((at, float(value)))
            best = result.get(self.summary)
            if result.get("is_final") and isinstance(best, (int, float)) and best == best:
                self.baseline[trial_id] = float(best)
                if self.target is None and len(self.baseline) >= self.n_baseline:
                    self.target = target_value(statistics.fmean(self.baseline.values()), self.tolerance, self.mode,
                                               self.units)
                    print(f"[largebatch] target set by the baseline: {self.key} "
                          f"{'>=' if self.mode == 'max' else '<='} {self.target:.4g}; searched trials stop when "
                          f"they reach it", flush=True)
                    self._soonest_so_far(self.target)
                if self.target is not None and self.baseline_time is None:
                    self.baseline_time = next((t for t, v in self.baseline_curve
                                               if meets(v, self.target, self.mode)), None)
            return False
        config = result.get("config") or {}
        if config.get(CONFIRMS_KEY):
            return self._confirming(trial_id, result, value)
        if trial_id not in self.samples and config:
            self.samples[trial_id] = {k: v for k, v in config.items() if k != "index"}
        now = self._account(trial_id, result)
        if now is not None and isinstance(value, (int, float)) and value == value and self.budget_runs is not None:
            self.curves.setdefault(trial_id, []).append((now, float(value)))
            self._label(trial_id, result)
        reached = self._meets(value)
        if reached and now is not None:
            self.reach.setdefault(trial_id, now)
        if reached and now is not None and (self.best is None or (now, self._label(trial_id, result)) < self.best):
            self.best = (now, self._label(trial_id, result))  # a tie: the label's order, as the report breaks it
        if result.get("is_final"):
            self.epoch.pop(trial_id, None)
            return False
        if reached:
            self.stopped[trial_id] = (f"reached the target {self.key} {value:.4g} (target {self.target:.4g}) at step "
                                      f"{result.get('steps', '?')}")
            return self._stop(trial_id)
        if self.budget_runs is None or now is None:
            return False
        if self.prunes and self.best is not None and now + self.epoch[trial_id] >= self.best[0] - _EPS:
            self.stopped[trial_id] = (f"cannot beat {self.best[1]}'s {self.best[0]:.3g} s to the target (its next "
                                      f"evaluation would come at {now + self.epoch[trial_id]:.3g} s projected)")
            return self._stop(trial_id)
        if self.committed() + sum(self.epoch.values()) + self.reserve() > self._budget_s() + _EPS:
            self.budget_reached = True
            self.stopped[trial_id] = (f"the study's budget of {self.budget_runs:g} baseline runs was reached "
                                      f"({self.runs_spent():.2f} spent)")
            return self._stop(trial_id)
        return False

    def stop_all(self) -> bool:
        return False

    # ---- the searcher's gate (tune/space.py WithBaseline): whether to hand out a searched point
    def admit(self, sample: dict[str, Any]) -> Optional[str]:
        """None to start the trial; else why not ("cannot beat", "budget"): the searcher skips it."""
        if self.budget_runs is None or self._runtime is None:
            return None
        try:
            res = self._runtime.trial_spec(sample)[0].res
        except Exception:
            return None  # the trial reports its own bad config
        step = self.step_s.get(res.global_batch_size)
        if step is None or len(res.phases) > 1:
            return None
        first = res.steps_per_epoch * step
        label = self._runtime.label(*self._runtime.trial_spec(sample))
        if self.prunes and self.best is not None and first >= self.best[0] - _EPS:
            self.not_started.append(f"{label}: its first epoch alone ({first:.3g} s) cannot beat {self.best[1]}'s "
                                    f"{self.best[0]:.3g} s")
            return "cannot beat"
        if self.committed() + sum(self.epoch.values()) + first + self.reserve() > self._budget_s() + _EPS:
            self.budget_reached = True
            self.not_started.append(f"{label}: the budget of {self.budget_runs:g} baseline runs was reached")
            return "budget"
        return None

    # ---- the accounts
    def _budget_s(self) -> float:  # the budget in projected seconds
        assert self.budget_runs is not None and self.unit is not None  # plan() set both: results are projected
        return self.budget_runs * self.unit

    def committed(self) -> float:
        """Projected seconds spent or bound to be: every searched trial so far, the baseline seeds whole."""
        return sum(self.spent.values()) + self.n_baseline * (self.unit or 0.0)

    def runs_spent(self) -> float:
        return self.committed() / self.unit if self.unit else float("nan")

    def accounts(self) -> dict[str, Any]:
        """What the budget did, for the report and the study's last lines."""
        return {"budget_runs": self.budget_runs, "unit_s": self.unit,
                "spent_runs": self.runs_spent() if self.unit else None, "budget_reached": self.budget_reached,
                "soonest": None if self.best is None else {"recipe": self.best[1], "time_to_target_s": self.best[0]},
                "not_started": list(self.not_started),
                "confirmations": [{k: v for k, v in c.items() if k != "of"} for c in self.confirmations],
                "stopped": {why: sum(r.startswith(why) for r in self.stopped.values())
                            for why in ("reached the target", "cannot beat", "the study's budget")}}

    def finish(self) -> dict[str, Any]:
        """The study's budget line, printed when Tune is done; returns accounts() for the report."""
        out = self.accounts()
        if self.unit is None:
            return out  # never planned (a resumed study: Tune's own copy of the stopper ran it)
        stops = ", ".join(f"{n} {why}" for why, n in out["stopped"].items() if n)
        print(f"[largebatch] budget: {out['spent_runs']:.2f} of {self.budget_runs:g} baseline runs of projected "
              f"training{' (budget reached)' if self.budget_reached else ''}; searched trials stopped: "
              f"{stops or 'none'}; not started: {len(self.not_started)}"
              + (f"; soonest to the target: {self.best[1]}, {self.best[0]:.3g} s" if self.best else ""), flush=True)
        for c in self.confirmations:
            got = (f"reached the target in {c.get('time_to_target_s') or float('nan'):.3g} s (first seed "
                   f"{c.get('first_seed_time_s') or float('nan'):.3g} s)" if c["status"] == "reached" else
                   c["status"] + (f": {c['why']}" if c.get("why") else ""))
            print(f"[largebatch] confirmation of {c['recipe']} on seed {c['seed']}: {got}", flush=True)
        return out

    def _account(self, trial_id: str, result: dict[str, Any]) -> Optional[float]:
        """The trial's projected training so far (and its last epoch's), None when it cannot be projected."""
        now = self._at(result)  # the report's own projection (report/speed.py)
        if now is None:
            return None
        self.epoch[trial_id] = max(now - self.spent.get(trial_id, 0.0), 0.0)
        self.spent[trial_id] = now
        return now

    def _soonest_so_far(self, target: float) -> None:
        """Once the target is known, T* from the curves of the trials that reported before it was."""
        for tid, points in self.curves.items():
            at = next((t for t, v in points if meets(v, target, self.mode)), None)
            if at is not None:
                self.reach.setdefault(tid, at)
            if at is not None and (self.best is None or (at, self._labels.get(tid, f"trial {tid}")) < self.best):
                self.best = (at, self._labels.get(tid, f"trial {tid}"))

    def confirms(self) -> bool:
        """Whether this study confirms its leader on a second seed: budgeted, one seed."""
        return self.budget_runs is not None and self.prunes

    def reserve(self) -> float:
        """Projected seconds the search keeps for the confirmation: the leader's time to the target, until one ran."""
        return self.best[0] if self.confirms() and self.best is not None and not self.confirmations else 0.0

    def confirmation(self, waiting: bool = False) -> Optional[dict[str, Any] | str]:
        """The searcher's last trial(s) (tune/space.py WithBaseline, once nothing else runs): the leading recipe not
        yet confirmed, with the second seed; None when none is due (one held, MAX_CONFIRMATIONS ran, no recipe
        reached the target, or its expected cost, its first seed's time to target, does not fit the budget).
        waiting: trials still run; "wait" unless no confirmation can come (the budget is spent, or all were run)."""
        running = any(c["status"] == "running" for c in self.confirmations)
        if not self.confirms() or self.unit is None or any(c["status"] in ("reached", "not started")
                                                           for c in self.confirmations):
            return None
        if waiting:  # a running confirmation may miss: the next recipe would follow it
            room = self._budget_s() - self.committed() - sum(self.epoch.values())
            more = len(self.confirmations) < MAX_CONFIRMATIONS
            return "wait" if more and (running or room > _EPS) else None
        if running or len(self.confirmations) >= MAX_CONFIRMATIONS or self.target is None:
            return None  # running with nothing live: its trial ended without a final result
        tried, names, samples = {c["of"] for c in self.confirmations}, self._labels, self.samples
        due = [(t, names.get(tid, ""), tid) for tid, t in self.reach.items() if tid in samples and tid not in tried]
        if not due:  # the soonest first; a tie goes to the label's order, as self.best and the report break it
            return None
        t, _, tid = min(due)
        label = self._labels.get(tid, f"trial {tid}")
        entry = {"recipe": label, "of": tid, "seed": self.confirm_seed, "first_seed": self.samples[tid].get("seed"),
                 "first_seed_time_s": t}
        self.confirmations.append(entry)
        if self.committed() + t > self._budget_s() + _EPS:
            entry.update(status="not started", why=f"its expected cost ({t:.3g} s, the first seed's time to the "
                         f"target) does not fit the budget of {self.budget_runs:g} baseline runs "
                         f"({self.runs_spent():.2f} spent)")
            print(f"[largebatch] confirmation of {label} on seed {self.confirm_seed} not started: {entry['why']}",
                  flush=True)
            return None
        entry["status"] = "running"
        print(f"[largebatch] confirming {label} (the soonest to the target, {t:.3g} s projected) on a second seed, "
              f"{self.confirm_seed}", flush=True)
        return {**self.samples[tid], "seed": self.confirm_seed, CONFIRMS_KEY: label}

    def _confirming(self, trial_id: str, result: dict[str, Any], value: Any) -> bool:
        """A confirmation's result: stopped at the target, once it cannot beat the baseline, or on the budget."""
        label = (result.get("config") or {}).get(CONFIRMS_KEY)
        entry = next((c for c in reversed(self.confirmations) if c.get("trial_id") == trial_id), None) or next(
            (c for c in reversed(self.confirmations) if c["recipe"] == label and c["status"] == "running"
             and "trial_id" not in c), None)
        if entry is None:  # a resumed study: Tune's copy of the stopper did not hand it out
            entry = {"recipe": label, "of": None, "seed": result["config"].get("seed"), "status": "running"}
            self.confirmations.append(entry)
        entry["trial_id"] = trial_id
        now = entry["spent_s"] = self._account(trial_id, result)
        reached = self._meets(value)
        if reached:
            entry.update(status="reached", time_to_target_s=now)
        if result.get("is_final"):
            self.epoch.pop(trial_id, None)
            if not reached:
                entry.update(status="missed", why="did not reach the target within its budget of epochs")
            return False
        if reached:
            self.stopped[trial_id] = (f"reached the target {self.key} {value:.4g} (target {self.target:.4g}) at step "
                                      f"{result.get('steps', '?')} (confirmation on seed {entry['seed']})")
            return self._stop(trial_id)
        nxt = None if now is None else now + self.epoch.get(trial_id, 0.0)
        if nxt is None:
            return False
        if self.baseline_time is not None and nxt >= self.baseline_time - _EPS:
            entry.update(status="missed", why=f"cannot be sooner than the baseline's {self.baseline_time:.3g} s "
                                              f"to the target")
            self.stopped[trial_id] = (f"the confirmation on seed {entry['seed']} cannot be sooner than the "
                                      f"baseline's {self.baseline_time:.3g} s to the target (its next evaluation "
                                      f"would come at {nxt:.3g} s projected)")
            return self._stop(trial_id)
        if self.committed() + sum(self.epoch.values()) > self._budget_s() + _EPS:
            self.budget_reached = True
            entry.update(status="missed", why=f"the budget of {self.budget_runs:g} baseline runs was reached")
            self.stopped[trial_id] = (f"the study's budget of {self.budget_runs:g} baseline runs was reached "
                                      f"({self.runs_spent():.2f} spent; confirmation on seed {entry['seed']})")
            return self._stop(trial_id)
        return False

    def _at(self, result: dict[str, Any]) -> Optional[float]:
        """The result's projected training so far (report/speed.py), None when it cannot be projected."""
        try:
            return projected(int(result["global_batch_size"]), float(result["steps"]), self.step_s)
        except (KeyError, TypeError, ValueError):
            return None

    def _meets(self, value: Any) -> bool:
        return (self.target is not None and isinstance(value, (int, float)) and value == value
                and meets(float(value), self.target, self.mode))

    def _stop(self, trial_id: str) -> bool:
        self.epoch.pop(trial_id, None)
        return True

    def _label(self, trial_id: str, result: dict[str, Any]) -> str:
        if trial_id not in self._labels:
            runtime, sample = self._runtime, result.get("config") or {}  # no runtime before plan()
            try:
                self._labels[trial_id] = runtime.label(*runtime.trial_spec(sample)) if runtime else f"trial {trial_id}"
            except Exception:
                self._labels[trial_id] = f"trial {trial_id}"
        return self._labels[trial_id]

    def learn_from_records(self, records: list[dict[str, Any]]) -> None:
        """An extension (tune/extend.py) runs no baseline: the target comes from the baseline trials the study
        already finished (records.py records), when every seed of them has a result."""
        if self.target is not None:
            return
        best = [float(r[self.summary]) for r in records if r.get("is_baseline") and r.get("status") == Status.COMPLETED
                and isinstance(r.get(self.summary), (int, float)) and r[self.summary] == r[self.summary]]
        if best and len(best) >= self.n_baseline:
            self.target = target_value(statistics.fmean(best), self.tolerance, self.mode, self.units)


def create_stopper(study) -> Optional[TargetStopper]:
    """The study's stopper, or None when neither budget.stop_at_target nor tuner.budget_runs is set, or the study
    has no baseline (then a budget has no unit: one line says it is not applied)."""
    from largebatch.report.target import explicit_target

    budget, t = study.base.budget, study.tuner
    if study.baseline is None:
        if t.budget_runs is not None:
            print(f"[largebatch] tuner.budget_runs {t.budget_runs:g} is not applied: its unit is the baseline's run "
                  f"and the study has no baseline:", flush=True)
        return None
    if not budget.stop_at_target and t.budget_runs is None:
        return None
    # load_study filled in tuner.mode and report.tolerance_units from the metric's direction (config/study.py)
    return TargetStopper(t.metric, t.mode, study.report.tolerance, study.report.tolerance_units,
                         n_baseline=len(t.seeds), explicit=explicit_target(t.metric, budget.target_val_acc),
                         budget_runs=t.budget_runs, seeds=list(t.seeds))
