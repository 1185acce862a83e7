"""Errors a person can act on.

`BadInput` is raised for anything the user can fix (config, paths, URIs, credentials). The CLI prints its
one-line message and exits 2, with no traceback. The message names the file, the field, the value and the fix.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user-fixable problem. str(e) is the single line shown to the user."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        prefix = ""
        if source:
            prefix += f"{printable(source)}: "
        if field:
            prefix += f"{printable(field)}: "
        super().__init__(prefix + printable(" ".join(message.split())))
        self.message = message

    def placed(self, source: str, prefix: str, default_field: str) -> "BadInput":
        """The same error, as seen from a study file: its field under `prefix` (e.g. 'base.'), else default_field."""
        return BadInput(self.message, source=source, field=prefix + (self.field or default_field))


def printable(text: str) -> str:
    """`text` with control characters (newlines, terminal escape sequences, ...) written as escapes: a key or a
    file name from the user reaches the terminal as one inert line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def did_you_mean(value: Any, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(value), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, value: Any, options: Iterable[str]) -> str:
    options = list(options)
    return f"unknown {kind} {value!r}{did_you_mean(value, options)}; valid: {', '.join(options)}"
