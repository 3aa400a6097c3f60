"""The auxiliary networks a block may train with: one model per `kind`, joined in a union."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt

from schemas.base import SpecModel

Layout = Literal["auto", "nchw", "nhwc", "nlc", "ncl", "nc", "ncdhw", "ndhwc"]


def _kind_required(schema: dict[str, Any]) -> None:
    """In the JSON Schema `kind` is required: it selects the auxiliary (Python has a default)."""
    schema["required"] = ["kind", *(key for key in schema.get("required", []) if key != "kind")]


class _Aux(SpecModel):
    """The options every auxiliary kind takes."""

    model_config = ConfigDict(json_schema_extra=_kind_required)

    kind: str
    """Selects the auxiliary; each kind narrows it to its own name."""
    layout: Layout = "auto"
    """How the boundary tensor is laid out: `nchw`, `nhwc` (image maps), `ncdhw`, `ndhwc`
    (video maps), `nlc`, `ncl` (token sequences, 1-D signals) or `nc` (features). `auto` infers
    it from the nearest op that produces or consumes the tensor and fixes where its channels are
    (conv, batch norm, pooling: first; Linear, LayerNorm: last), through elementwise, residual,
    reshaping ops and permutes."""


class LinearAux(_Aux):
    """Global pooling and one Linear layer to the classes."""

    kind: Literal["linear"] = "linear"
    """Selects this auxiliary: `linear`."""


class ConvAux(_Aux):
    """`depth` conv3x3-BN-ReLU layers, pooling, a `hidden` Linear-ReLU, then Linear (InfoPro's
    `1c2f`; `depth: 0` is DGL's simplest). Token sequences use Conv1d over the token axis."""

    kind: Literal["conv"] = "conv"
    """Selects this auxiliary: `conv`."""
    depth: NonNegativeInt = 1
    """Number of conv3x3-BN-ReLU layers (stride 2 while the map is larger than 8x8); 0 for none."""
    width: PositiveInt | None = None
    """Channels of the conv layers; null means twice the boundary's channels (2C)."""
    hidden: PositiveInt = 128
    """Width of the hidden Linear-ReLU layer before the classifier."""
    variant: Literal["default", "mlp-sr", "auxdgl"] = "default"
    """`mlp-sr`: DGL's default head instead (pool to H/4, three conv1x1-BN-ReLU, pool to 2x2,
    three Linear-BN1d-ReLU at 4C, Linear; `depth`, `width` and `hidden` do not apply);
    `auxdgl`: MAN++'s DGL head (pool to 8x8, three conv1x1-BN-ReLU at 128, global pooling,
    three Linear-BN1d-ReLU at 512, Linear). Both for image maps (NCHW)."""


class InfoProAux(_Aux):
    """InfoPro: a decoder reconstructing the input (BCE) plus InfoPro's classifier, by config
    name, trained with cross entropy or supervised contrastive loss (image maps only)."""

    kind: Literal["infopro"] = "infopro"
    """Selects this auxiliary: `infopro`."""
    lambda1: float | tuple[float, float] = (5.0, 0.5)
    """Weight of the reconstruction loss: one value, or `[first, last]` interpolated linearly
    as `schedule` says (a single auxiliary takes the first)."""
    lambda2: float | tuple[float, float] = (0.0, 1.0)
    """Weight of the classification loss, set like `lambda1`."""
    schedule: Literal["index", "stage"] = "index"
    """How `[first, last]` is interpolated: `index` (InfoPro) by the auxiliary's index k,
    ratio k/(K-2); `stage` (MAN) by the stage of the next unit, ratio stage/(K-2), a stage being
    a run of units at one resolution, numbered from 1. A ratio that gives a weight below zero,
    or both weights zero, is clamped to (K-3)/(K-2)."""
    width: PositiveInt = 12
    """Channels of the decoder's hidden conv3x3-BN-ReLU layer."""
    classifier: Literal["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"] = "1c2f"
    """InfoPro's classifier config `<n>c<m>f`: n conv3x3-BN-ReLU layers (the first doubles the
    channels with stride 2 below 64 channels, keeps them with stride 1 from 64 on), pooling, m
    Linear layers `feature_dim` wide; `0c1f` is pooling and Linear, MAN's default `2c2f`."""
    feature_dim: PositiveInt = 128
    """Width of the classifier's hidden Linear layers, and of its output with `supcon`."""
    loss: Literal["cross_entropy", "supcon"] = "cross_entropy"
    """The classifier's loss: `cross_entropy` on logits, or `supcon` (InfoPro's published
    setting), the supervised contrastive loss on L2-normalised `feature_dim` features, which
    gives no logits: the block's training accuracy is then NaN."""
    temperature: float = Field(default=0.07, gt=0)
    """The `supcon` temperature (the loss is scaled by `temperature / 0.07`, as InfoPro's)."""


class AugmentedAux(_Aux):
    """AugLocal: layers sampled from the rest of the network, built anew (ResNet-style blocks at
    the sampled widths, as AugLocal's code; other units as fresh copies), then a classifier."""

    kind: Literal["augmented"] = "augmented"
    """Selects this auxiliary: `augmented`."""
    depth: PositiveInt = 3
    """Number of sampled units for the first block; later blocks take fewer, set by `tau`."""
    tau: float = Field(default=0.5, ge=0, le=1)
    """How fast the depth shrinks over the blocks, from 0 (constant) to 1 (down to 1 unit)."""


class MlaanAux(_Aux):
    """MLAAN: an independent loss (pooling and Linear) plus a cascaded loss over a window of
    blocks and copies of later layers."""

    kind: Literal["mlaan"] = "mlaan"
    """Selects this auxiliary: `mlaan`."""
    window: int = Field(default=2, ge=1)
    """Number of blocks, this one included, that the cascaded loss trains together."""
    weights: tuple[float, float] = (0.001, 0.999)
    """Weights of the `[independent, cascaded]` losses."""
    leap: list[str] | None = None
    """The model's units the cascade copies after the window, by the cut each ends at (`[layer2.0,
    layer3.0, layer3.2, layer3.4]`), the first coupled to an EMA copy; null: AugLocal's rule over
    the units after the block (3 of them). The `mlaan` preset with `partition.paper: mlaan`
    sets MLAAN's lists."""
    decay: float = Field(default=0.999, ge=0, lt=1)
    """The EMA copy's decay (MLAAN's CIFAR default; its README says 0.995)."""
    ema: Literal["last", "every"] = "last"
    """Which EMA copies follow their source: `last`, the last auxiliary's only (MLAAN's CIFAR
    code), or `every` auxiliary's, after its block's backward (its ImageNet code)."""
    first: Literal["cascade", "own"] = "cascade"
    """Block 0's training: `cascade`, only through block 1's cascaded loss, which recomputes it
    (MLAAN's CIFAR code: module 0 has no loss of its own), or `own` MLAAN losses."""
    task_window: PositiveInt = 2
    """Set on the last auxiliary: how many blocks the task loss trains together, the last one
    included, recomputed like a cascade (MLAAN's CIFAR code: the last two modules)."""

    LEAP_DEPTH: ClassVar[int] = 3
    """Leap units sampled after the block (AugLocal's rule), the first one EMA-coupled."""
    LEAP_TAU: ClassVar[float] = 0.5

    def cascade(self, block: int) -> int:
        """Blocks the cascaded loss of block `block` trains: the window, or all up to it."""
        return min(self.window, block + 1)


def loss_windows(configs: Sequence[object]) -> list[int]:
    """How many blocks each block's loss trains, for the auxiliaries of blocks 0..K-2: MLAAN's
    cascade (capped at the blocks before it), else 1; and the last block's task loss: the last
    auxiliary's `task_window` when it is MLAAN's, else 1."""
    windows = [c.cascade(k) if isinstance(c, MlaanAux) else 1 for k, c in enumerate(configs)]
    last = configs[-1] if configs else None
    task = min(last.task_window, len(configs) + 1) if isinstance(last, MlaanAux) else 1
    return [*windows, task]


def first_trained_by_cascade(configs: Sequence[object]) -> bool:
    """Whether block 0 has no loss of its own (MLAAN's `first: cascade`): only when the loss of
    block 1 (an auxiliary's cascade, or the task window) recomputes it."""
    first = configs[0] if configs else None
    windows = loss_windows(configs)
    return isinstance(first, MlaanAux) and first.first == "cascade" and windows[1] >= 2


HeadConfig = Annotated[
    LinearAux | ConvAux | InfoProAux | AugmentedAux | MlaanAux, Field(discriminator="kind")
]
"""The head on top of a `momentum` auxiliary: any kind but `momentum`."""


class MomentumAux(_Aux):
    """MAN/MAN++: a trainable and an EMA copy of the next block's first unit, then a head."""

    kind: Literal["momentum"] = "momentum"
    """Selects this auxiliary: `momentum`."""
    decay: float = Field(default=0.995, gt=0, lt=1)
    """EMA decay of the frozen copy, strictly between 0 and 1: `ema = decay*ema + (1-decay)*src`."""
    init: Literal["copy", "fresh"] = "fresh"
    """`fresh` (MAN's and MAN++'s code) starts both copies from new random weights, He-normal
    convolutions and BatchNorm at 1 and 0 as the papers' CIFAR ResNets; `copy` from the next
    block's weights."""
    learnable_scale: bool = True
    """Mix the copies with a learnable scale `s` (MAN++); false fixes `s` at 1 (MAN)."""
    recompute: bool = True
    """Recompute the EMA copy's activations in the backward instead of holding them: the same
    values and gradients, about one copy's activations held instead of two, one more forward."""
    head: HeadConfig = ConvAux()
    """The auxiliary on top of the mixed copies, sized from their output: any non-momentum kind."""


AuxConfig = Annotated[
    LinearAux | ConvAux | MomentumAux | InfoProAux | AugmentedAux | MlaanAux,
    Field(discriminator="kind"),
]
"""One auxiliary network, selected by its `kind`."""

AUX_KINDS: tuple[str, ...] = ("linear", "conv", "momentum", "infopro", "augmented", "mlaan")
"""Every auxiliary kind, in the order the docs list them."""
