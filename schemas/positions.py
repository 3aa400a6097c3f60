"""Where each value of a YAML document sits: 1-based (line, column) by key path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

Key = str | int
Path = tuple[Key, ...]
Mark = tuple[int, int]

_MERGE = "tag:yaml.org,2002:merge"


@dataclass
class Marks:
    """The places found while composing a document."""

    values: dict[Path, Mark] = field(default_factory=dict)
    """Where the value at each key path starts."""
    keys: dict[Path, Mark] = field(default_factory=dict)
    """Where the key of each mapping entry starts."""
    duplicates: list[Path] = field(default_factory=list)
    """Keys given twice in one mapping (`keys` holds the place of the last one)."""


def read_yaml(text: str) -> tuple[object, Marks]:
    """The document in `text`, as `yaml.safe_load` gives it, and where each of its values is.

    Raises yaml.YAMLError for malformed YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks = Marks()
        if node is None:
            return None, marks
        marks.values[()] = _mark(node)
        _walk(loader, node, (), marks, ())
        return loader.construct_document(node), marks
    finally:
        loader.dispose()


def _mark(node: yaml.Node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _key(loader: yaml.SafeLoader, node: yaml.Node) -> Key | None:
    """A mapping key as a path element: strings and integers as they are, other scalars as text."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    key = loader.construct_object(node)
    return key if isinstance(key, str) or type(key) is int else str(key)


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path,
    marks: Marks,
    stack: tuple[int, ...],
    merged: bool = False,
) -> None:
    """Record the place of every value below `node`; `merged` values never override others."""
    if id(node) in stack:
        return
    stack = (*stack, id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _put(marks.values, (*path, index), _mark(item), merged)
            _walk(loader, item, (*path, index), marks, stack, merged)
    elif isinstance(node, yaml.MappingNode):
        _walk_mapping(loader, node, path, marks, stack, merged)


def _walk_mapping(
    loader: yaml.SafeLoader,
    node: yaml.MappingNode,
    path: Path,
    marks: Marks,
    stack: tuple[int, ...],
    merged: bool,
) -> None:
    seen: set[Key] = set()
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                _walk(loader, source, path, marks, stack, merged=True)
            continue
        key = _key(loader, key_node)
        if key is None:
            continue
        if key in seen and not merged:
            marks.duplicates.append((*path, key))
        seen.add(key)
        _put(marks.keys, (*path, key), _mark(key_node), merged)
        _put(marks.values, (*path, key), _mark(value_node), merged)
        _walk(loader, value_node, (*path, key), marks, stack, merged)


def _put(table: dict[Path, Mark], path: Path, mark: Mark, merged: bool) -> None:
    if merged:
        table.setdefault(path, mark)
    else:
        table[path] = mark


def _variant(key: Key) -> Key:
    """The same key in the other spelling: `1` for `"1"` and back (pydantic reports either)."""
    if isinstance(key, int):
        return str(key)
    return int(key) if key.isdigit() and key.isascii() else key


def locate(table: Mapping[Path, Mark], path: Path) -> Mark:
    """The place of the longest prefix of `path` in `table`, else line 1, column 1."""
    for end in range(len(path), -1, -1):
        prefix = path[:end]
        for candidate in (prefix, tuple(_variant(key) for key in prefix)):
            if candidate in table:
                return table[candidate]
    return 1, 1
