"""A model's inputs: their shapes and dtypes from the command line, the spec or the model
file's example_inputs() (a tensor, a tuple of them, or a dict by the forward's names)."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from splitter.errors import ModelLoadError, UsageError

DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool")
}

InputOption = tuple[tuple[int, ...] | None, str | None]


@dataclass(frozen=True)
class InputSpec:
    """One model input: per-sample shape, dtype, and example values when the model file has them."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    example: torch.Tensor | None = None

    def batch(self, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A real batch: the example repeated, else random floats or integer zeros."""
        if self.example is not None:
            reps = math.ceil(size / self.example.shape[0])
            return self.example.repeat(reps, *([1] * len(self.shape)))[:size].clone()
        if self.dtype.is_floating_point:
            return torch.randn((size, *self.shape), generator=generator).to(self.dtype)
        return torch.zeros((size, *self.shape), dtype=self.dtype)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`3,224,224` or `128` (per sample, any rank) to a tuple of positive ints."""
    parts = [p.strip() for p in re.split(r"[,x]", text)]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(
            f"--input-shape `{text}` is not a comma-separated list of positive integers; "
            "give the shape of one sample without the batch, e.g. `--input-shape 3,224,224` "
            "or `--input-shape 128`"
        )
    return tuple(int(p) for p in parts)


def parse_dtype(name: str) -> torch.dtype:
    """A dtype name such as `float32` or `int64`."""
    if name not in DTYPES:
        raise UsageError(f"--input-dtype `{name}` is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def example_inputs_of(
    user_module: ModuleType, path: Path, model: nn.Module
) -> tuple[torch.Tensor, ...] | None:
    """example_inputs(): a batched tensor, a tuple of them (the forward's inputs in order), or
    a dict of them by the forward's parameter names."""
    make = getattr(user_module, "example_inputs", None)
    if make is None:
        return None
    value = make()
    if isinstance(value, dict):
        value = _in_signature_order(value, model, path)
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            raise ModelLoadError(
                f"`{path}`: example_inputs() returned {type(value).__name__} holding "
                f"{type(v).__name__}; return a batched tensor, a tuple of them (the forward's "
                "inputs in order) or a dict of them by parameter name"
            )
    return tuple(v.detach() for v in values) or None


def _in_signature_order(value: dict[str, Any], model: nn.Module, path: Path) -> list[Any]:
    names = list(inspect.signature(model.forward).parameters)
    unknown = [k for k in value if k not in names]
    if unknown:
        raise ModelLoadError(
            f"`{path}`: example_inputs() names `{unknown[0]}`, which forward() does not take; "
            f"use its parameter names ({', '.join(f'`{n}`' for n in names)})"
        )
    given = [n for n in names if n in value]
    missing = [n for n in names[: names.index(given[-1])] if n not in value] if given else []
    if missing:
        raise ModelLoadError(
            f"`{path}`: example_inputs() gives `{given[-1]}` but not `{missing[0]}` before it; "
            "the inputs are the forward's first parameters, so give every one up to the last"
        )
    return [value[n] for n in given]


def resolve_inputs(
    ref: str,
    given: Sequence[InputOption],
    examples: tuple[torch.Tensor, ...],
    default: tuple[int, ...] | None,
    notes: list[str],
) -> tuple[InputSpec, ...]:
    """Each input's (shape, dtype) as `given` by the command line or spec, else example_inputs()'s,
    else the model kind's default for the first (DESIGN 1.1)."""
    count = max(len(given), len(examples))
    inputs = []
    for i in range(count):
        shape, dtype = given[i] if i < len(given) else (None, None)
        example = examples[i] if i < len(examples) else None
        inputs.append(
            _resolve_input(ref, i, shape, dtype, example, default if i == 0 else None, notes)
        )
    return tuple(inputs)


def _resolve_input(
    ref: str,
    index: int,
    shape: tuple[int, ...] | None,
    dtype_name: str | None,
    example: torch.Tensor | None,
    default: tuple[int, ...] | None,
    notes: list[str],
) -> InputSpec:
    example_shape = tuple(example.shape[1:]) if example is not None else None
    which = "" if index == 0 else f" {_ordinal(index)}"
    its = "" if index == 0 else f" (its{which} input)"
    if shape is None and example_shape is None and default is None:
        if index == 0:
            raise UsageError(
                f"`{ref}` defines no example_inputs(), so splitter cannot tell its input shape; "
                "pass --input-shape (per sample, e.g. `3,32,32`) or add `def example_inputs()` "
                "returning a batch to the model file"
            )
        raise UsageError(
            f"the{which} input of `{ref}` has a dtype but no shape; pass --input-shape once "
            f"per input (the{which} one, e.g. `--input-shape 3,32,32 --input-shape 8`) or "
            "list every input in `model.inputs`"
        )
    dtype = parse_dtype(dtype_name) if dtype_name else None
    if example is not None:
        if shape and shape != example_shape:
            notes.append(
                f"--input-shape {','.join(map(str, shape))} overrides the shape "
                f"{','.join(map(str, example_shape or ()))} of example_inputs(){its}"
            )
        if dtype is not None and dtype != example.dtype:
            notes.append(
                f"--input-dtype {dtype_name} overrides the dtype "
                f"{str(example.dtype).removeprefix('torch.')} of example_inputs(){its}"
            )
    resolved = shape or example_shape or default
    assert resolved is not None
    if example is not None and resolved == example_shape:
        if dtype is not None and dtype != example.dtype:
            example = example.to(dtype)
        return InputSpec(resolved, example.dtype, example)
    return InputSpec(resolved, dtype or torch.float32, None)


def _ordinal(index: int) -> str:
    return {1: "second", 2: "third"}.get(index, f"{index + 1}th")
