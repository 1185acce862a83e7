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
from largebatch.config.fullbatch import grid_admits
from largebatch.errors import BadInput
from largebatch import choices


def grid_points(study: StudyConfig) -> list[dict[str, Any]]:
    """The cartesian product of the grid/choice entries, in YAML order; then, for each, `per_batch` draws of every
    per-batch entry (config/search.py), seeded by the study seed, the key and the point's batch size."""
    keys, lists = [], []
    per_batch = {k: d for k, e in study.search.items() if (d := SearchDomain.of(e)).per_batch}
    for key, entry in study.search.items():
        domain = SearchDomain.of(entry)
        if key in per_batch:
            continue
        if not domain.listed:
            raise BadInput(f"searcher 'grid' takes grid/choice entries only, got {domain.kind}; use searcher random "
                           f"or optuna for continuous ranges", field=f"search.{key}")
        keys.append(key)
        lists.append(domain.values())
    points = [dict(zip(keys, combo)) for combo in itertools.product(*lists)] if keys else [{}]
    points = [p for p in points if grid_admits(study, p)]  # rprop runs at the full batch only (config/fullbatch.py)
    return [drawn for p in points for drawn in _per_batch_draws(study, p, per_batch)] if per_batch else points


def _per_batch_draws(study: StudyConfig, point: dict[str, Any], per_batch: dict[str, SearchDomain]
                     ) -> list[dict[str, Any]]:
    """The point with per_batch draws of each per-batch entry (several entries combine like grid entries), one in
    each of per_batch equal strata of the range (log-space for loguniform: a few draws still span it). The draws
    depend on the study seed, the key and the batch only; floats keep 3 significant digits (readable labels)."""
    batch = point.get("data.global_batch_size", study.base.data.global_batch_size)
    lists = []
    for key, d in per_batch.items():
        rng = random.Random(f"{study.base.seed}:{key}:{batch}")
        assert d.per_batch is not None  # per_batch holds only the entries that set it
        draws = d.stratified(rng, d.per_batch)
        lists.append([float(f"{v:.3g}") if isinstance(v, float) else v for v in draws])
    return [{**point, **dict(zip(per_batch, combo))} for combo in itertools.product(*lists)]


def random_points(study: StudyConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    domains = {key: SearchDomain.of(entry) for key, entry in study.search.items()}
    return [{key: d.sample(rng) for key, d in domains.items()} for _ in range(n)]


# the names and descriptions are listed in choices.py (below config/), which imports these factories lazily
SEARCHERS = choices.SEARCHERS


def grid_searcher(study: StudyConfig):
    from largebatch.tune.space import ListSearcher

    points = grid_points(study) * study.tuner.num_samples
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


def random_searcher(study: StudyConfig):
    from largebatch.tune.space import ListSearcher

    points = random_points(study, study.tuner.num_samples, seed=study.base.seed)
    return ListSearcher(points, study.tuner.metric, study.tuner.mode), len(points)


def optuna_searcher(study: StudyConfig):
    from ray.tune.search.optuna import OptunaSearch

    space = {k: SearchDomain.of(d).to_tune() for k, d in study.search.items()}
    import optuna

    inner = OptunaSearch(space=None, metric=study.tuner.metric, mode=study.tuner.mode,
                         sampler=optuna.samplers.TPESampler(seed=study.base.seed))
    inner.set_search_properties(study.tuner.metric, study.tuner.mode, space)
    return inner, study.tuner.num_samples


def trial_count(study) -> str:
    """How many trials `tune` will run, as the searcher lists them (`validate` prints it; Ray-free)."""
    from largebatch.config.critical import AROUND_CRITICAL

    seeds = len(study.tuner.seeds)
    if any(AROUND_CRITICAL in entry for entry in study.search.values()):
        return "the batch grid is placed from B_noise when the study starts (largebatch probe)"
    points = (len(grid_points(study)) if study.tuner.searcher == "grid" else 1) * study.tuner.num_samples
    baseline = seeds if study.baseline is not None else 0
    return f"{points * seeds + baseline} ({points} search point(s) x {seeds} seed(s)" + \
        (f" + {baseline} baseline)" if baseline else ")")
