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
    BatchNorm: channels first; Linear or LayerNorm: channels last), through elementwise,
    residual and reshaping ops, and through permutes and transposes that move the channels;
    by rank where nothing fixes it (swin's NHWC maps and NCL sequences look alike by shape)."""
    rank_default = default_layout(shape)
    if rank_default == "nc":
        return "nc"
    current: fx.Node | None = node
    for _ in range(64):
        if current is None or current.op == "placeholder":
            break
        dims = _reorder_dims(gm, current)
        if dims is not None:
            source = current.all_input_nodes[0]
            before = infer_layout(gm, source, _shape_of(source) or shape)
            return _MOVES.get((before, dims), rank_default)
        first = _channels_first(gm, current)
        if first is not None:
            if len(shape) == 4:
                return "nchw" if first else "nhwc"
            return "ncl" if first else "nlc"
        current = next(iter(current.all_input_nodes), None)
    return rank_default


_MOVES: dict[tuple[str, tuple[int, ...]], Layout] = {
    ("nchw", (0, 2, 3, 1)): "nhwc",
    ("nhwc", (0, 3, 1, 2)): "nchw",
    ("ncl", (0, 2, 1)): "nlc",
    ("nlc", (0, 2, 1)): "ncl",
}


def _shape_of(node: fx.Node) -> tuple[int, ...] | None:
    cost = node.meta.get("splitter")
    return getattr(cost, "shape", None)


def _reorder_dims(gm: fx.GraphModule, node: fx.Node) -> tuple[int, ...] | None:
    """The permutation a permute/transpose node applies (None for other nodes), with
    transposes of a rank-3 value written as a permutation."""
    if node.op == "call_module":
        dims = getattr(gm.get_submodule(str(node.target)), "dims", None)  # torchvision Permute
        return tuple(dims) if isinstance(dims, (list, tuple)) else None
    name = _op(node)
    if name == "permute":
        args = node.args[1:]
        flat = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        ints = [a for a in flat if isinstance(a, int)]
        return tuple(ints) if len(ints) == len(flat) else ()
    if name in ("transpose", "swapaxes") and len(node.args) == 3:
        axes = {int(a) % 3 for a in node.args[1:] if isinstance(a, int)}
        return (0, 2, 1) if axes == {1, 2} else ()
    return None


_FIRST_FUNCTIONS = {"conv1d", "conv2d", "conv3d", "batch_norm"}
_LAST_FUNCTIONS = {"linear", "layer_norm"}


def _op(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _channels_first(gm: fx.GraphModule, node: fx.Node) -> bool | None:
    """True for ops that fix channels first, False for channels last, None for neither."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, _CHANNELS_FIRST_OPS):
            return True
        return False if isinstance(module, _CHANNELS_LAST_OPS) else None
    name = _op(node)
    if name in _FIRST_FUNCTIONS:
        return True
    return False if name in _LAST_FUNCTIONS else None


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
