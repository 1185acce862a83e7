"""Reading study files and --set values: YAML, bounded, before anything else looks at them (docs/design.md §10).

A study file is untrusted input: its size, nesting depth, value lengths and alias-expanded size are bounded while it
is read (PyYAML's own reader has no bounds: ten anchors in 1 KB expand to a million values), a key given twice in one
mapping is an error, and the file must be UTF-8. Every crossing is one BadInput line naming the file and the place.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from largebatch.errors import BadInput

# Study files and --set values are untrusted input: bounded before and while they are read (docs/design.md §10)
MAX_STUDY_BYTES = 1 << 20  # a study is a few KB; the largest in tune_spaces/ is under 10 KB
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_NODES = 100_000  # values in the document with every alias expanded (anchors that double at each level stop here)
MAX_SCALAR = 10_000  # characters in one value or key


class YamlLimit(Exception):
    """A bound of the reader was crossed; `mark` is where (or None)."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.mark = mark


class _StudyLoader(yaml.SafeLoader):
    """YAML as people write numbers: PyYAML's YAML 1.1 rules read `1e-3` and `1.5e3` as strings (they want a dot
    and a signed exponent); here they are floats, as in YAML 1.2 and every other tool. Bounded: nesting depth and
    scalar length while composing, the alias-expanded size before anything is constructed; a key given twice in
    one mapping is an error, not the last one silently winning."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimit(f"nested deeper than {MAX_DEPTH} levels; flatten the structure",
                                self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR:
            raise YamlLimit(f"a value of {len(node.value)} characters, over the {MAX_SCALAR} allowed; shorten it",
                            node.start_mark)
        return node

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error follows
                if first is not key_node:
                    raise YamlLimit(f"key {key!r} is given twice in one mapping (first at line "
                                    f"{first.start_mark.line + 1}); keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _check_expanded(root) -> None:
    """The document's size and depth with every alias expanded, computed once per distinct node (linear in the
    file): ten anchors that each list the previous one twice are 1 KB of YAML and 2**10 times its values."""
    memo: dict[int, tuple[int, int]] = {}

    def walk(node, level: int) -> tuple[int, int]:
        if level > MAX_DEPTH:
            raise YamlLimit(f"nested deeper than {MAX_DEPTH} levels with its aliases expanded; flatten the "
                            f"structure or use fewer aliases", node.start_mark)
        got = memo.get(id(node))
        if got is not None:
            return got
        size, depth = 1, 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            n, d = walk(child, level + 1)
            size, depth = size + n, max(depth, d + 1)
            if size > MAX_NODES:
                raise YamlLimit(f"expands to more than {MAX_NODES} values (YAML aliases repeat what their anchor "
                                f"holds); write the values out or use fewer aliases", child.start_mark)
        memo[id(node)] = (size, depth)
        return size, depth

    walk(root, 1)


def load_yaml_text(text: str) -> Any:
    """The one YAML reader for studies and --set values, so both read `1e-3` the same way. A SafeLoader (no Python
    objects), bounded (MAX_*): raises yaml.YAMLError for bad syntax and YamlLimit for a bound crossed."""
    if len(text) > MAX_STUDY_BYTES:
        raise YamlLimit(f"{len(text)} characters, over the {MAX_STUDY_BYTES} allowed; a study is a few KB")
    loader = _StudyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlLimit(f"nested deeper than {MAX_DEPTH} levels; flatten the structure") from None
    finally:
        loader.dispose()


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 0.1 -> float, [1,2] -> list, linear -> str."""
    try:
        return load_yaml_text(text)
    except YamlLimit as e:
        raise BadInput(f"got a value that {e}", source="--set") from None
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"got {item!r}; write key=value, e.g. optim.base_lr=0.1", source=source)
        if len(item) > MAX_SCALAR:
            raise BadInput(f"got {len(item)} characters, over the {MAX_SCALAR} allowed; shorten it", source=source,
                           field=key.strip()[:80])
        out[key.strip()] = parse_value(value)
    return out


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"))


def _decode(raw: bytes, source: str) -> str:
    """UTF-8 only (a UTF-8 byte-order mark is allowed): a UTF-16 file or stray Latin-1 bytes are one line."""
    for bom, name in _BOMS:
        if raw.startswith(bom) or (name == "UTF-16" and len(raw) > 1 and b"\x00" in raw[:2]):
            raise BadInput(f"the file is {name}-encoded; save it as UTF-8", source=source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInput(f"not UTF-8: byte 0x{raw[e.start]:02x} at line {line}; save the file as UTF-8",
                       source=source) from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise BadInput("no such file; give the path of a study YAML (see tune_spaces/)", source=source)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_STUDY_BYTES + 1)
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror}); give a readable study YAML", source=source) from None
    if len(raw) > MAX_STUDY_BYTES:
        raise BadInput(f"over {MAX_STUDY_BYTES} bytes; a study is a few KB: give the study YAML itself",
                       source=source)
    try:
        data = load_yaml_text(_decode(raw, source))
    except YamlLimit as e:
        where = f" at line {e.mark.line + 1}, column {e.mark.column + 1}" if e.mark else ""
        raise BadInput(f"YAML{where}: {e}", source=source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or "invalid YAML"
        if isinstance(e, yaml.reader.ReaderError):
            problem = f"unacceptable character #x{e.character:04x} at position {e.position}" \
                if isinstance(e.character, int) else str(problem)
        raise BadInput(f"malformed YAML{where}: {problem}; fix the syntax", source=source) from None
    if not isinstance(data, dict):
        raise BadInput(f"the top level must be a mapping with name:, base:, search:, ...; got "
                       f"{type(data).__name__}", source=source)
    return data


