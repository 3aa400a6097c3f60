"""The model options every command that takes MODEL shares (DESIGN 1.1)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from splitter.frontend.modelref import (
    DTYPES,
    ModelOptions,
    check_precision,
    parse_input_shape,
    parse_model_args,
)

OutputFormat = Literal["table", "json"]

ModelRef = Annotated[
    str,
    typer.Argument(
        help="`path/model.py` (calls build_model), `path/model.py:NAME`, `torchvision:NAME` "
        "or `timm:NAME`. Loading a model file runs its code.",
        show_default=False,
    ),
]
ModelArg = Annotated[
    list[str] | None,
    typer.Option("--model-arg", help="k=v for the model builder (a Python literal); repeatable."),
]
InputShape = Annotated[
    str | None,
    typer.Option(help="Shape of one sample without the batch, any rank: `3,224,224` or `128`."),
]
InputDtype = Annotated[
    str | None, typer.Option(help=f"Input dtype: {', '.join(DTYPES)} (default float32).")
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, help="Batch size for cost estimates (default 32).")
]
PrecisionOpt = Annotated[
    str | None, typer.Option(help="fp32, bf16 or fp16 (default: the spec's, else fp32).")
]
Leaf = Annotated[
    list[str] | None,
    typer.Option("--leaf", help="Module FQN or class path not to trace into; repeatable."),
]
Format = Annotated[
    str, typer.Option("--format", help="`table` (rich, stdout) or `json` (stdout: JSON only).")
]
Plot = Annotated[
    str | None,
    typer.Option(help="Draw the block graph and its memory into this .svg, .png or .html file."),
]


def model_options(
    model_arg: list[str] | None,
    input_shape: str | None,
    input_dtype: str | None,
    batch_size: int | None,
    precision: str | None,
    leaf: list[str] | None,
) -> ModelOptions:
    """Parse the shared model options into `ModelOptions` (usage errors exit 2)."""
    return ModelOptions(
        model_args=parse_model_args(model_arg or []),
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        input_dtype=input_dtype,
        batch_size=batch_size,
        precision=check_precision(precision) if precision else None,
        leaves=tuple(leaf or ()),
    )
