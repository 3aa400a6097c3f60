"""The layout of a boundary tensor, inferred from the ops before it; the heads re-exported."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from splitter.runtime.auxiliary import ConvHead, Layout, LinearHead
from splitter.runtime.infopro import InfoProDecoder, InfoProHead

__all__ = [
    "ConvHead", "InfoProDecoder", "InfoProHead", "Layout", "LinearHead", "default_layout",
    "infer_layout",
]  # fmt: skip
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
