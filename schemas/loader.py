"""Reading a split spec from YAML: every problem reported at once, each at its line and column."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.errors import SpecError, SplitterError
from schemas.positions import Mark, Marks, locate, read_yaml
from schemas.positions import Path as KeyPath
from schemas.problems import Problem, describe
from schemas.spec import SplitSpec

_FIX = "check the indentation, colons, brackets and quotes here"
_FIX_CONSTRUCTOR = "write plain values: no `!!python` or custom tags, no lists or mappings as keys"


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec and where each of its values was written, for messages about them."""

    spec: SplitSpec
    source: str
    """The file name as given, or `<spec>` for text."""
    positions: Mapping[tuple[str | int, ...], tuple[int, int]]
    """The 1-based (line, column) of every value written in the YAML, by key path, e.g.
    `("partition", "cuts", 2)`; `()` is the document itself."""

    def where(self, *path: str | int) -> str:
        """`<source>, line N, column M` of the longest prefix of `path` that was written."""
        line, column = locate(self.positions, path)
        return f"{self.source}, line {line}, column {column}"

    def problem(self, path: tuple[str | int, ...], message: str) -> str:
        """`message` about the value at `path`, prefixed with where it was written."""
        return f"{self.where(*path)}: {message}"


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate the spec file at `path`.

    Raises SpecError listing every problem, or SplitterError when the file cannot be read.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise SplitterError(f"spec file `{path}` {what}; check the path")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise SplitterError(f"cannot read spec file `{path}`: {error.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        message = f"the file is not UTF-8 text (byte {data[error.start]:#04x}); save it as UTF-8"
        raise SpecError([f"{path}, line {line}, column {column}: {message}"]) from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<spec>") -> LoadedSpec:
    """Validate the spec in the YAML `text`; `source` names it in messages.

    Raises SpecError listing every problem, each as `<source>, line N, column M: what; the fix`.
    """
    try:
        data, marks = read_yaml(text)
    except yaml.YAMLError as error:
        raise SpecError([_yaml_problem(error, source, text)]) from None
    except RecursionError:
        raise SpecError([f"{source}, line 1, column 1: the YAML nests too deeply"]) from None
    spec, found = _validate(data, marks)
    if spec is None or found:
        raise SpecError(_listed(found, source), document=data, positions=marks.values)
    return LoadedSpec(spec, source, marks.values)


def _validate(data: object, marks: Marks) -> tuple[SplitSpec | None, list[tuple[Mark, str]]]:
    """The spec in `data` (None when invalid) and every problem found, each with its place."""
    found = [(locate(marks.keys, path), _duplicate(path)) for path in marks.duplicates]
    if not isinstance(data, dict):
        return None, [*found, ((1, 1), _not_a_mapping(data))]
    try:
        return SplitSpec.model_validate(data), found
    except ValidationError as error:
        return None, found + [_place(marks, problem) for problem in describe(error.errors(), data)]


def _place(marks: Marks, problem: Problem) -> tuple[Mark, str]:
    table = marks.keys if problem.at_key and problem.path in marks.keys else marks.values
    return locate(table, problem.path), problem.message


def _listed(found: list[tuple[Mark, str]], source: str) -> list[str]:
    """The problems in the order of the file, each prefixed with its place."""
    ordered = sorted(found, key=lambda item: item[0])
    return [
        f"{source}, line {line}, column {column}: {message}" for (line, column), message in ordered
    ]


def _duplicate(path: KeyPath) -> str:
    key = path[-1]
    return f"key `{key}` is given twice here, and YAML keeps only the last one; remove one of them"


def _not_a_mapping(data: object) -> str:
    if data is None:
        return "the spec is empty; write at least `version: 1` and a `partition:`"
    found = type(data).__name__.replace("dict", "mapping").replace("list", "list of items")
    return (
        f"the spec should be a mapping of keys such as `version: 1` and `partition:`, not a {found}"
    )


def _yaml_problem(error: yaml.YAMLError, source: str, text: str) -> str:
    """The YAML error at its place: the scanner's or parser's mark, or the reader's position."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "unreadable YAML"
        context = f" ({error.context})" if error.context and error.problem else ""
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        fix = _FIX_CONSTRUCTOR if isinstance(error, yaml.constructor.ConstructorError) else _FIX
        return f"{source}, line {line}, column {column}: invalid YAML: {what}{context}; {fix}"
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        message = f"invalid YAML: the character U+{code:04X} is not allowed; remove it"
        return f"{source}, line {line}, column {column}: {message}"
    return f"{source}, line 1, column 1: invalid YAML: {error}"
