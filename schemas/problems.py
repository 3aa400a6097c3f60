"""Pydantic's validation errors rewritten for people: the key, the bad value and the fix."""

from __future__ import annotations

import difflib
import inspect
import json
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails, PydanticUndefined

from schemas.auxiliary import AugmentedAux, ConvAux, InfoProAux, LinearAux, MlaanAux, MomentumAux
from schemas.base import RULE
from schemas.positions import Key, Path
from schemas.spec import SplitSpec

_MISSING_FIX: dict[Path, str] = {
    ("version",): "add `version: 1` at the top",
    ("partition",): "add e.g. `partition: {cuts: [layer2]}` or `partition: {auto: {blocks: 4}}`",
}

_AUX_FIELDS = {
    str(model.model_fields["kind"].default): set(model.model_fields)
    for model in (LinearAux, ConvAux, MomentumAux, InfoProAux, AugmentedAux, MlaanAux)
}
"""The keys of each auxiliary kind, to tell which kind a misplaced option belongs to."""


@dataclass(frozen=True)
class Problem:
    """One problem of a spec: the key path it is about and what to say."""

    path: Path
    message: str
    at_key: bool = False
    """Report it where the key is written rather than where its value starts."""


def describe(errors: Iterable[ErrorDetails], data: object) -> list[Problem]:
    """One problem per bad value in `data`; union alternatives failing together are merged."""
    problems: list[Problem] = []
    reasons: dict[Path, list[str]] = {}
    for error in errors:
        problem = _special(error, data)
        if problem is not None:
            if problem not in problems:
                problems.append(problem)
            continue
        path = _real_path(error["loc"], data)
        reason = _reason(error)
        reasons.setdefault(path, [])
        if reason not in reasons[path]:
            reasons[path].append(reason)
    problems += [_invalid(path, found, data) for path, found in reasons.items()]
    return problems


def _special(error: ErrorDetails, data: object) -> Problem | None:
    """The problems that get a message of their own, or None for a plain bad value."""
    kind, loc = error["type"], error["loc"]
    path = _real_path(loc, data)
    if kind in (RULE, "value_error"):
        at = str(error.get("ctx", {}).get("at", ""))
        path = (*path, *at.split(".")) if at else path
        message = error["msg"].removeprefix("Value error, ")
        return Problem(path, message, _is_container(data, path))
    if kind in ("extra_forbidden", "invalid_key"):
        path = (*_real_path(loc[:-1], data), loc[-1])
        return Problem(path, _unknown_key(path, data), at_key=True)
    if kind == "missing":
        return _missing(path, loc[-1], data)
    if "[key]" in loc:
        return Problem(path, _bad_index(path, error), at_key=True)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _bad_kind(path, error, data)
    if kind in ("model_type", "model_attributes_type"):
        return _not_mapping(path, error, data)
    return None


def _real_path(loc: tuple[int | str, ...], data: object) -> Path:
    """The keys of `loc` that are in `data`: union tags such as `conv` or `int` are left out."""
    path: list[Key] = []
    tag_seen = False
    for key in loc:
        if not tag_seen and isinstance(data, dict) and key == data.get("kind"):
            tag_seen = True
            continue
        found = _child(data, key)
        if found is not None:
            path.append(found[0])
            data, tag_seen = found[1], False
    return tuple(path)


def _child(data: object, key: Key) -> tuple[Key, object] | None:
    if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
        return key, data[key]
    if not isinstance(data, dict):
        return None
    for candidate in (key, str(key) if isinstance(key, int) else key):
        if candidate in data:
            return candidate, data[candidate]
    if isinstance(key, str) and key.isdigit() and key.isascii() and int(key) in data:
        return int(key), data[int(key)]
    return None


def _value(data: object, path: Path) -> object:
    for key in path:
        found = _child(data, key)
        if found is None:
            return None
        data = found[1]
    return data


def _is_container(data: object, path: Path) -> bool:
    return isinstance(_value(data, path), dict | list)


def _unknown_key(path: Path, data: object) -> str:
    key, valid = str(path[-1]), _fields(path[:-1], data)
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"unknown key `{key}`; did you mean `{close[0]}`?"
    listed = ", ".join(f"`{name}`" for name in valid)
    owners = [kind for kind, fields in _AUX_FIELDS.items() if key in fields]
    elsewhere = f" (`{key}` is an option of " + ", ".join(f"`{k}`" for k in owners) + ")"
    return f"unknown key `{key}`; the keys here are {listed}" + (elsewhere if owners else "")


def _missing(path: Path, name: int | str, data: object) -> Problem:
    parent = _value(data, path)
    if isinstance(parent, list):
        message = f"`{_dotted(path)}: {_show(parent)}` has too few items: item {name} is missing"
        return Problem(path, message + _default_hint(path, data))
    fix = _MISSING_FIX.get((*path, str(name)), "add it")
    place = f" in `{_dotted(path)}`" if path else ""
    return Problem(path, f"missing key `{name}`{place}; {fix}", at_key=True)


def _not_mapping(path: Path, error: ErrorDetails, data: object) -> Problem:
    models = _models(_annotation(path, data))
    if len(models) == 1:
        shape = "the keys " + ", ".join(f"`{name}`" for name in models[0].model_fields)
    else:
        shape = "a `kind` (" + ", ".join(f"`{kind}`" for kind in _kinds(models)) + ")"
    message = f"`{_dotted(path)}` should be a mapping with {shape}, not `{_show(error['input'])}`"
    return Problem(path, message, at_key=True)


def _bad_index(path: Path, error: ErrorDetails) -> str:
    return (
        f"`{_show(error['input'])}` in `{_dotted(path[:-1])}` is not a block index; key the "
        "overrides by block number from 0, e.g. `0: {kind: conv, width: 64}`"
    )


def _bad_kind(path: Path, error: ErrorDetails, data: object) -> Problem:
    models = _models(_annotation(path, data))
    kinds = _kinds(models)
    listed = ", ".join(f"`{kind}`" for kind in kinds)
    if error["type"] == "union_tag_not_found":
        typo = _kind_typo(_value(data, path), models, kinds)
        if typo is not None:
            needs = f"`{_dotted(path)}` needs `kind:` with one of {listed}"
            message = f"unknown key `{typo}`; did you mean `kind`? ({needs})"
            return Problem((*path, typo), message, at_key=True)
        message = f"`{_dotted(path)}` has no `kind`; add `kind:` with one of {listed}"
        return Problem(path, message, at_key=True)
    tag = str(error.get("ctx", {}).get("tag", ""))
    close = difflib.get_close_matches(tag, kinds, n=1)
    guess = f"did you mean `{close[0]}`? " if close else ""
    message = f"`{tag}` is not an auxiliary kind here; {guess}use one of {listed}"
    return Problem((*path, "kind"), message)


def _kind_typo(value: object, models: list[type[BaseModel]], kinds: list[str]) -> Key | None:
    """The key of a mapping without `kind` that stands for it: a key no auxiliary has that is
    spelled like `kind` (`knd`, `Kind`) or whose value is a kind (`type: conv`)."""
    if not isinstance(value, dict):
        return None
    known = {name for model in models for name in model.model_fields}
    entries: dict[Key, object] = value
    for key, item in entries.items():
        if str(key) in known:
            continue
        if difflib.get_close_matches(str(key).lower(), ["kind"], cutoff=0.6) or item in kinds:
            return key
    return None


def _kinds(models: list[type[BaseModel]]) -> list[str]:
    return [
        str(model.model_fields["kind"].default) for model in models if "kind" in model.model_fields
    ]


def _reason(error: ErrorDetails) -> str:
    """Pydantic's message about what is accepted, as part of a sentence."""
    message = error["msg"]
    message = re.sub(r"^Input should", "it should", message)
    message = message[:1].lower() + message[1:]
    if error["type"] == "literal_error":
        choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(str(error["input"]), choices, n=1)
        message += f" (did you mean `{close[0]}`?)" if close else ""
    return message


def _invalid(path: Path, reasons: list[str], data: object) -> Problem:
    value = _value(data, path)
    message = f"`{_dotted(path)}: {_show(value)}` is invalid: {'; or '.join(reasons)}"
    return Problem(path, message + _default_hint(path, data), _is_container(data, path))


def _default_hint(path: Path, data: object) -> str:
    """How to fix a bad value: its default, or removing the key when that is allowed."""
    parents = _models(_annotation(path[:-1], data), _value(data, path[:-1])) if path else []
    field = parents[0].model_fields.get(str(path[-1])) if len(parents) == 1 else None
    if field is None or field.is_required():
        return ""
    default = field.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined or isinstance(default, BaseModel):
        return f"; remove `{path[-1]}` to use the default"
    return f"; e.g. `{path[-1]}: {_show(default)}` (the default)"


def _annotation(path: Path, data: object) -> Any:
    """The type annotation of the value at `path`, choosing union members by `kind`."""
    annotation: Any = SplitSpec
    for key in path:
        models = _models(annotation, data)
        if len(models) == 1:
            field = models[0].model_fields.get(str(key))
            annotation = field.annotation if field is not None else None
        else:
            args = get_args(_strip(annotation))
            annotation = args[-1] if get_origin(_strip(annotation)) in (dict, list) else None
        found = _child(data, key)
        data = found[1] if found is not None else None
    return annotation


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _models(annotation: Any, data: object = None) -> list[type[BaseModel]]:
    """The models `annotation` may hold; of a tagged union, the one `data`'s `kind` selects."""
    annotation = _strip(annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    models = [model for arg in get_args(annotation) for model in _models(arg)]
    kind = data.get("kind") if isinstance(data, dict) else None
    chosen = [
        m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == kind
    ]
    return chosen or models


def _fields(path: Path, data: object) -> list[str]:
    models = _models(_annotation(path, data), _value(data, path))
    return list(models[0].model_fields) if len(models) == 1 else []


def _dotted(path: Path) -> str:
    return ".".join(str(key) for key in path) if path else "the spec"


def _show(value: object) -> str:
    """A value as it would be written in the YAML, cut short when long."""
    if isinstance(value, str):
        text = value if value.strip() else json.dumps(value)
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
