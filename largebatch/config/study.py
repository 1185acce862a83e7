"""Loading a study: read the YAML, apply `--set` overrides and the `smoke:` block, validate, check names, search
entries and the task. The result is a StudyConfig with tuner.mode and report.tolerance_units filled in."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from largebatch.config.names import check_names, check_tuner_names
from largebatch.config.schema import StudyConfig, TrialConfig
from largebatch.config.critical import AROUND_CRITICAL
from largebatch.config.search import check_search_key, search_values
from largebatch.config.tree import _parse, apply_overrides, parse_trial
from largebatch.errors import BadInput


class _StudyLoader(yaml.SafeLoader):
    """YAML as people write numbers: PyYAML's YAML 1.1 rules read `1e-3` and `1.5e3` as strings (they want a dot
    and a signed exponent); here they are floats, as in YAML 1.2 and every other tool."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """The one YAML reader for studies and --set values, so both read `1e-3` the same way."""
    return yaml.load(text, Loader=_StudyLoader)  # a SafeLoader: no Python objects


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 0.1 -> float, [1,2] -> list, linear -> str."""
    try:
        return load_yaml_text(text)
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"got {item!r}; write key=value, e.g. optim.base_lr=0.1", source=source)
        out[key.strip()] = parse_value(value)
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BadInput("no such file; give the path of a study YAML (see tune_spaces/)", source=str(path))
    try:
        data = load_yaml_text(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise BadInput(f"malformed YAML{where}: {problem}; fix the syntax", source=str(path)) from None
    if not isinstance(data, dict):
        raise BadInput(f"the top level must be a mapping with name:, base:, search:, ...; got "
                       f"{type(data).__name__}", source=str(path))
    return data


def load_study(path: str | Path, sets: dict[str, Any] | None = None, *, smoke: bool = False) -> StudyConfig:
    """Read, override and validate a study YAML. `sets` keys starting with tuner./report./search. address
    those blocks; anything else addresses the trial config (base) and the baseline alike."""
    source = str(path)
    raw = read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    if smoke:
        sm = raw.get("smoke") or {}
        if not isinstance(sm, dict):
            raise BadInput("smoke must be a mapping with base:, search:, tuner:", source=source, field="smoke")
        raw = _apply_blocks(raw, {"base": sm.get("base") or {}, "tuner": sm.get("tuner") or {}})
        raw["search"] = {**(raw.get("search") or {}), **(sm.get("search") or {})}
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
    if study.baseline is not None:
        baseline_trial(study, source)  # validates the overrides
    return check_task(study, source)


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

    def at(field: str, e: BadInput) -> BadInput:
        msg = str(e)
        if e.field and msg.startswith(f"{e.field}: "):
            msg = msg[len(e.field) + 2:]
        return BadInput(msg, source=source, field="base." + (e.field or field))

    t = study.base.task
    subsets = eval_subsets(study)
    try:
        task = load_task(t.name, t.kwargs)
        if task.train_size is None or subsets:  # a user task, or an eval subset: look at its data once (item 0 of
            # each split, and the eval split's length, against which every data.eval_subset is checked here)
            base = study.base
            if subsets:
                base = base.model_copy(update={"data": base.data.model_copy(update={"eval_subset": None})})
            n_eval = split_len(build_data(task, base).eval)
    except BadInput as e:
        raise at("task.name", e) from None
    # a search over the data itself: each trial checks the subset against its own eval split
    if not any(k in ("data.dataset", "data.path") or k.startswith("task.") for k in study.search):
        for field, k in subsets:
            if k > n_eval:
                raise BadInput(too_many_eval(k, n_eval, study.base, task.name or t.name), source=source, field=field)
    reported = task.reported()
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
            raw[block] = apply_overrides(current if isinstance(current, dict) else {}, overrides)
    if blocks.get("base") and isinstance(raw.get("baseline"), dict):
        # trial-level overrides (--set, smoke) apply to the baseline too, unless the baseline pins that key
        raw["baseline"] = {**blocks["base"], **raw["baseline"]}
    return raw


def baseline_trial(study: StudyConfig, source: str = "<study>") -> TrialConfig:
    tree = apply_overrides(study.base.model_dump(), study.baseline or {})
    return parse_trial(tree, source=source, prefix="baseline.")
