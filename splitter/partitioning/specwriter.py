"""The partitioner's result as the YAML spec a user would write, each block's cost a comment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from schemas import SplitSpec, mib, parse_spec
from splitter.errors import ArgumentError
from splitter.frontend.modelref import split_file_ref
from splitter.partitioning.partitioner import Partition

SECTION_ORDER = ("version", "model", "trace", "partition", "aux", "training", "output")


def spec_document(
    part: Partition,
    spec: SplitSpec | None,
    aux: str | None,
    optimizer: str | None,
    model_args: Mapping[str, object] | None = None,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """The spec as data: the user's spec (what it sets), the model as analysed with its
    arguments (`model_args` over the spec's `model.kwargs`), the cuts, and the auxiliary,
    optimizer, batch size and precision the costs assumed. A model file is named relative to
    the folder of `path`, the file the spec goes to (else the working folder)."""
    doc: dict[str, Any] = spec.model_dump(mode="json", exclude_unset=True) if spec else {}
    doc["version"] = 1
    doc["model"] = {**doc.get("model", {}), **_model_section(part, path)}
    kwargs = {**doc["model"].get("kwargs", {}), **_plain_args(model_args or {})}
    if kwargs:
        doc["model"]["kwargs"] = kwargs
    doc["partition"] = {"cuts": [c.name for c in part.cuts]}
    if spec is not None and spec.partition.shared_params != "error":
        doc["partition"]["shared_params"] = spec.partition.shared_params
    if aux is not None or "aux" not in doc:
        doc["aux"] = {"default": {"kind": part.settings.aux.default.kind}}
    overrides = doc["aux"].get("blocks", {})
    kept = {k: v for k, v in overrides.items() if int(k) < len(part.blocks) - 1}
    if len(kept) < len(overrides):
        part.analysis.model.warnings.append(
            f"aux.blocks overrides for blocks {sorted(set(overrides) - set(kept))} were left "
            f"out: the partition has {len(part.blocks)} blocks"
        )
    if overrides:
        doc["aux"]["blocks"] = kept
    training = doc.setdefault("training", {})
    training["batch_size"] = part.analysis.model.batch_size
    if part.analysis.model.precision != "fp32":
        training["precision"] = part.analysis.model.precision
    if optimizer is not None:
        training.setdefault("optimizer", {})["name"] = optimizer
    return {key: doc[key] for key in SECTION_ORDER if key in doc}


def _model_section(part: Partition, path: str | Path | None) -> dict[str, Any]:
    model, analysis = part.analysis.model, part.analysis
    ref = ref_from(Path(path).parent, model.ref) if path is not None else model.ref
    section: dict[str, Any] = {"ref": ref}
    if len(model.inputs) > 1:
        section["inputs"] = [
            {"shape": list(i.shape), "dtype": str(i.dtype).removeprefix("torch.")}
            for i in model.inputs
        ]
    else:
        section["input_shape"] = list(model.input.shape)
        dtype = str(model.input.dtype).removeprefix("torch.")
        if dtype != "float32":
            section["input_dtype"] = dtype
    if analysis.root:
        section["root"] = analysis.root
    return section


def ref_from(folder: Path, ref: str) -> str:
    """`ref` as a spec in `folder` names it: a model file relative to that folder (absolute
    when the two share only the file-system root); `torchvision:` and `timm:` refs as they are."""
    if ref.startswith(("torchvision:", "timm:")):
        return ref
    file, attr = split_file_ref(ref)
    target, base = os.path.abspath(file), os.path.abspath(folder)
    shared = Path(os.path.commonpath([target, base]))
    named = target if shared == Path(shared.anchor) else os.path.relpath(target, base)
    return named if attr == "build_model" else f"{named}:{attr}"


def _plain_args(model_args: Mapping[str, object]) -> dict[str, Any]:
    """The model arguments as YAML holds them (tuples as lists)."""
    plain: dict[str, Any] = {}
    for key, value in model_args.items():
        try:
            plain[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise ArgumentError(
                f"{{model_args}} `{key}={value!r}` cannot be written to a spec, which holds "
                f"numbers, strings, lists and mappings; pass `{key}` as one of those",
                "model_args",
            ) from None
    return plain


def spec_yaml(
    part: Partition,
    spec: SplitSpec | None = None,
    aux: str | None = None,
    optimizer: str | None = None,
    *,
    model_args: Mapping[str, object] | None = None,
    path: str | Path | None = None,
) -> str:
    """A complete, valid spec: header comments with the totals, one comment per block. It
    records `model_args` (over the spec's `model.kwargs`) and names a model file relative to
    the folder of `path`, the file it will be written to (else the working folder)."""
    doc = spec_document(part, spec, aux, optimizer, model_args, path)
    chunks = [_header(part)]
    for key, value in doc.items():
        if key == "partition":
            chunks.append(_partition_text(part, value))
        else:
            chunks.append(_section(key, value))
    text = "".join(chunks)
    parse_spec(text, "the written spec")  # the partitioner writes only what the loader accepts
    return text


def _section(key: str, value: object) -> str:
    """`key: value` on one line when short (`aux: {default: {kind: momentum}}` style), else the
    value indented below the key; collections of plain values stay on one line."""
    body = yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip()
    body = body.removesuffix("\n...").strip()
    if "\n" not in body and (not isinstance(value, (dict, list)) or body[0] in "{["):
        return f"{key}: {body}\n"
    return f"{key}:\n" + "".join(f"  {line}\n" for line in body.splitlines())


def _header(part: Partition) -> str:
    model = part.analysis.model
    settings = part.settings
    return (
        f"# Written by `splitter partition`: {len(part.blocks)} blocks balanced by "
        f"{part.balance} (batch {model.batch_size}, {model.precision}, auxiliary "
        f"{settings.aux.default.kind}, {settings.optimizer.name}, optimizer scope "
        f"{settings.scope}).\n"
        f"# Fixed part (parameters and optimizer state, auxiliaries included): "
        f"{mib(part.fixed_bytes, unit=True)}.\n"
        f"# Local peak {mib(part.local_peak_bytes, unit=True)}; end-to-end peak "
        f"{mib(part.e2e_peak_bytes, unit=True)} (saving {part.saving:.1%}).\n"
    )


def _partition_text(part: Partition, section: dict[str, Any]) -> str:
    names = ["input", *(c.name for c in part.cuts), "output"]
    lines = ["partition:", "  cuts:" + ("" if part.cuts else " []")]
    quoted = [scalar(c.name) for c in part.cuts]
    width = max(map(len, quoted), default=0)
    for k, name in enumerate(quoted):
        lines.append(f"    - {name:<{width}}  # {_block_comment(part, k, names)}")
    lines.append(f"  # {_block_comment(part, len(part.blocks) - 1, names)}")
    extra = {k: v for k, v in section.items() if k != "cuts"} or None
    if extra:
        lines += ["  " + line for line in yaml.safe_dump(extra, sort_keys=False).splitlines()]
    return "\n".join(lines) + "\n"


def scalar(text: str) -> str:
    """`text` as a YAML scalar that reads back as that string: quoted where YAML would read a
    number, boolean or null (`'9'`, `'1.0'`, `'true'`, `'null'`) or where it needs quotes."""
    return yaml.safe_dump(text, default_flow_style=True).removesuffix("\n...\n").strip()


def _block_comment(part: Partition, k: int, names: list[str]) -> str:
    b = part.blocks[k]
    sizes = [mib(n, unit=True) for n in (b.activation_bytes, b.aux_activation_bytes, b.grad_bytes)]
    return (
        f"block {k}: {names[k]} -> {names[k + 1]}, variable {mib(b.variable_bytes, unit=True)} "
        f"(activations {sizes[0]}, auxiliary {sizes[1]}, gradients {sizes[2]})"
    )
