"""Writing a package whole: staged in a temporary folder, formatted, then moved into place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from splitter.errors import ArgumentError, SplitterError
from splitter.files import umask

FORMATTER = ("ruff", "0.17.6")
"""The pinned formatter of the emitted code (a dependency of splitter)."""


def write_package(
    files: Mapping[str, str], out: Path, force: bool, generated: list[str] | None = None
) -> None:
    """Write into a temporary folder beside `out`, format, then move it into place: a failure
    leaves nothing behind, and an existing package is replaced only with `force`."""
    _check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o777 & ~umask())
        for name, text in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        format_python(staging, generated or [])
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_target(out: Path, force: bool) -> None:
    """Refuse a file, a folder of something else, and a package without `force`: each message
    says what is there and what `force` would do."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(
            f"output `{out}` is a file, which {{force}} does not replace; pass {{out}} a folder",
            "out",
            "force",
        )
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "spec.lock.yaml").is_file():
        raise ArgumentError(
            f"output folder `{out}` is not empty; pass {{force}} only to replace a splitter "
            f"package: `{out}` holds {_listing(out)} but no spec.lock.yaml, so it is not a "
            "splitter package and {force} will not replace it; pass {out} a new or empty folder",
            "out",
            "force",
        )
    if not force:
        raise ArgumentError(
            f"output folder `{out}` holds a splitter package (spec.lock.yaml); pass {{force}} "
            "to replace it with the new one, or {out} another folder",
            "force",
            "out",
        )


def _listing(folder: Path) -> str:
    """A few of the folder's entries, e.g. "`data/`, `notes.txt` and 3 more"."""
    names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    shown = [f"`{name}`" for name in names[:3]] + [f"{len(names) - 3} more"] * (len(names) > 3)
    return " and ".join([", ".join(shown[:-1]), shown[-1]]) if len(shown) > 1 else shown[0]


def _swap(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / out.name)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def format_python(folder: Path, names: list[str]) -> None:
    """Format the generated files with the pinned formatter, ignoring any user configuration."""
    if not names:
        return
    command = [sys.executable, "-m", FORMATTER[0], "format", "--isolated", "--no-cache", "--quiet"]
    options = ["--line-length", "100", "--target-version", "py311"]
    try:
        done = subprocess.run(
            [*command, *options, *names], cwd=folder, capture_output=True, text=True, check=False
        )
    except OSError as error:
        raise SplitterError(f"cannot run the formatter: {error}") from None
    if done.returncode != 0:
        raise SplitterError(
            f"the formatter failed on the generated code ({done.stderr.strip()[:500]}); install "
            f"`{FORMATTER[0]}=={FORMATTER[1]}`, or report this as a bug of splitter"
        )
