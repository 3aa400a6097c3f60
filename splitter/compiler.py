"""`splitter compile`: analyse the model, plan the split, render the package, write it whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from schemas import LoadedSpec, load_spec, parse_spec
from splitter.analysis import analyze
from splitter.emit import RUNTIME_FILES, model_name, package_files
from splitter.errors import SplitterError, UsageError
from splitter.files import umask
from splitter.modelref import ModelOptions, merge_options
from splitter.modelsource import model_source
from splitter.plan import Plan, plan_for, spec_model_ref

FORMATTER = ("ruff", "0.17.6")
"""The pinned formatter of the emitted code (a dependency of splitter)."""
DEFAULT_BLOCKS = 4
GENERATED = ("blocks.py", "model.py", *RUNTIME_FILES)
"""The package's Python files that splitter writes (a copied model file is the user's)."""


@dataclass
class Compiled:
    """A written package: where, from which plan, and what was decided along the way."""

    out: Path
    plan: Plan
    files: list[str]
    notes: list[str] = field(default_factory=list)


def compile_package(
    model: str | None,
    spec_path: str | None,
    options: ModelOptions,
    *,
    out: str | None = None,
    force: bool = False,
    blocks: int | None = None,
    aux: str | None = None,
) -> Compiled:
    """Compile MODEL (or the spec's `model.ref`) split as SPEC says into a training package;
    without SPEC, `blocks` (default 4) memory-balanced blocks with `aux` (default momentum)."""
    from splitter import __version__

    loaded, notes = resolve_spec(spec_path, blocks, aux)
    ref = model or (spec_model_ref(spec_path, loaded) if spec_path else None)
    if not ref:
        raise UsageError("no MODEL given; pass MODEL (e.g. `torchvision:resnet18`) and/or SPEC")
    merged, warnings = merge_options(options, loaded.spec)
    spec = loaded.spec
    analysis = analyze(ref, merged, root=spec.model.root, auto_leaf=spec.trace.auto_leaf)
    analysis.model.warnings.extend(warnings)
    plan = plan_for(analysis, loaded)
    sources = {"model": ref, **({"spec": spec_path} if spec_path else {})}
    source = model_source(ref)
    files = package_files(plan, source, sources, __version__, merged.model_args)
    target = Path(out or spec.output.dir or default_out(ref))
    generated = [n for n in GENERATED if n in files and (n != "model.py" or not source.copied)]
    write_package(files, target, force, generated)
    return Compiled(target, plan, sorted(files), notes)


def resolve_spec(
    spec_path: str | None, blocks: int | None, aux: str | None
) -> tuple[LoadedSpec, list[str]]:
    """The spec file, with `--blocks`/`--aux` applied; without one, the default plan."""
    if spec_path is None:
        count, kind = blocks or DEFAULT_BLOCKS, aux or "momentum"
        note = (
            f"no SPEC: {count} blocks balanced on memory (`partition.auto`), `{kind}` "
            "auxiliaries; write a spec (`splitter partition -o spec.yaml`) to choose"
        )
        document = {"version": 1, "partition": {"auto": {"blocks": count}}}
        return _parsed(document, kind, "<default spec>"), [note]
    loaded = load_spec(spec_path)
    if blocks is None and aux is None:
        return loaded, []
    document = loaded.spec.model_dump(mode="json", exclude_defaults=True)
    if blocks is not None:
        balance = loaded.spec.partition.auto.balance if loaded.spec.partition.auto else "memory"
        document["partition"] = {"auto": {"blocks": blocks, "balance": balance}}
    return _parsed(document, aux, spec_path), []


def _parsed(document: dict[str, object], aux: str | None, source: str) -> LoadedSpec:
    if aux is not None:
        document["aux"] = {"default": {"kind": aux}}
    return parse_spec(yaml.safe_dump(document, sort_keys=False), source)


def default_out(ref: str) -> str:
    """`build/<model name>` (see `model_name`)."""
    return f"build/{model_name(ref)}"


# ---------------------------------------------------------------- writing


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
    if out.exists() and not out.is_dir():
        raise UsageError(f"output `{out}` is a file; pass -o with a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise UsageError(
            f"output folder `{out}` is not empty; pass --force to replace it, or -o another folder"
        )
    if not (out / "spec.lock.yaml").is_file():
        raise UsageError(
            f"output folder `{out}` is not a splitter package (no spec.lock.yaml), so --force "
            "will not replace it; pass -o a new or empty folder"
        )


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
