"""Heads: a block's output to predictions, per sample (pooled) or per token and pixel
(`dense`), in any of the layouts a boundary tensor has."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Layout = Literal["nchw", "nhwc", "nlc", "ncl", "nc", "ncdhw", "ndhwc"]
"""How a boundary tensor is laid out (batch first): channels first (`nc`, `ncl`, `nchw`,
`ncdhw`: features, sequences or signals, image maps, video maps) or channels last (`nlc`,
`nhwc`, `ndhwc`). One sample has `len(layout) - 1` axes."""


# ---------------------------------------------------------------- layouts

LAYOUTS: dict[int, tuple[Layout, ...]] = {
    1: ("nc",), 2: ("ncl", "nlc"), 3: ("nchw", "nhwc"), 4: ("ncdhw", "ndhwc")
}  # fmt: skip
"""The layouts a sample of so many axes may have, channels first before channels last."""
CHANNELS_LAST: tuple[Layout, ...] = ("nlc", "nhwc", "ndhwc")


class LayoutError(ValueError):
    """No auxiliary serves a tensor of this shape in this layout."""


def check_layout(shape: tuple[int, ...], layout: str) -> None:
    """Refuse a sample `shape` (no batch axis) that `layout` cannot describe."""
    fits = LAYOUTS.get(len(shape), ())
    if layout not in fits:
        served = fits or [f for fs in LAYOUTS.values() for f in fs]
        raise LayoutError(f"{list(shape)} is not `{layout}`; heads serve {', '.join(served)}")


def channels_first(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """NC / NCL / NCHW / NCDHW view of `x`."""
    return x.movedim(-1, 1) if layout in CHANNELS_LAST else x


def channels_last_as(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Back from channels first to `layout` (the inverse of `channels_first`)."""
    return x.movedim(1, -1) if layout in CHANNELS_LAST else x


def pool(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Global average over the spatial, temporal or token axes of a channels-first tensor."""
    return x if layout == "nc" else x.flatten(2).mean(dim=2)


def channels(shape: tuple[int, ...], layout: Layout) -> int:
    """The channels of one sample of this `shape` (no batch axis)."""
    return shape[-1] if layout in CHANNELS_LAST else shape[0]


def spatial(shape: tuple[int, ...], layout: Layout) -> list[int]:
    """The spatial, temporal or token sizes of one sample of this `shape`."""
    if layout == "nc":
        return []
    return list(shape[:-1]) if layout in CHANNELS_LAST else list(shape[1:])


# ---------------------------------------------------------------- heads (features -> logits)


def per_position(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer over the channels of a channels-first tensor, at every position (a 1x1 conv)."""
    out: torch.Tensor = layer(x.movedim(1, -1)).movedim(-1, 1)
    return out


def dense_layout(shape: tuple[int, ...], layout: Layout) -> None:
    """Refuse a feature vector where a prediction per token or pixel is wanted."""
    if layout == "nc":
        raise LayoutError(
            f"{list(shape)} is a feature vector; a prediction per token or pixel needs "
            "a sequence or a map: cut before the pooling (`partition.cuts`), or set "
            "`task.targets: class`"
        )


class LinearHead(nn.Module):
    """Global average pooling (over every axis but the channels), with `norm` BatchNorm1d
    (AugLocal's head at depth 1), and one Linear layer. `dense`: no pooling, the Linear at
    every token or pixel (logits channels first: `(B, classes, T)` or `(B, classes, h, w)`),
    `norm` then a BatchNorm over the channels of that rank (1d, 2d or 3d)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        layout: Layout,
        num_classes: int,
        norm: bool = False,
        dense: bool = False,
    ) -> None:
        super().__init__()
        check_layout(shape, layout)
        if dense:
            dense_layout(shape, layout)
        self.layout, self.dense = layout, dense
        c = channels(shape, layout)
        norms = _CONVS[len(spatial(shape, layout))][1] if dense else nn.BatchNorm1d
        self.norm = norms(c) if norm else nn.Identity()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = channels_first(h, self.layout)
        if self.dense:
            return per_position(self.fc, self.norm(x))
        out: torch.Tensor = self.fc(self.norm(pool(x, self.layout)))
        return out


class ConvHead(nn.Module):
    """`depth` conv-BN-ReLU layers at `width` channels, pooling, Linear-ReLU to `hidden`,
    Linear. Conv2d on image maps (stride 2 while the map is larger than 8x8), Conv1d on
    sequences (stride 2 while longer than 64), Conv3d on video maps (stride 2 along each axis
    longer than 8); channels-last tensors are moved to channels first. `dense`: no pooling,
    the Linear layers at every position, sequences never strided (a label per token).
    `causal`: each token's prediction sees only it and the tokens before (a language model's
    next-token targets): the convolutions are padded on the left alone and have no
    BatchNorm, whose batch statistics would mix in later tokens."""

    def __init__(
        self,
        shape: tuple[int, ...],
        layout: Layout,
        num_classes: int,
        depth: int = 1,
        width: int | None = None,
        hidden: int = 128,
        dense: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_layout(shape, layout)
        if dense or causal:
            dense_layout(shape, layout)
        self.layout, self.dense = layout, dense or causal
        c = channels(shape, layout)
        width = width or 2 * c
        sizes = spatial(shape, layout)
        if causal and len(sizes) != 1:
            raise LayoutError(
                f"{list(shape)} is not a sequence; causal heads (`next_token` targets) take "
                "sequences: set `task.targets: per_token` or `pixel`, or cut where tokens flow"
            )
        keep = self.dense and len(sizes) == 1
        self.convs = nn.Sequential(*_conv_stack(c, width, depth, sizes, keep, causal))
        out = width if depth and layout != "nc" else c
        self.mlp = nn.Sequential(
            nn.Linear(out, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.convs(channels_first(h, self.layout))
        if self.dense:
            return per_position(self.mlp, x)
        out: torch.Tensor = self.mlp(pool(x, self.layout))
        return out


def _conv_stack(
    c: int, width: int, depth: int, sizes: list[int], keep: bool = False, causal: bool = False
) -> list[nn.Module]:
    if not sizes:
        return []
    conv, norm = _CONVS[len(sizes)]
    layers: list[nn.Module] = []
    if causal:  # sequences only (dense_layout refused the rest): left padding, no BatchNorm
        for i in range(depth):
            layers += [nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(c if i == 0 else width, width, 3)]
            layers += [nn.ReLU(inplace=True)]
        return layers
    for i in range(depth):
        stride, sizes = (1, sizes) if keep else _strides(sizes)
        layers += [conv(c if i == 0 else width, width, 3, stride, 1, bias=False)]
        layers += [norm(width), nn.ReLU(inplace=True)]
    return layers


_CONVS: dict[int, tuple[type[nn.Module], type[nn.Module]]] = {
    1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)
}  # fmt: skip


def _strides(sizes: list[int]) -> tuple[int | tuple[int, ...], list[int]]:
    """One conv's stride over maps of these `sizes` (video: per axis); the sizes after it."""
    limit = min(sizes) > (8 if len(sizes) == 2 else 64)
    strides = [2 if (n > 8 if len(sizes) == 3 else limit) else 1 for n in sizes]
    after = [(n + s - 1) // s for n, s in zip(sizes, strides, strict=True)]
    return (tuple(strides) if len(sizes) == 3 else strides[0]), after
