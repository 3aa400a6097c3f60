"""The library's entry points, one per command: `load` a model under its spec's settings, then
plan, partition, verify or compile it. The CLI calls these and nothing deeper."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from schemas import LoadedSpec, load_spec, parse_size, parse_spec
from splitter.analysis import Analysis, analyze
from splitter.analysis.costs import Balance
from splitter.codegen.emit import GENERATED, model_name, package_files
from splitter.codegen.modelsource import model_source
from splitter.codegen.writer import write_package
from splitter.errors import ArgumentError, SpecError
from splitter.frontend.modelref import ModelOptions, merge_options, split_file_ref
from splitter.partitioning.partitioner import (
    Partition,
    partition_blocks,
    partition_budget,
    settings_from,
)
from splitter.partitioning.plan import Plan, plan_for, with_cut_problems
from splitter.transform.verify import Verification, verify_plan
from splitter.version import __version__

DEFAULT_BLOCKS = 4
"""Blocks of `compile` without a spec."""


@dataclass
class Compiled:
    """A written package: where, from which plan, and what was decided along the way."""

    out: Path
    plan: Plan
    files: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Loaded:
    """A model analysed under the settings of its spec (when there is one)."""

    analysis: Analysis
    spec: LoadedSpec | None
    ref: str
    """The model reference analysed (MODEL, else the spec's `model.ref`)."""
    options: ModelOptions
    """The model options in force: the caller's, else the spec's, else the defaults."""
    notes: list[str] = field(default_factory=list)


def load(
    model: str | None,
    spec: str | LoadedSpec | None = None,
    options: ModelOptions | None = None,
) -> Loaded:
    """Resolve MODEL (else the spec's `model.ref`), merge the model options with the spec's
    (the caller's win, with a warning where they differ) and analyse the model."""
    loaded = load_spec(spec) if isinstance(spec, str) else spec
    ref = model or spec_model_ref(loaded)
    options = options or ModelOptions()
    merged, notes = merge_options(options, loaded.spec) if loaded else (options, [])
    section = loaded.spec if loaded else None
    analysis = analyze(
        ref,
        merged,
        root=section.model.root if section else None,
        auto_leaf=section.trace.auto_leaf if section else True,
    )
    analysis.model.warnings.extend(notes)
    return Loaded(analysis, loaded, ref, merged)


def spec_model_ref(loaded: LoadedSpec | None) -> str:
    """The spec's `model.ref` (a file found beside the spec when not in the working folder)."""
    if loaded is None:
        raise ArgumentError(
            "pass {model}, or {spec} with a spec that sets `model.ref`", "model", "spec"
        )
    ref = _relative_to(loaded.source, loaded.spec.model.ref)
    if not ref:
        raise ArgumentError(
            f"no {{model}} given and `{loaded.source}` has no `model.ref`; pass {{model}} "
            "(e.g. `examples/resnet_cifar/model.py`) or set `model.ref` in the spec",
            "model",
        )
    return ref


def _relative_to(spec_path: str, ref: str | None) -> str | None:
    """A model file in `model.ref` is found from the working folder, else from the spec's."""
    if not ref or ref.startswith(("torchvision:", "timm:")):
        return ref
    path, attr = split_file_ref(ref)
    beside = Path(spec_path).parent / path
    if Path(path).exists() or not beside.exists():
        return ref
    return str(beside) if attr == "build_model" else f"{beside}:{attr}"


def plan(model: str | None, spec_path: str, options: ModelOptions) -> Plan:
    """Load the spec, analyse the model it names (MODEL first), check the spec's cuts and
    auxiliaries against the model, and cut it into blocks."""
    try:
        loaded = load_spec(spec_path)
    except SpecError as error:
        raise with_cut_problems(error, model, spec_path, options) from None
    return plan_for(load(model, loaded, options).analysis, loaded)


def verify(
    model: str | None, spec_path: str, options: ModelOptions, batch_size: int = 2
) -> tuple[Plan, Verification]:
    """The plan of `plan`, checked on the real model with a batch of `batch_size`."""
    checked = plan(model, spec_path, options)
    return checked, verify_plan(checked, batch_size)


def partition(
    model: str | None = None,
    *,
    blocks: int | None = None,
    budget: int | str | None = None,
    balance: Balance = "memory",
    aux: str | None = None,
    optimizer: str | None = None,
    spec: str | None = None,
    options: ModelOptions | None = None,
) -> Partition:
    """Analyse MODEL (else the spec's `model.ref`) and choose its cuts: `blocks` balanced
    blocks, or the fewest that fit `budget` (bytes, or `8GiB`/`8GB`). The auxiliary and
    optimizer come from the spec, else `momentum` and SGD; `aux` and `optimizer` override them.
    The result keeps the spec it started from (`Partition.spec`)."""
    if (blocks is None) == (budget is None):
        raise ArgumentError("give exactly one of {blocks} and {budget}", "blocks", "budget")
    found = load(model, spec, options)
    section = found.spec.spec if found.spec else None
    settings = settings_from(section, aux, optimizer)
    if blocks is not None:
        result = partition_blocks(found.analysis, blocks, settings, balance)
    else:
        try:
            size = parse_size(budget)  # type: ignore[arg-type]
        except ValueError as e:
            raise ArgumentError(f"{{budget}}: {e}", "budget") from None
        result = partition_budget(found.analysis, size, settings, balance)
    result.spec = section
    return result


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
    loaded, notes = resolve_spec(spec_path, blocks, aux)
    if not model and spec_path is None:
        raise ArgumentError(
            "no {model} given; pass {model} (e.g. `torchvision:resnet18`) and/or {spec}",
            "model",
            "spec",
        )
    found = load(model, loaded, options)
    checked = plan_for(found.analysis, loaded)
    sources = {"model": found.ref, **({"spec": spec_path} if spec_path else {})}
    source = model_source(found.ref)
    files = package_files(checked, source, sources, __version__, found.options.model_args)
    target = Path(out or loaded.spec.output.dir or default_out(found.ref))
    generated = [n for n in GENERATED if n in files and (n != "model.py" or not source.copied)]
    write_package(files, target, force, generated)
    return Compiled(target, checked, sorted(files), notes)


def resolve_spec(
    spec_path: str | None, blocks: int | None, aux: str | None
) -> tuple[LoadedSpec, list[str]]:
    """The spec file, with `blocks`/`aux` applied; without one, the default plan."""
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
