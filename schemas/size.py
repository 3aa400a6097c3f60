"""Memory sizes as people write them (`8GiB`, `512MiB`, `8GB`, `500MB` or a number of bytes), and
as splitter shows them."""

from __future__ import annotations

import re
from fractions import Fraction

UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
"""Every accepted unit and its size in bytes: `KiB` and up are powers of 2, `KB` and up of 10."""

_SIZE = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[a-zA-Z]*)\s*")

SIZE_PATTERN = r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*([KkMmGgTt][Ii]?[Bb]|[Bb])?\s*$"
"""The accepted sizes as a JSON Schema pattern (units in any case, as `parse_size` reads them)."""
_UNITS_FOLDED = {unit.lower(): factor for unit, factor in UNITS.items()}

ACCEPTED = (
    "a whole number of bytes (`1073741824`) or a number with a unit: "
    "`KiB`, `MiB`, `GiB`, `TiB` (powers of 2) or `KB`, `MB`, `GB`, `TB` (powers of 10), "
    "e.g. `8GiB`, `512MiB`, `8GB` or `500MB`"
)
"""The accepted forms, for error messages."""


def parse_size(text: str | int) -> int:
    """The number of bytes `text` stands for: `8GiB` is 8 * 2**30, `8GB` 8 * 10**9.

    Units are matched ignoring case; fractions round down to whole bytes (`1.5KiB` is 1536).
    Raises ValueError naming the value and the accepted forms.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ValueError(f"`{text!r}` is not a size; write {ACCEPTED}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"`{text}` is not a size: sizes cannot be negative; write {ACCEPTED}")
        return text
    match = _SIZE.fullmatch(text)
    factor = _UNITS_FOLDED.get(match["unit"].lower() or "b") if match else None
    if match is None or factor is None:
        raise ValueError(f"`{text}` is not a size; write {ACCEPTED}")
    return int(Fraction(match["number"]) * factor)


def unit_of(text: str | int) -> str | None:
    """The unit `text` is written in, spelled as `UNITS` spells it (`64kib` -> `KiB`); None
    for a bare number of bytes."""
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    written = match["unit"].lower() if match else ""
    return next((unit for unit in UNITS if unit.lower() == written and written != "b"), None)


def mib(n: int, unit: bool = False) -> str:
    """`1,234.5`: bytes in MiB with one decimal (`1,234.5 MiB` with `unit`)."""
    return f"{n / 2**20:,.1f}" + (" MiB" if unit else "")


def show_size(n: int, unit: str | None = None) -> str:
    """`1.50 GiB`, or in MiB below one GiB (`512.0 MiB`); in `unit` when given (`64.0 KiB`)."""
    if unit is not None:
        return f"{n / UNITS[unit]:,.1f} {unit}"
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else mib(n, unit=True)
