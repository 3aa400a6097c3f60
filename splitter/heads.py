"""Auxiliary heads (`linear`, `conv`, InfoPro's decoder) for any boundary layout."""

from __future__ import annotations

from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

Layout = Literal["nchw", "nhwc", "nlc", "ncl", "nc"]
_CHANNELS_LAST_OPS = (nn.Linear, nn.LayerNorm)
_CHANNELS_FIRST_OPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d)


def default_layout(shape: tuple[int, ...]) -> Layout:
    """By rank (batch included): 4 -> NCHW, 3 -> NLC (tokens), else NC."""
    return {4: "nchw", 3: "nlc"}.get(len(shape), "nc")  # type: ignore[return-value]


def infer_layout(gm: fx.GraphModule, node: fx.Node, shape: tuple[int, ...]) -> Layout:
    """The layout of `node`'s value: from the nearest op before it that fixes one (a conv or
    BatchNorm: channels first; Linear or LayerNorm: channels last), through elementwise and
    residual ops; by rank where nothing fixes it."""
    rank_default = default_layout(shape)
    if rank_default == "nc":
        return "nc"
    current: fx.Node | None = node
    for _ in range(64):
        if current is None or current.op == "placeholder":
            break
        if current.op == "call_module":
            module = gm.get_submodule(str(current.target))
            if isinstance(module, _CHANNELS_FIRST_OPS):
                return "nchw" if len(shape) == 4 else "ncl"
            if isinstance(module, _CHANNELS_LAST_OPS):
                return "nhwc" if len(shape) == 4 else "nlc"
        if _reorders(current):
            break
        current = next(iter(current.all_input_nodes), None)
    return rank_default


def _reorders(node: fx.Node) -> bool:
    name = str(getattr(node.target, "__name__", node.target))
    return name in {"permute", "transpose", "flatten", "reshape", "view"}


def channels_first(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """NCHW / NCL / NC view of `x`."""
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    if layout == "nlc":
        return x.transpose(1, 2)
    return x


def pool(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Global average over the spatial or token axes of a channels-first tensor."""
    return x if layout == "nc" else x.flatten(2).mean(dim=2)


def channels(shape: tuple[int, ...], layout: Layout) -> int:
    return shape[-1] if layout in ("nhwc", "nlc") else shape[1]


def _spatial(shape: tuple[int, ...], layout: Layout) -> list[int]:
    if layout == "nchw":
        return list(shape[2:])
    if layout == "nhwc":
        return list(shape[1:3])
    if layout == "ncl":
        return [shape[2]]
    if layout == "nlc":
        return [shape[1]]
    return []


class LinearHead(nn.Module):
    """Global average pooling and one Linear layer."""

    def __init__(self, shape: tuple[int, ...], layout: Layout, num_classes: int) -> None:
        super().__init__()
        self.layout = layout
        self.fc = nn.Linear(channels(shape, layout), num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(pool(channels_first(h, self.layout), self.layout))
        return out


class ConvHead(nn.Module):
    """`depth` conv-BN-ReLU layers at `width` channels (stride 2 while the map is larger than
    8x8, or the sequence longer than 64 tokens), pooling, Linear-ReLU to `hidden`, Linear."""

    def __init__(
        self,
        shape: tuple[int, ...],
        layout: Layout,
        num_classes: int,
        depth: int = 1,
        width: int | None = None,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.layout = layout
        c = channels(shape, layout)
        self.convs = nn.Sequential(*_conv_stack(c, width or 2 * c, depth, _spatial(shape, layout)))
        out = (width or 2 * c) if depth and layout != "nc" else c
        self.mlp = nn.Sequential(
            nn.Linear(out, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(pool(self.convs(channels_first(h, self.layout)), self.layout))
        return out


def _conv_stack(c: int, width: int, depth: int, spatial: list[int]) -> list[nn.Module]:
    if not spatial:
        return []
    conv, norm, limit = (
        (nn.Conv2d, nn.BatchNorm2d, 8) if len(spatial) == 2 else (nn.Conv1d, nn.BatchNorm1d, 64)
    )
    layers: list[nn.Module] = []
    size = min(spatial)
    for i in range(depth):
        stride = 2 if size > limit else 1
        size = (size + 1) // stride if stride == 2 else size
        layers += [
            conv(c if i == 0 else width, width, 3, stride, 1, bias=False),
            norm(width),
            nn.ReLU(inplace=True),
        ]
    return layers


class InfoProDecoder(nn.Module):
    """Reconstructs the un-normalised input in [0, 1]: bilinear upsampling to the input size,
    conv3x3-BN-ReLU to `width`, conv3x3 to the input channels, sigmoid."""

    def __init__(
        self, shape: tuple[int, ...], layout: Layout, image: tuple[int, ...], width: int = 12
    ) -> None:
        super().__init__()
        self.check(layout, image)
        self.layout, self.size = layout, tuple(image[1:])
        self.conv1 = nn.Conv2d(channels(shape, layout), width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, image[0], 3, 1, 1)

    @staticmethod
    def check(layout: Layout, image: tuple[int, ...]) -> None:
        """Refuse what the decoder cannot serve: it needs image maps and an image input."""
        if layout not in ("nchw", "nhwc") or len(image) != 3:
            raise ValueError(
                f"the infopro decoder reconstructs images: the boundary is `{layout}` and the "
                f"input {list(image)}; use the `linear`, `conv` or `momentum` auxiliary here"
            )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(channels_first(h, self.layout), size=self.size, mode="bilinear")
        return torch.sigmoid(self.conv2(F.relu(self.bn(self.conv1(x)))))
