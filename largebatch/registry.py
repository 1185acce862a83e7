"""A tiny registry: name -> (object, one-line description).

Scaling rules, schedules, optimizers, models and datasets all register here so the CLI can list them and
tests can parametrize over every entry (timm style: a variant is a registration, not a subclass).
"""
from __future__ import annotations

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

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str) -> T:
        return self.register(name, description)(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def describe(self) -> str:
        width = max((len(n) for n in self._entries), default=0)
        return "\n".join(f"  {e.name:<{width}}  {e.description}" for e in self._entries.values())
