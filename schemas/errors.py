"""The root of every user-facing splitter error, and the spec's own error.

They live in the lowest layer (`schemas` imports nothing of `splitter`), so that the spec loader
raises them directly; `splitter.errors` re-exports both beside the compiler's errors.
"""

from __future__ import annotations

from collections.abc import Mapping


class SplitterError(Exception):
    """A user-facing failure. The CLI prints the message without a traceback."""

    exit_code = 1


class SpecError(SplitterError):
    """A split spec with problems; every problem is reported at once, each with its place."""

    def __init__(
        self,
        problems: list[str],
        document: object = None,
        positions: Mapping[tuple[str | int, ...], tuple[int, int]] | None = None,
    ) -> None:
        self.problems = list(problems)
        self.document = document  # the parsed YAML, when it parsed, for checks beyond schema
        self.positions = dict(positions or {})
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        super().__init__(f"the split spec has {count}:\n" + "\n".join(f"  {p}" for p in problems))
