"""A tiny registry: name -> (object, one-line description).

Scaling rules, schedules, optimizers, models and datasets all register here so the CLI can list them and
tests can parametrize over every entry (timm style: a variant is a registration, not a subclass).
A lazy entry (`add_lazy`) names its object as "module:attribute", imported on first `get`: a lower layer can list
and check the names (config/ checks tuner.searcher before Ray) while the upper layer (tune/) holds what they build.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attribute", until get() imports it

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str) -> T:
        return self.register(name, description)(obj)

    def add_lazy(self, name: str, target: str, description: str) -> None:
        """An entry whose object is `target` ("package.module:attribute"), imported when first asked for."""
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ValueError(f"{self.kind} {name!r}: lazy target {target!r} is not 'module:attribute'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._lazy[name] = target
        self._entries[name] = Entry(name, None, description)  # type: ignore[arg-type]  # filled in by get()

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        if name in self._lazy:
            module, _, attr = self._lazy.pop(name).partition(":")
            entry = self._entries[name]
            self._entries[name] = Entry(name, getattr(importlib.import_module(module), attr), entry.description)
        return self._entries[name].obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def describe(self) -> str:
        width = max((len(n) for n in self._entries), default=0)
        return "\n".join(f"  {e.name:<{width}}  {e.description}" for e in self._entries.values())
