"""Study YAML `search:` -> what Ray Tune runs: searchers that suggest dotted-key overrides of the base config.

Every searcher suggests {"arm", "overrides", "seed"}. `WithBaseline` puts the baseline (one trial per seed) first,
whatever the searcher, so the reference is always run and never sampled away. Grid and random searchers are plain
lists (deterministic, resumable); optuna is Ray Tune's OptunaSearch over the same domains. The searchers are
named in choices.py and built in tune/searchers.py (`largebatch list` and the study loader read the names without Ray);
this module holds the Ray Tune Searcher classes (it imports Ray).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.search import Searcher

from largebatch.config import StudyConfig
from largebatch.errors import BadInput
from largebatch.choices import SEARCHERS


class ListSearcher(Searcher):
    """Suggests a fixed list of points in order; FINISHED when they are used up."""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: Optional[str]):
        super().__init__(metric=metric, mode=mode)
        self.points = points
        self.next = 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.points):
            return self.FINISHED
        self.next += 1
        return self.points[self.next - 1]

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict:
        return {"next": self.next}

    def set_state(self, state: dict) -> None:
        self.next = state["next"]

    def save(self, checkpoint_path: str) -> None:
        import json

        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        import json

        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


class WithBaseline(Searcher):
    """The baseline arm first (one trial per seed), then the inner searcher's points, each repeated per seed.

    `gate` (set by the study's budget, tune/stopper.py TargetStopper.admit): asked about each point before it is
    handed out; None starts it, anything else (why not) skips it.

    `confirm` (set by a one-seed budgeted study, TargetStopper.confirmation): once the inner searcher is done and no
    trial handed out is still running, asked for one more trial (the leading recipe on a second seed); None ends the
    search. While trials run it answers "wait" (suggest() answers None, Tune asks again: the leader may still change)
    or None (no confirmation can come: the budget is spent)."""

    gate: Optional[Callable[[dict[str, Any]], Optional[str]]] = None
    confirm: Optional[Callable[..., Any]] = None

    def __init__(self, inner, baseline: Optional[dict[str, Any]], seeds: list[int], metric: str, mode: Optional[str],
                 total: Optional[int] = None):
        super().__init__(metric=metric, mode=mode)
        self.inner = inner
        self.queue: list[dict[str, Any]] = (
            [{"arm": "baseline", "overrides": baseline, "seed": s} for s in seeds] if baseline is not None else [])
        self.seeds = seeds
        self.total = total  # search points (before seeds) to ask the inner searcher for
        self.asked = 0
        # trials handed out: each trial's config carries its number, which a resumed study re-creates for a trial
        # Tune had not saved yet (the driver died first), so that trial finds its MLflow run again
        self.suggested = 0
        self.primary: dict[str, str] = {}  # our trial id -> the inner searcher's trial id (first seed reports)
        self.live: set[str] = set()  # trials handed out and not yet complete
        self.done = False  # the inner searcher has nothing more

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        while not self.queue:
            if self.done or (self.total is not None and self.asked >= self.total):
                return self._last(trial_id)
            inner_id = f"{trial_id}-inner"
            point = self.inner.suggest(inner_id)
            if point == self.FINISHED:
                self.done = True
                return self._last(trial_id)
            if point is None:
                return point
            self.asked += 1
            why = self.gate({"arm": "search", "overrides": dict(point), "seed": self.seeds[0]}) if self.gate else None
            if why is not None:  # the study's budget (tune/stopper.py): it cannot beat what was found, or not fit
                self.inner.on_trial_complete(inner_id, result=None, error=True)
                continue
            self.queue = [{"arm": "search", "overrides": dict(point), "seed": s, "_inner": inner_id if i == 0 else None}
                          for i, s in enumerate(self.seeds)]
        item = dict(self.queue.pop(0))
        inner_id = item.pop("_inner", None)
        if inner_id:
            self.primary[trial_id] = inner_id
        return self._hand_out(trial_id, item)

    def _hand_out(self, trial_id: str, item: dict[str, Any]) -> dict[str, Any]:
        item["index"] = self.suggested
        self.suggested += 1
        self.live.add(trial_id)
        return item

    def _last(self, trial_id: str):
        """The search is done: a confirmation trial once nothing runs (None until then), else FINISHED."""
        if self.confirm is None:
            return self.FINISHED
        item = self.confirm(waiting=bool(self.live))
        if item == "wait":  # trials still run: the leader may change, so ask again later
            return None
        return self.FINISHED if item is None else self._hand_out(trial_id, dict(item))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.primary:
            self.inner.on_trial_result(self.primary[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.live.discard(trial_id)
        if trial_id in self.primary:
            self.inner.on_trial_complete(self.primary.pop(trial_id), result=result, error=error)

    def get_state(self) -> dict:
        return {"queue": self.queue, "asked": self.asked, "suggested": self.suggested, "done": self.done}

    def set_state(self, state: dict) -> None:
        self.queue, self.asked = state["queue"], state["asked"]
        self.suggested = int(state.get("suggested", 0))
        self.done = bool(state.get("done", False))
        self.primary = dict(state.get("primary", {}))
        if "inner" in state:
            self._set_inner_state(state["inner"])

    # Tune saves the innermost searcher of its wrapper chain (ConcurrencyLimiter -> us) with save()/restore()
    # on every experiment checkpoint, and restores it with `Tuner.restore` (`largebatch tune --resume`).
    def _inner_state(self) -> dict:
        try:
            return {"state": self.inner.get_state()}
        except NotImplementedError:  # e.g. OptunaSearch: only save()/restore() to a file
            import os
            import tempfile

            fd, path = tempfile.mkstemp()
            os.close(fd)
            try:
                self.inner.save(path)
                with open(path, "rb") as f:
                    return {"file": f.read()}
            finally:
                os.unlink(path)

    def _set_inner_state(self, inner: dict) -> None:
        if "state" in inner:
            self.inner.set_state(inner["state"])
            return
        import os
        import tempfile

        fd, path = tempfile.mkstemp()
        with os.fdopen(fd, "wb") as f:
            f.write(inner["file"])
        try:
            self.inner.restore(path)
        finally:
            os.unlink(path)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump({**self.get_state(), "primary": self.primary, "inner": self._inner_state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


def create_searcher(study: StudyConfig, baseline: Optional[dict[str, Any]]):
    """(search algorithm, number of trials it will produce)."""
    if study.tuner.searcher not in SEARCHERS:
        from largebatch.errors import unknown_choice

        raise BadInput(unknown_choice("searcher", study.tuner.searcher, SEARCHERS.names()), field="tuner.searcher")
    if not study.search and study.tuner.searcher != "grid":
        raise BadInput("the search space is empty; add entries under search:", field="search")
    inner, n_points = SEARCHERS.get(study.tuner.searcher)(study)
    seeds = list(study.tuner.seeds)
    n_trials = n_points * len(seeds) + (len(seeds) if baseline is not None else 0)
    if study.tuner.budget_runs is not None and len(seeds) == 1 and baseline is not None:
        # room for the confirmation trials on a second seed (tune/stopper.py): Tune creates at most n_trials
        from largebatch.tune.stopper import MAX_CONFIRMATIONS

        n_trials += MAX_CONFIRMATIONS
    return WithBaseline(inner, baseline, seeds, study.tuner.metric, study.tuner.mode, total=n_points), n_trials
