"""Study YAML `search:` -> what Ray Tune runs: searchers that suggest dotted-key overrides of the base config.

Every searcher suggests {"arm", "overrides", "seed"}. `WithBaseline` puts the baseline (one trial per seed) first,
whatever the searcher, so the reference is always run and never sampled away. Grid and random searchers are plain
lists (deterministic, resumable); optuna is Ray Tune's OptunaSearch over the same domains.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Optional

from largebatch.config import StudyConfig
from largebatch.errors import BadInput
from largebatch.registry import Registry


def tune_domain(kind: str, values: list):
    from ray import tune

    if kind in ("grid", "choice"):
        return tune.choice(values)
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    return tune.randint(int(values[0]), int(values[1]))


def grid_points(study: StudyConfig) -> list[dict[str, Any]]:
    """The cartesian product of the grid/choice entries, in YAML order."""
    keys, lists = [], []
    for key, domain in study.search.items():
        kind, values = next(iter(domain.items()))
        if kind not in ("grid", "choice"):
            raise BadInput(f"searcher 'grid' takes grid/choice entries only, got {kind}; use searcher random or "
                           f"optuna for continuous ranges", field=f"search.{key}")
        keys.append(key)
        lists.append(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)] if keys else [{}]


def random_points(study: StudyConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    import math

    rng = random.Random(seed)
    points = []
    for _ in range(n):
        p = {}
        for key, domain in study.search.items():
            kind, v = next(iter(domain.items()))
            if kind in ("grid", "choice"):
                p[key] = rng.choice(v)
            elif kind == "uniform":
                p[key] = rng.uniform(*v)
            elif kind == "loguniform":
                p[key] = math.exp(rng.uniform(math.log(v[0]), math.log(v[1])))
            else:
                p[key] = rng.randrange(int(v[0]), int(v[1]))
        points.append(p)
    return points


def _searcher_base():
    from ray.tune.search import Searcher

    return Searcher


class ListSearcher(_searcher_base()):
    """Suggests a fixed list of points in order; FINISHED when they are used up."""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str):
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


class WithBaseline(_searcher_base()):
    """The baseline arm first (one trial per seed), then the inner searcher's points, each repeated per seed."""

    def __init__(self, inner, baseline: Optional[dict[str, Any]], seeds: list[int], metric: str, mode: str,
                 total: Optional[int] = None):
        super().__init__(metric=metric, mode=mode)
        self.inner = inner
        self.queue: list[dict[str, Any]] = (
            [{"arm": "baseline", "overrides": baseline, "seed": s} for s in seeds] if baseline is not None else [])
        self.seeds = seeds
        self.total = total  # search points (before seeds) to ask the inner searcher for
        self.asked = 0
        self.primary: dict[str, str] = {}  # our trial id -> the inner searcher's trial id (first seed reports)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if not self.queue:
            if self.total is not None and self.asked >= self.total:
                return self.FINISHED
            inner_id = f"{trial_id}-inner"
            point = self.inner.suggest(inner_id)
            if point is None or point == self.FINISHED:
                return point
            self.asked += 1
            self.queue = [{"arm": "search", "overrides": dict(point), "seed": s, "_inner": inner_id if i == 0 else None}
                          for i, s in enumerate(self.seeds)]
        item = dict(self.queue.pop(0))
        inner_id = item.pop("_inner", None)
        if inner_id:
            self.primary[trial_id] = inner_id
        return item

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.primary:
            self.inner.on_trial_result(self.primary[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self.primary:
            self.inner.on_trial_complete(self.primary.pop(trial_id), result=result, error=error)

    def get_state(self) -> dict:
        return {"queue": self.queue, "asked": self.asked}

    def set_state(self, state: dict) -> None:
        self.queue, self.asked = state["queue"], state["asked"]
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


SEARCHERS: Registry = Registry("searcher")


@SEARCHERS.register("grid", "every combination of the grid/choice entries, tuner.num_samples times")
def _grid(study: StudyConfig):
    points = grid_points(study) * study.tuner.num_samples
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


@SEARCHERS.register("random", "tuner.num_samples independent draws from the domains (seeded, reproducible)")
def _random(study: StudyConfig):
    points = random_points(study, study.tuner.num_samples, seed=study.base.seed)
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


@SEARCHERS.register("optuna", "Ray Tune's OptunaSearch (TPE) over the domains, tuner.num_samples suggestions")
def _optuna(study: StudyConfig):
    from ray.tune.search.optuna import OptunaSearch

    space = {k: tune_domain(*next(iter(d.items()))) for k, d in study.search.items()}
    import optuna

    inner = OptunaSearch(space=None, metric=study.tuner.metric, mode=study.tuner.mode,
                         sampler=optuna.samplers.TPESampler(seed=study.base.seed))
    inner.set_search_properties(study.tuner.metric, study.tuner.mode, space)
    return inner, study.tuner.num_samples


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
    return WithBaseline(inner, baseline, seeds, study.tuner.metric, study.tuner.mode, total=n_points), n_trials
