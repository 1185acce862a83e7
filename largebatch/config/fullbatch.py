"""Full batch at load time: `data.global_batch_size: full` made the training-set size, and the optimizers that need
it (OptimInfo.full_batch_only: rprop) checked, before any trial starts (docs/design.md §4, §10).

`full` is the whole training set after `data.train_subset`: one optimizer step per epoch, the exact gradient. It is
accepted wherever a batch size is (base, baseline, `search: data.global_batch_size` values); `full_batch_study`
turns it into the number, so the searcher, the throughput profile, the labels and the logged params all see the
number. When the search varies the data itself (dataset, path, train_subset, task), each trial's size differs: the
`full` stays, and each trial's `resolve()` makes it that trial's number.

An optimizer registered `full_batch_only` is refused (one line, exit 2) in base or baseline at a smaller batch; in a
grid it runs only at the full batch: `grid_admits` drops its smaller-batch points, and a grid that lists it with no
full-batch point is refused.
"""
from __future__ import annotations

from typing import Any

from largebatch.config.resolve import FULL_BATCH, check_full_batch_only, trial_train_size
from largebatch.config.schema import StudyConfig, TrialConfig
from largebatch.config.search import SearchDomain
from largebatch.config.tree import apply_overrides, parse_trial
from largebatch.errors import BadInput

BATCH_KEY = "data.global_batch_size"
# search keys that change what `full` is from trial to trial
_DATA_KEYS = ("data.dataset", "data.path", "data.train_subset")


def data_varies(study: StudyConfig) -> bool:
    return any(k in _DATA_KEYS or k.startswith("task.") or k in ("data", "task") for k in study.search)


def _baseline_cfg(study: StudyConfig, source: str) -> TrialConfig:
    return parse_trial(apply_overrides(study.base.model_dump(), study.baseline or {}), source=source,
                       prefix="baseline.")


def full_batch_study(study: StudyConfig, source: str = "<study>") -> StudyConfig:
    """The study with every `full` batch made its training-set size (unless the search varies the data), and
    full_batch_only optimizers checked in base, baseline and the grid."""
    entry = study.search.get(BATCH_KEY)
    listed = SearchDomain.of(entry).values() if entry else []
    uses_full = (study.base.data.global_batch_size == FULL_BATCH or FULL_BATCH in listed
                 or (study.baseline is not None and _baseline_cfg(study, source).data.global_batch_size == FULL_BATCH))
    if data_varies(study):
        return study
    n = trial_train_size(study.base, source, "base.") if uses_full or _full_only_named(study) else None
    if uses_full:
        update: dict[str, Any] = {}
        if study.baseline is not None and _baseline_cfg(study, source).data.global_batch_size == FULL_BATCH:
            # the baseline's own training set (it may set its own data.train_subset)
            nb = trial_train_size(_baseline_cfg(study, source), source, "baseline.")
            update["baseline"] = {**study.baseline, BATCH_KEY: nb}
        if study.base.data.global_batch_size == FULL_BATCH:
            data = study.base.data.model_copy(update={"global_batch_size": n})
            update["base"] = study.base.model_copy(update={"data": data})
        if FULL_BATCH in listed:
            assert entry is not None  # `listed` is empty without a search entry
            kind = next(k for k in entry if k != "per_batch")
            update["search"] = {**study.search, BATCH_KEY: {**entry, kind: [n if v == FULL_BATCH else v
                                                                            for v in entry[kind]]}}
        study = study.model_copy(update=update)
    if n is not None:
        _check_full_only(study, n, source)
    return study


def _full_only_named(study: StudyConfig) -> bool:
    """Whether any trial of the study may use a full_batch_only optimizer (base, baseline or a searched name)."""
    names = {study.base.optim.name} | set(_searched_names(study))
    if study.baseline is not None:
        names.add(_baseline_cfg(study, "<study>").optim.name)
    return any(_full_only(name) for name in names)


def _full_only(name: Any) -> bool:
    from largebatch.optim import OPTIMIZERS

    return isinstance(name, str) and name in OPTIMIZERS and OPTIMIZERS.get(name).full_batch_only


def _searched_names(study: StudyConfig) -> list[Any]:
    """Optimizer names a grid/choice lists: `optim.name` values, or `name` in `optim` bundles."""
    out: list[Any] = []
    if "optim.name" in study.search:
        out += SearchDomain.of(study.search["optim.name"]).values()
    if "optim" in study.search:
        out += [v.get("name", study.base.optim.name) for v in SearchDomain.of(study.search["optim"]).values()
                if isinstance(v, dict)]
    return out


def _point_optimizer(study: StudyConfig, point: dict[str, Any]) -> Any:
    if "optim.name" in point:
        return point["optim.name"]
    if isinstance(point.get("optim"), dict):
        return point["optim"].get("name", OPTIM_DEFAULT_NAME)
    return study.base.optim.name


OPTIM_DEFAULT_NAME = TrialConfig().optim.name


def _check_full_only(study: StudyConfig, n: int, source: str) -> None:
    def bad_at(prefix: str):
        return lambda field, msg: BadInput(msg, source=source, field=prefix + field)

    base_searched = BATCH_KEY in study.search or "optim.name" in study.search or "optim" in study.search
    if not base_searched:
        check_full_batch_only(study.base, _batch(study.base.data.global_batch_size, n), n, bad_at("base."))
    if study.baseline is not None:
        cfg = _baseline_cfg(study, source)
        nb = trial_train_size(cfg, source, "baseline.")  # it may set its own data.train_subset
        check_full_batch_only(cfg, _batch(cfg.data.global_batch_size, nb), nb, bad_at("baseline."))
    names = [v for v in _searched_names(study) if _full_only(v)]
    if not names and _full_only(study.base.optim.name) and base_searched:
        names = [study.base.optim.name]
    if names and not any(grid_admits(study, p, n) and _full_only(_point_optimizer(study, p))
                         for p in _points(study)):
        batches = SearchDomain.of(study.search[BATCH_KEY]).values() if BATCH_KEY in study.search else \
            [study.base.data.global_batch_size]
        raise BadInput(f"{names[0]!r} runs only at the full batch ({n} examples: {names[0]} steps by each "
                       f"gradient's sign, which mini-batches flip), and the study's batches are {batches}; add "
                       f"full to data.global_batch_size", source=source,
                       field="search.optim.name" if "optim.name" in study.search else "search.optim")


def _batch(b: Any, n: int) -> int:
    return n if b == FULL_BATCH else int(b)


def _points(study: StudyConfig) -> list[dict[str, Any]]:
    """The grid's combinations of the batch and optimizer entries (the others do not matter here)."""
    import itertools

    keys = [k for k in (BATCH_KEY, "optim.name", "optim") if k in study.search]
    lists = [SearchDomain.of(study.search[k]).values() for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)] if keys else [{}]


def grid_admits(study: StudyConfig, point: dict[str, Any], train_size: int | None = None) -> bool:
    """False for a grid point that puts a full_batch_only optimizer (rprop) at a batch below the training set: the
    grid searcher leaves it out (it is refused as a trial). True for the rest, and wherever the search varies the
    data (each trial's resolve() checks it then)."""
    name = _point_optimizer(study, point)
    if not _full_only(name) or data_varies(study):
        return True
    n = train_size if train_size is not None else trial_train_size(study.base, "<study>", "base.")
    return _batch(point.get(BATCH_KEY, study.base.data.global_batch_size), n) >= n
