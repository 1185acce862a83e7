"""Loading a study: read the YAML, apply `--set` overrides and the `smoke:` block, validate, check names, search
entries and the task. The result is a StudyConfig with tuner.mode and report.tolerance_units filled in."""
from __future__ import annotations

import operator
import posixpath
import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from largebatch.config.names import check_names, check_tuner_names
from largebatch.config.schema import ReportConfig, StudyConfig, TrialConfig, TunerConfig
from largebatch.config.critical import AROUND_CRITICAL
from largebatch.config.fullbatch import full_batch_study
from largebatch.config.search import check_search_key, search_values
from largebatch.config.tree import _parse, apply_overrides, parse_trial
from largebatch.config.yamlread import (  # noqa: F401  (re-exported by largebatch.config)
    MAX_SCALAR, MAX_STUDY_BYTES, YamlLimit, load_yaml_text, parse_sets, parse_value, read_yaml,
)
from largebatch.errors import BadInput, did_you_mean


def load_study(path: str | Path, sets: dict[str, Any] | None = None, *, smoke: bool = False,
               resolved: bool | str = False, workers: Optional[int] = None) -> StudyConfig:
    """Read, override and validate a study YAML. `sets` keys starting with tuner./report./search. address
    those blocks; anything else addresses the trial config (base) and the baseline alike. With `resolved`, base and
    baseline are resolved for `workers` (default tuner.workers_per_trial) and the grid too (check_study_resolves);
    `resolved="trial"` (`train`, which runs one of them) leaves the grid out."""
    source = str(path)
    raw = read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    if smoke:
        if "smoke" not in raw:  # `smoke: {}` says the study is already small: --smoke runs it as it is
            raise BadInput("--smoke, but the study has no smoke: block; add one (smoke: {base: ..., search: ..., "
                           "tuner: ...}, see tune_spaces/fashion-mnist.yaml), or smoke: {} if the study is already "
                           "small, or drop --smoke", source=source, field="smoke")
        sm = raw.get("smoke") or {}
        _check_smoke(sm, source)
        raw = _apply_blocks(raw, {"base": sm.get("base") or {}, "tuner": sm.get("tuner") or {}})
        raw["search"] = {**(raw.get("search") or {}), **(sm.get("search") or {})}
    elif raw.get("smoke") is not None:
        _check_smoke(raw["smoke"], source)
    if sets:
        raw = _apply_blocks(raw, _split_sets(sets))
    study = _parse(StudyConfig, raw, source)
    check_names(study.base, source)
    check_tuner_names(study.tuner, source)
    for key, entry in study.search.items():
        domain = check_search_key(study, key, entry, source)
        grid = study.tuner.searcher == "grid"
        if domain.per_batch and not grid:
            raise BadInput(f"per_batch draws per batch size need tuner.searcher grid, got "
                           f"{study.tuner.searcher!r}; set searcher: grid, or drop per_batch to sample {key} with "
                           f"tuner.num_samples", source=source, field=f"search.{key}")
        if grid and not (domain.listed or domain.per_batch or domain.kind == AROUND_CRITICAL):
            raise BadInput(f"searcher 'grid' takes grid/choice entries only, got {domain.kind}; use searcher random "
                           f"or optuna for continuous ranges, or add per_batch: N to draw N values per batch size",
                           source=source, field=f"search.{key}")
    check_grid_size(study, source)
    if study.baseline is not None:
        baseline_trial(study, source)  # validates the overrides
    study = full_batch_study(check_task(study, source), source)  # `full` -> the training-set size; rprop: full only
    if resolved:  # `train` and `tune`: everything `validate` checks, before Ray starts
        check_study_resolves(study, workers if workers is not None else study.tuner.workers_per_trial, source,
                             search=resolved != "trial")
    return hide_searched_credentials(study)


def hide_searched_credentials(study: StudyConfig) -> StudyConfig:
    """The study with every searched value that holds a credential (a URI password, a secret query value) replaced
    by its reference (redact.py hide_credentials), after every check has seen the real values. The searchers, and
    so Tune's trial configs, run names and console lines, see only references; `study.credentials()` maps them back
    (tune/runtime.py trial_spec, on the trial's side)."""
    from largebatch.redact import hide_credentials

    table: dict[str, str] = {}
    search = {key: hide_credentials(entry, table) for key, entry in study.search.items()}
    if not table:
        return study
    hidden = study.model_copy(update={"search": search})
    hidden._credentials = table
    return hidden


def check_train_size(task, base: TrialConfig, source: str) -> int:
    """The task's count of training examples, on the driver: for a data file (npz) that is the whole file checked
    (data/npz.py), so bad data is one line before any process starts; a count that is not a positive int is too."""
    try:
        n = task.train_size(base)
    except BadInput as e:
        if e.source and e.source != source:  # the data file is named: say which study field points at it
            raise BadInput(str(e), field="data.path") from None
        raise
    try:
        count = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise BadInput(f"task {task.name or base.task.name!r}: train_size(cfg) returned {n!r}; return the number of "
                       f"training examples, a positive int", field="task.name")
    return count


def check_study_resolves(study: StudyConfig, workers: int, source: str, search: bool = True
                         ) -> list[tuple[str, dict]]:
    """What `validate` checks past loading, for every command that runs a study file, so `train` and `tune` answer
    bad input before Ray starts: base and the baseline resolved for `workers`, every grid/choice value for
    tuner.workers_per_trial (as `tune` runs them). Returns (label, resolved summary) of base and baseline."""
    from largebatch.config.resolve import resolve
    from largebatch.config.search import check_search_resolves

    rows = [("base", resolve(study.base, workers, source=source).summary())]
    if study.baseline is not None:
        rows.append(("baseline", resolve(baseline_trial(study, source), workers, source=source,
                                         prefix="baseline.").summary()))
    if search:
        check_search_resolves(study, study.tuner.workers_per_trial, source)  # as `tune` will run the grid
    return rows


def eval_subsets(study: StudyConfig) -> list[tuple[str, int]]:
    """(field, value) of every data.eval_subset the study's trials may take: base's, and a grid/choice search's."""
    out = [("base.data.eval_subset", study.base.data.eval_subset)] if study.base.data.eval_subset else []
    entry = study.search.get("data.eval_subset")
    if entry is not None:
        out += [("search.data.eval_subset", v) for v in search_values(entry) if v]
    return out


def check_task(study: StudyConfig, source: str) -> StudyConfig:
    """Before any trial: the task loads and has its parts, its data items are tensors, and tuner.metric is one it
    reports. Returns the study with tuner.mode and report.tolerance_units filled in from the metric's direction."""
    from largebatch.tasks import build_data, load_task
    from largebatch.tasks.api import split_len
    from largebatch.tasks.build import too_many_eval

    t = study.base.task
    subsets = eval_subsets(study)
    try:
        task = load_task(t.name, t.kwargs)
        if task.train_size is not None:
            check_train_size(task, study.base, source)
        if task.train_size is None or subsets:  # a user task, or an eval subset: look at its data once (item 0 of
            # each split, and the eval split's length, against which every data.eval_subset is checked here)
            base = study.base
            if subsets:
                base = base.model_copy(update={"data": base.data.model_copy(update={"eval_subset": None})})
            n_eval = split_len(build_data(task, base).eval)
    except BadInput as e:
        raise e.placed(source, "base.", "task.name") from None
    except Exception as e:  # the user's factory or data() raised: one line here; every trial would fail the same way
        from largebatch.redact import redact_text

        raise BadInput(redact_text(f"task {t.name!r} raised {type(e).__name__}: {e}"[:600]) + " while it was built "
                       "or read its data; fix the task or its task.kwargs", source=source,
                       field="base.task.name") from None
    # a search over the data itself: each trial checks the subset against its own eval split
    if not any(k in ("data.dataset", "data.path") or k.startswith("task.") for k in study.search):
        for field, k in subsets:
            if k > n_eval:
                raise BadInput(too_many_eval(k, n_eval, study.base, task.name or t.name), source=source, field=field)
    reported = task.reported()
    for name in reported:
        check_metric_name(name, t.name, source)
    metric = study.tuner.metric
    if metric not in reported:
        raise BadInput(f"got {metric!r}: task {t.name!r} reports {', '.join(reported)}", source=source,
                       field="tuner.metric")
    mode = reported[metric]
    if study.tuner.mode is not None and study.tuner.mode != mode:
        raise BadInput(f"got {study.tuner.mode!r}, but {metric} is better when {'higher' if mode == 'max' else 'lower'}"
                       f"; use mode: {mode} or drop tuner.mode", source=source, field="tuner.mode")
    units = study.report.tolerance_units or ("points" if mode == "max" else "absolute")
    return study.model_copy(update={"tuner": study.tuner.model_copy(update={"mode": mode}),
                                    "report": study.report.model_copy(update={"tolerance_units": units})})


# MLflow's rule for metric names (mlflow/utils/validation.py, POSIX): a name outside it is refused with the whole
# log_batch it came in, every epoch, while the trial goes on as if logged
_METRIC_NAME = re.compile(r"^[/\w.\- :]*$")
MAX_METRIC_NAME = 250 - len("best_")  # MLflow's key length limit, with the summary prefix the report adds


def check_metric_name(name: str, task: str, source: str) -> None:
    """A metric name MLflow would take: letters, digits, _ - . space : /, no path tricks, at most 245 characters."""
    norm = posixpath.normpath(name) if name else "."
    if (not _METRIC_NAME.match(name) or norm != name or norm.startswith(("..", "/")) or norm == "."
            or len(name) > MAX_METRIC_NAME):
        raise BadInput(f"task {task!r} reports a metric named {name!r}, which MLflow refuses (it would drop every "
                       f"epoch's metrics); name the task's Metric with letters, digits and _ - . only",
                       source=source, field="base.task.name")


MAX_GRID_TRIALS = 10_000  # trials one study may list (grid points x num_samples x seeds)


def check_grid_size(study: StudyConfig, source: str) -> None:
    """The grid's size from the entries' lengths, before anything enumerates it."""
    if study.tuner.searcher != "grid":
        return
    from largebatch.config.search import SearchDomain

    n = study.tuner.num_samples * len(study.tuner.seeds)
    for key, entry in study.search.items():
        domain = SearchDomain.of(entry)
        n *= domain.per_batch or (len(domain.args) if domain.listed else 1)
        if n > MAX_GRID_TRIALS:
            raise BadInput(f"the grid lists more than {MAX_GRID_TRIALS} trials by this entry (search points x "
                           f"tuner.num_samples x tuner.seeds); list fewer values, or use searcher random with "
                           f"num_samples", source=source, field=f"search.{key}")


def _check_smoke(sm: Any, source: str) -> None:
    """The smoke: block's shape, checked whether or not --smoke is given (its values are checked when applied)."""
    if not isinstance(sm, dict):
        raise BadInput(f"got {type(sm).__name__}: smoke must be a mapping with base:, search:, tuner:",
                       source=source, field="smoke")
    for key, value in sm.items():
        if key not in ("base", "search", "tuner"):
            raise BadInput(f"unknown key {str(key)!r}{did_you_mean(key, ('base', 'search', 'tuner'))}; valid keys "
                           f"here: base, search, tuner", source=source, field="smoke")
        if value is not None and not isinstance(value, dict):
            raise BadInput(f"got {type(value).__name__}: smoke.{key} must be a mapping of dotted keys, e.g. "
                           f"{{budget.epochs: 1}}", source=source, field=f"smoke.{key}")


def _split_sets(sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    blocks: dict[str, dict[str, Any]] = {"base": {}, "tuner": {}, "report": {}, "search": {}}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head in ("tuner", "report", "search", "base") and rest:
            blocks[head][rest] = value  # `base.` is optional: base.optim.base_lr == optim.base_lr
        else:
            blocks["base"][key] = value
    return blocks


def _apply_blocks(raw: dict, blocks: dict[str, dict[str, Any]]) -> dict:
    raw = dict(raw)
    for block, overrides in blocks.items():
        if overrides and block == "search":  # search keys are dotted paths themselves: set whole entries
            current = raw.get("search") or {}
            raw["search"] = {**(current if isinstance(current, dict) else {}), **overrides}
        elif overrides:
            current = raw.get(block) or {}
            raw[block] = apply_overrides(current if isinstance(current, dict) else {}, overrides,
                                         model=_BLOCK_MODELS[block])
    if blocks.get("base") and isinstance(raw.get("baseline"), dict):
        # trial-level overrides (--set, smoke) apply to the baseline too, unless the baseline pins that key
        raw["baseline"] = {**blocks["base"], **raw["baseline"]}
    return raw


_BLOCK_MODELS: dict[str, type[BaseModel]] = {"base": TrialConfig, "tuner": TunerConfig, "report": ReportConfig}


def baseline_trial(study: StudyConfig, source: str = "<study>") -> TrialConfig:
    # `data: {global_batch_size: 32}` is `data.global_batch_size: 32`: it leaves data's other keys as base has them
    tree = apply_overrides(study.base.model_dump(), study.baseline or {}, model=TrialConfig)
    return parse_trial(tree, source=source, prefix="baseline.")
