"""The library's entry points, one per command: `load` a model under its spec's settings, then
plan, partition, verify or compile it. The CLI calls these and nothing deeper."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from schemas import LoadedSpec, load_spec, parse_size, parse_spec
from schemas.size import unit_of
from schemas.spec import TrainingSection
from splitter.analysis import Analysis, analyze
from splitter.analysis.costs import Balance
from splitter.analysis.task import Task, resolve_task
from splitter.codegen.emit import GENERATED, model_name, package_files
from splitter.codegen.modelsource import model_source
from splitter.codegen.writer import write_package
from splitter.errors import ArgumentError, SpecError
from splitter.frontend.modelref import (
    ModelOptions,
    merge_options,
    parse_model_args,
    split_file_ref,
)
from splitter.partitioning.partitioner import (
    Partition,
    Rules,
    partition_blocks,
    partition_budget,
    settings_from,
)
from splitter.partitioning.plan import Plan, plan_for, with_cut_problems
from splitter.partitioning.specwriter import ref_from
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

    @property
    def task(self) -> Task:
        """The task the package trains on (its targets given or inferred)."""
        return resolve_task(self.plan.analysis, self.plan.spec.spec.task)


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
    ref, found = (model, []) if model else spec_model_ref(loaded)
    options = options or ModelOptions()
    merged, notes = merge_options(options, loaded.spec) if loaded else (options, [])
    section = loaded.spec if loaded else None
    analysis = analyze(
        ref,
        merged,
        root=section.model.root if section else None,
        auto_leaf=section.trace.auto_leaf if section else True,
    )
    analysis.model.warnings.extend([*found, *notes])
    return Loaded(analysis, loaded, ref, merged)


def spec_model_ref(loaded: LoadedSpec | None) -> tuple[str, list[str]]:
    """The spec's `model.ref`, a model file found from the spec's folder (else from the working
    folder, with a note saying so), and the notes."""
    if loaded is None:
        raise ArgumentError(
            "pass {model}, or {spec} with a spec that sets `model.ref`", "model", "spec"
        )
    ref = loaded.spec.model.ref
    if not ref:
        raise ArgumentError(
            f"no {{model}} given and `{loaded.source}` has no `model.ref`; pass {{model}} "
            "(e.g. `examples/resnet_cifar/model.py`) or set `model.ref` in the spec",
            "model",
        )
    return _relative_to(loaded.source, ref)


def _relative_to(spec_path: str, ref: str) -> tuple[str, list[str]]:
    """A model file in `model.ref` is found from the spec's folder, else from the working
    folder (with a note naming the file taken and the ref that names it beside the spec)."""
    if ref.startswith(("torchvision:", "timm:")):
        return ref, []
    path, attr = split_file_ref(ref)
    folder = Path(spec_path).parent
    beside = folder / path
    if beside.exists() or not Path(path).exists():
        return (str(beside) if attr == "build_model" else f"{beside}:{attr}"), []
    fixed = ref_from(folder, ref)
    note = (
        f"`model.ref: {ref}` in `{spec_path}` is not beside the spec (no `{beside}`); took "
        f"`{Path(path).resolve()}` from the working folder. Write `ref: {fixed}` (relative to "
        "the spec's folder) so that the spec finds it from any folder"
    )
    return ref, [note]


def plan(model: str | None, spec_path: str, options: ModelOptions) -> Plan:
    """Load the spec, analyse the model it names (MODEL first), check the spec's cuts and
    auxiliaries against the model, and cut it into blocks."""
    try:
        loaded = load_spec(spec_path)
    except SpecError as error:
        section = error.document.get("model") if isinstance(error.document, dict) else None
        ref = section.get("ref") if isinstance(section, dict) else None
        if not model and isinstance(ref, str) and ref:
            model = _relative_to(spec_path, ref)[0]  # found as a valid spec's would be
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
    rules = Rules.of(section.partition.auto if section else None)
    if blocks is not None:
        result = partition_blocks(found.analysis, blocks, settings, balance, rules)
    else:
        try:
            size = parse_size(budget)  # type: ignore[arg-type]
        except ValueError as e:
            raise ArgumentError(f"{{budget}}: {e}", "budget") from None
        unit = unit_of(budget)  # type: ignore[arg-type]
        result = partition_budget(found.analysis, size, settings, balance, rules, unit)
    found.analysis.model.warnings.extend(result.warnings)
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
    if not model and spec_path is None:
        raise ArgumentError(
            "no {model} given; pass {model} (e.g. `torchvision:resnet18`) and/or {spec}",
            "model",
            "spec",
        )
    loaded, notes = resolve_spec(spec_path, blocks, aux, model, options)
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
    spec_path: str | None,
    blocks: int | None,
    aux: str | None,
    model: str | None = None,
    options: ModelOptions | None = None,
) -> tuple[LoadedSpec, list[str]]:
    """The spec file, with `blocks`/`aux` applied; without one, the default plan for `model`
    (`blocks` memory-balanced blocks at the batch the package trains at) and a note with the
    `splitter partition` command that writes it as a spec."""
    if spec_path is None:
        return _default_spec(model or "MODEL", blocks or DEFAULT_BLOCKS, aux, options)
    loaded = load_spec(spec_path)
    if blocks is None and aux is None:
        return loaded, []
    document = loaded.spec.model_dump(mode="json", exclude_defaults=True)
    if blocks is not None:
        balance = loaded.spec.partition.auto.balance if loaded.spec.partition.auto else "memory"
        document["partition"] = {"auto": {"blocks": blocks, "balance": balance}}
    return _parsed(document, aux, spec_path), []


def _default_spec(
    model: str, count: int, aux: str | None, options: ModelOptions | None
) -> tuple[LoadedSpec, list[str]]:
    """`partition.auto` with `count` blocks; the memory is estimated at the training batch."""
    options, kind = options or ModelOptions(), aux or "momentum"
    batch = options.batch_size or TrainingSection().batch_size
    document = {
        "version": 1,
        "partition": {"auto": {"blocks": count}},
        "training": {"batch_size": batch},
    }
    command = partition_command(model, count, kind, options, batch)
    note = (
        f"no SPEC: {count} blocks balanced on memory (`partition.auto`), `{kind}` auxiliaries; "
        f"memory estimated at batch {batch}, the batch the package trains at (--batch-size sets "
        f"both). To choose the cuts, write a spec with `{command}` and compile it with "
        "`splitter compile spec.yaml`"
    )
    return _parsed(document, kind, "<default spec>"), [note]


def partition_command(
    model: str, blocks: int, aux: str, options: ModelOptions, batch_size: int
) -> str:
    """The `splitter partition` command line that writes this model's spec to `spec.yaml`."""
    words = ["splitter", "partition", model, "--blocks", str(blocks)]
    words += ["--aux", aux] if aux != "momentum" else []
    for key, value in options.model_args.items():
        words += ["--model-arg", f"{key}={_typed(value)}"]
    inputs = [(options.input_shape, options.input_dtype), *options.more_inputs]
    for shape, _ in inputs:
        words += ["--input-shape", ",".join(map(str, shape))] if shape else []
    if any(dtype for _, dtype in inputs):  # given once per input, in order
        for _, dtype in inputs:
            words += ["--input-dtype", dtype or "float32"]
    words += ["--batch-size", str(batch_size)]
    words += ["--precision", options.precision] if options.precision else []
    for leaf in options.leaves:
        words += ["--leaf", leaf]
    return shlex.join([*words, "-o", "spec.yaml"])


def _typed(value: object) -> str:
    """`value` as `--model-arg` reads it back: a string bare unless it reads as a literal."""
    if isinstance(value, str) and parse_model_args([f"v={value}"])["v"] == value:
        return value
    return repr(value)


def _parsed(document: dict[str, object], aux: str | None, source: str) -> LoadedSpec:
    if aux is not None:
        document["aux"] = {"default": {"kind": aux}}
    return parse_spec(yaml.safe_dump(document, sort_keys=False), source)


def default_out(ref: str) -> str:
    """`build/<model name>` (see `model_name`)."""
    return f"build/{model_name(ref)}"
