"""The searcher registry (`tuner.searcher`): name -> factory(study) -> (Ray Tune search algorithm, points it suggests).

Ray-free at import, like the other registries, so `largebatch list` shows it and load_study checks the name
(config/names.py) without starting Ray; a factory imports Ray when it is called (tune/space.py holds the Searcher
classes). Grid and random points are plain lists of dotted-key overrides, computed here from the SearchDomains.
"""
from __future__ import annotations

import itertools
import random
from typing import Any

from largebatch.config import SearchDomain, StudyConfig
from largebatch.errors import BadInput
from largebatch.registry import Registry


def grid_points(study: StudyConfig) -> list[dict[str, Any]]:
    """The cartesian product of the grid/choice entries, in YAML order."""
    keys, lists = [], []
    for key, entry in study.search.items():
        domain = SearchDomain.of(entry)
        if not domain.listed:
            raise BadInput(f"searcher 'grid' takes grid/choice entries only, got {domain.kind}; use searcher random "
                           f"or optuna for continuous ranges", field=f"search.{key}")
        keys.append(key)
        lists.append(domain.values())
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)] if keys else [{}]


def random_points(study: StudyConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    domains = {key: SearchDomain.of(entry) for key, entry in study.search.items()}
    return [{key: d.sample(rng) for key, d in domains.items()} for _ in range(n)]


SEARCHERS: Registry = Registry("searcher")


@SEARCHERS.register("grid", "every combination of the grid/choice entries, tuner.num_samples times")
def _grid(study: StudyConfig):
    from largebatch.tune.space import ListSearcher

    points = grid_points(study) * study.tuner.num_samples
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


@SEARCHERS.register("random", "tuner.num_samples independent draws from the domains (seeded, reproducible)")
def _random(study: StudyConfig):
    from largebatch.tune.space import ListSearcher

    points = random_points(study, study.tuner.num_samples, seed=study.base.seed)
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


@SEARCHERS.register("optuna", "Ray Tune's OptunaSearch (TPE) over the domains, tuner.num_samples suggestions")
def _optuna(study: StudyConfig):
    from ray.tune.search.optuna import OptunaSearch

    space = {k: SearchDomain.of(d).to_tune() for k, d in study.search.items()}
    import optuna

    inner = OptunaSearch(space=None, metric=study.tuner.metric, mode=study.tuner.mode,
                         sampler=optuna.samplers.TPESampler(seed=study.base.seed))
    inner.set_search_properties(study.tuner.metric, study.tuner.mode, space)
    return inner, study.tuner.num_samples
