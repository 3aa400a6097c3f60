"""The run folder (`--out`), checked before anything is built: writable, and not another
package's run. `run.json` records which package and spec wrote it:

    {"package": "resnet_cifar", "fingerprint": "b66cec1db555d3bf", "spec_sha256": "…",
     "package_path": "/abs/build/resnet_cifar"}

`package` is the package folder's name, `fingerprint` the model's (spec.lock.yaml's
`package.fingerprint`), `spec_sha256` the first 16 hex digits of spec.lock.yaml's SHA-256.
Writing into a folder another package recorded is refused unless `--resume`, which warns when
the package or the spec differ and proceeds."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from flags import DEFAULT_OUT
from settings import HERE, PACKAGE, TEXT, FlagError

RUN = "run.json"
WRITTEN = ("checkpoint.pt", "metrics.json", "metrics.jsonl")
"""What a run leaves in its folder: present without run.json, it is a run of unknown origin."""
FIX = f"pass --out a folder you can write to (by default {DEFAULT_OUT})"


def identity() -> dict[str, str]:
    """What run.json records of this package."""
    return {
        "package": HERE.name,
        "fingerprint": PACKAGE["fingerprint"],
        "spec_sha256": hashlib.sha256(TEXT.encode()).hexdigest()[:16],
        "package_path": str(HERE),
    }


def open_run(args: argparse.Namespace, lead: bool) -> Path:
    """Check the paths this run writes and reads (`--out`, `--export`, `--resume`'s
    checkpoint) and, on the lead process, stamp `--out` with run.json; the folder."""
    out = Path(args.out)
    if args.export:
        check_file(Path(args.export), "--export")
    if out.exists() and not out.is_dir():
        raise FlagError(f"--out {out} is a file, not a folder; {FIX}")
    recorded = read_record(out)
    if args.resume is None:
        refuse_foreign(out, recorded)
    else:
        where = Path(args.resume or out / "checkpoint.pt")
        if not where.is_file():
            flag = f"--resume {args.resume}" if args.resume else f"--resume (--out {out})"
            raise FlagError(f"{flag}: no checkpoint at `{where}`; pass the checkpoint.pt of a run")
        if lead:
            for folder in dict.fromkeys([where.parent.resolve(), out.resolve()]):
                warn_foreign(folder, recorded if folder == out.resolve() else read_record(folder))
    make_folder(out)
    if lead:
        stamp(out)
    return out


def make_folder(folder: Path) -> None:
    """Create `--out` (and its parents), or say why it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FlagError(f"--out {folder} cannot be created: {why(folder, error)}; {FIX}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FlagError(f"--out {folder} is not writable; {FIX}")


def check_file(path: Path, flag: str) -> None:
    """A file the run writes at the end: not a folder, and in a folder that exists or can be
    made, and can be written."""
    if path.is_dir():
        raise FlagError(f"{flag} {path} is a folder; pass {flag} a file name, e.g. weights.pt")
    parent = nearest(path.parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "a file, not a folder" if not parent.is_dir() else "not writable"
        raise FlagError(f"{flag} {path} cannot be written: `{parent}` is {what}; pass another path")


def nearest(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def why(folder: Path, error: OSError) -> str:
    found = nearest(folder)
    if not found.is_dir():
        return f"`{found}` is a file, not a folder"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"`{found}` is not writable"
    return error.strerror or str(error)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The run.json in `folder` (None where there is none)."""
    path = folder / RUN
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FlagError(
            f"`{path}` is not a run record ({error}); delete it, or pass another --out"
        ) from None
    if not isinstance(record, dict):
        raise FlagError(f"`{path}` is not a run record; delete it, or pass another --out")
    return record


def refuse_foreign(out: Path, recorded: dict[str, Any] | None) -> None:
    """Refuse to write over another package's run (or a run that records none)."""
    fix = f"pass another --out (this package's own is {DEFAULT_OUT})"
    if recorded is None:
        held = [name for name in WRITTEN if (out / name).exists()]
        if held:
            raise FlagError(
                f"--out {out} holds {held[0]} of a run that records no package (no {RUN}); "
                f"{fix}, or --resume to continue it"
            )
    elif recorded.get("package") != HERE.name:
        raise FlagError(
            f"--out {out} holds a run of package {recorded.get('package')} ({out / RUN}), not "
            f"of {HERE.name}; {fix}, or --resume to continue that run with this package"
        )


def warn_foreign(folder: Path, recorded: dict[str, Any] | None) -> None:
    """One line when a run to resume was written by another package or spec."""
    mine = identity()
    keys = ("package", "fingerprint", "spec_sha256")
    if recorded is None or all(recorded.get(key) == mine[key] for key in keys):
        return
    theirs = ", ".join(f"{key} {recorded.get(key)}" for key in keys)
    ours = ", ".join(f"{key} {mine[key]}" for key in keys)
    print(
        f"warning: --resume: {folder} was written by {theirs}; this is {ours}; resuming anyway",
        file=sys.stderr,
        flush=True,
    )


def stamp(out: Path) -> None:
    """Write run.json whole (the first write into `--out`: it proves the folder writable)."""
    partial = out / f".{RUN}.tmp"
    try:
        partial.write_text(json.dumps(identity(), indent=2) + "\n")
        partial.replace(out / RUN)
    except OSError as error:
        raise FlagError(f"--out {out} is not writable ({error.strerror}); {FIX}") from None
