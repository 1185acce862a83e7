"""Dotted keys (`optim.base_lr`) over config trees, and pydantic errors as one-line BadInput (file, field, value)."""
from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from largebatch.config.names import check_names
from largebatch.config.schema import TrialConfig
from largebatch.errors import BadInput, did_you_mean


def set_dotted(tree: dict, dotted: str, value: Any) -> dict:
    """Return a copy of nested dict `tree` with `a.b.c` set to value."""
    out = dict(tree)
    head, _, rest = dotted.partition(".")
    if rest:
        sub = out.get(head)
        out[head] = set_dotted(sub if isinstance(sub, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def get_dotted(tree: dict, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and tuples stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _model_fields(model: type[BaseModel], path: tuple) -> list[str]:
    """Valid keys at `path` inside `model` (for did-you-mean)."""
    cls: Any = model
    for part in path:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
    return list(getattr(cls, "model_fields", {}))


_UNION_TAG = re.compile(r"^(?:constrained-[a-z]+|(?:function-[a-z]+|lax-or-strict|json-or-python|tagged-union|"
                        r"is-instance|literal|list|dict|tuple|set|union)\[.*\]|int|float|str|bool|none)$", re.S)


def _pydantic_to_bad_input(err: ValidationError, model: type[BaseModel], source: str, prefix: str) -> BadInput:
    e = err.errors()[0]
    # a Union member's tag ('constrained-int', "literal['full']") is pydantic's, not a key the user wrote
    loc = tuple(p for i, p in enumerate(e["loc"]) if not (i and isinstance(p, str) and _UNION_TAG.match(p)))
    path = prefix + ".".join(str(p) for p in loc)
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        valid = _model_fields(model, loc[:-1])
        msg = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], valid)}; valid keys here: {', '.join(valid)}"
    elif e["type"] == "missing":
        msg = "is required; add it"
    else:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = f"got {shown}: {e['msg'][0].lower() + e['msg'][1:]}"
    return BadInput(msg, source=source, field=path)


def _parse(model: type[BaseModel], data: Any, source: str, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _pydantic_to_bad_input(err, model, source, prefix) from None


def parse_trial(data: dict, source: str = "<config>", prefix: str = "base.") -> TrialConfig:
    cfg = _parse(TrialConfig, data, source, prefix)
    check_names(cfg, source, prefix)
    return cfg


def _submodel(model: Any, dotted: str) -> Any:
    """The pydantic model at `dotted` inside `model`, or None where the path ends at a plain value (a dict field
    such as model.kwargs is a value: it is set whole)."""
    cls = model
    for part in dotted.split("."):
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        cls = field.annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
    return cls


def _dotted_items(overrides: dict[str, Any], model: Any, prefix: str = ""):
    """(dotted key, value) pairs, a nested mapping under a sub-model spelled out key by key."""
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and _submodel(model, dotted) is not None:
            yield from _dotted_items(value, model, dotted + ".")
        else:
            yield dotted, value


def apply_overrides(tree: dict, overrides: dict[str, Any], model: Optional[type[BaseModel]] = None) -> dict:
    """`tree` with each dotted key of `overrides` set. With `model` (the tree's schema), a nested mapping under a
    sub-model sets only the keys it names, as the dotted form does: `data: {global_batch_size: 32}` is
    `data.global_batch_size: 32`, and data's other keys stay."""
    items = _dotted_items(overrides, model) if model is not None else overrides.items()
    for key, value in items:
        tree = set_dotted(tree, key, value)
    return tree
