"""The model options every command that takes MODEL shares (DESIGN 1.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, get_args

import typer

from schemas.auxiliary import AUX_KINDS
from schemas.spec import AutoPartition, OptimizerConfig
from splitter.errors import UsageError
from splitter.frontend.inputs import DTYPES, parse_dtype, parse_input_shape
from splitter.frontend.modelref import PRECISIONS, ModelOptions, check_precision, parse_model_args

OutputFormat = Literal["table", "json"]
FORMATS: tuple[str, ...] = get_args(OutputFormat)
BALANCES: tuple[str, ...] = get_args(AutoPartition.model_fields["balance"].annotation)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerConfig.model_fields["name"].annotation)
CHOICES: dict[str, tuple[str, ...]] = {
    "format": FORMATS,
    "balance": BALANCES,
    "aux": AUX_KINDS,
    "optimizer": OPTIMIZERS,
}
"""The values of each option that takes one of a list, from the spec's models."""


def either(values: Sequence[str]) -> str:
    """`a, b or c`, for help texts."""
    return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else "".join(values)


def check_choices(**given: str | None) -> None:
    """Each given option's value is one of `CHOICES` (usage errors exit 2)."""
    for name, value in given.items():
        if value is not None and value not in CHOICES[name]:
            allowed = ", ".join(CHOICES[name])
            raise UsageError(f"--{name} `{value}` is unknown; use one of {allowed}")


ModelRef = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="`path/model.py` (calls build_model), `path/model.py:NAME`, `torchvision:NAME` "
        "or `timm:NAME`. Loading a model file runs its code.",
        show_default=False,
    ),
]
ModelArg = Annotated[
    list[str] | None,
    typer.Option(
        "--model-arg",
        metavar="K=V",
        help="An argument of the model builder (a Python literal); repeatable.",
    ),
]
InputShape = Annotated[
    list[str] | None,
    typer.Option(
        metavar="SHAPE",
        help="Shape of one sample without the batch, any rank: `3,224,224` or `128`; once per "
        "input for a forward that takes several, in order.",
    ),
]
InputDtype = Annotated[
    list[str] | None,
    typer.Option(
        metavar="DTYPE",
        help=f"Input dtype: {either(list(DTYPES))} (default float32); once per input, in order.",
    ),
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, metavar="N", help="Batch size for cost estimates (default 32).")
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        metavar="PRECISION",
        help=f"{either(PRECISIONS)} (default: the spec's, else fp32).",
    ),
]
Leaf = Annotated[
    list[str] | None,
    typer.Option(
        "--leaf", metavar="FQN", help="Module FQN or class path not to trace into; repeatable."
    ),
]
Format = Annotated[
    str,
    typer.Option(
        "--format",
        metavar="FORMAT",
        help="`table` (rich, stdout) or `json` (stdout: JSON only).",
    ),
]
Plot = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        help="Draw the block graph and its memory into this .svg, .png or .html file.",
    ),
]
Wide = Annotated[
    bool,
    typer.Option(
        "--wide", help="Show every table column, however wide (default: fit the terminal)."
    ),
]


def model_options(
    model_arg: list[str] | None,
    input_shape: list[str] | None,
    input_dtype: list[str] | None,
    batch_size: int | None,
    precision: str | None,
    leaf: list[str] | None,
) -> ModelOptions:
    """Parse the shared model options into `ModelOptions` (usage errors exit 2)."""
    shapes: list[tuple[int, ...] | None] = [parse_input_shape(s) for s in input_shape or []]
    dtypes: list[str | None] = list(input_dtype or [])
    for dtype in dtypes:
        parse_dtype(str(dtype))
    count = max(len(shapes), len(dtypes), 1)
    shapes += [None] * (count - len(shapes))
    dtypes += [None] * (count - len(dtypes))
    return ModelOptions(
        model_args=parse_model_args(model_arg or []),
        input_shape=shapes[0],
        input_dtype=dtypes[0],
        more_inputs=tuple(zip(shapes[1:], dtypes[1:], strict=True)),
        batch_size=batch_size,
        precision=check_precision(precision) if precision else None,
        leaves=tuple(leaf or ()),
    )
