"""The spec's `task` section: what the model's outputs train, and on which targets."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import NonNegativeFloat, field_validator

from schemas.base import SpecModel, rule

Targets = Literal["class", "next_token", "per_token", "pixel", "boxes"]
LOSSES = ("cross_entropy", "mse", "bce", "model")
_FUNCTION = r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$"


class TaskSection(SpecModel):
    """What the model's outputs train: the loss and the kind of targets."""

    loss: str = "cross_entropy"
    """The task loss: `cross_entropy`, `mse` or `bce` (both against the targets one-hot),
    `model` (the loss dict a model returns in train mode) or `file.py:function` taking
    (output, target). Every block's local loss is the same loss on its head's prediction."""
    targets: Targets | None = None
    """`class` (one label per sample, output (B, C)), `next_token` (a language model: each
    position's next token, int64 input (B, T) and output (B, T, V)), `per_token` (a label per
    position, output (B, T, C)), `pixel` (a class per pixel, output (B, C, H, W)) or `boxes`
    (a detection model with `loss: model`: boxes and labels per image; the blocks' heads learn
    the class of the box over each pixel). null: inferred from the output's shape and the
    input's dtype (`boxes` with `loss: model`), and printed by `compile`."""
    aux_outputs: dict[int | str, NonNegativeFloat] | None = None
    """Weights of the model's other outputs in the task loss (key or index as `model.output`
    takes it), each the task loss on the same targets: `{aux_logits: 0.4}`. null: 0.4 for
    every other output that has parameters of its own (torchvision's inception recipe); 0
    leaves an output untrained, which verify and compile say."""

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value in LOSSES or re.fullmatch(_FUNCTION, value):
            return value
        raise rule(
            f"`loss: {value}` is not a loss; use {', '.join(f'`{n}`' for n in LOSSES)} or "
            "`file.py:function` (a function taking the output and the targets)"
        )
