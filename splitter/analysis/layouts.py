"""The layout of a boundary tensor, inferred from the ops that produce and consume it; the heads
re-exported.

A sample of 2, 3 or 4 axes (batch aside) has its channels first (NCL, NCHW, NCDHW) or last (NLC,
NHWC, NDHWC); the shape alone cannot tell which (swin's NHWC maps and NCL sequences look alike,
and so do a square map's axes). What can: convolutions, batch/group/instance norms, pooling and
resizing take and give channels first; Linear, LayerNorm over one axis, RMSNorm and embeddings
act on channels last. Two breadth-first walks look for the nearest such op, one back through the
ops that produce the value and one forward through the ops that consume it, carrying the side
of the channels through elementwise and residual ops (same shape), permutes and transposes (the
channels move with their axis), and reshapes, slices, pads and concatenations (the channels
keep the axis, first or last, whose size is theirs). The nearer evidence wins; at equal distance
the consumers' (a token-mixing Linear behind a transpose does not make a mixer's tokens NCL: the
next block's LayerNorm says NLC). Where nothing is found the rank decides: NLC, NCHW, NCDHW."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence

import torch.fx as fx
from torch import nn

from splitter.runtime.auxiliary import LAYOUTS, ConvHead, Layout, LayoutError, LinearHead
from splitter.runtime.infopro import InfoProDecoder, InfoProHead

__all__ = [
    "ConvHead", "InfoProDecoder", "InfoProHead", "Layout", "LayoutError", "LinearHead",
    "default_layout", "infer_layout",
]  # fmt: skip

FIRST, LAST = 0, 1
"""The side of a tensor's channels: right after the batch axis, or the last axis."""
Sides = tuple[int | None, int | None]
"""Where the channels are in one tensor (or lost) for channels first and last in another."""
_SAME: Sides = (FIRST, LAST)
_DEFAULT = {2: LAST, 3: FIRST, 4: FIRST}
"""The side by rank where no op tells: tokens, image maps, video maps."""
_LIMIT = 400
"""Nodes each walk visits at most."""


def default_layout(shape: tuple[int, ...]) -> Layout:
    """By rank (batch included): 2 -> NC, 3 -> NLC (tokens), 4 -> NCHW, 5 -> NCDHW."""
    return _layout(shape, None)


def infer_layout(gm: fx.GraphModule, node: fx.Node, shape: tuple[int, ...]) -> Layout:
    """The layout of `node`'s value (of `shape`, batch included), from the nearest op that
    produces or consumes it and fixes where its channels are (see the module's docstring).
    Raises LayoutError for a rank no auxiliary serves (more than 4 axes after the batch)."""
    if len(shape) <= 2:
        return "nc"
    _layout(shape, None)  # a rank no head serves: refused before searching
    walk = _Walk(gm)
    found = [f for f in (walk.consumers(node), walk.producers(node)) if f is not None]
    nearest = min(found, key=lambda f: f[0]) if found else None  # the consumers' on a tie
    return _layout(shape, nearest[1] if nearest else None)


def _layout(shape: tuple[int, ...], side: int | None) -> Layout:
    axes = max(len(shape) - 1, 1)
    if axes not in LAYOUTS:
        served = ", ".join(f"`{f}`" for fits in LAYOUTS.values() for f in fits)
        raise LayoutError(
            f"a tensor of shape (B, {', '.join(map(str, shape[1:]))}) has {axes} axes after "
            f"the batch; auxiliaries serve 1 to {max(LAYOUTS)}: {served}"
        )
    fits = LAYOUTS[axes]
    return fits[0] if len(fits) == 1 else fits[_DEFAULT[axes] if side is None else side]


class _Walk:
    """The two searches over one graph."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm

    def producers(self, start: fx.Node) -> tuple[int, int] | None:
        """(distance, side) of the nearest op whose output fixes the channels of `start`."""
        queue: deque[tuple[fx.Node, Sides, int]] = deque([(start, _SAME, 0)])
        seen = {start}
        while queue and len(seen) < _LIMIT:
            node, sides, distance = queue.popleft()
            fixed = self.output_side(node)
            if fixed is not None:
                side = sides[fixed]
                if side is not None:
                    return distance, side
                continue
            for source, step in self.inputs(node):
                carried = _compose(sides, step)
                if source not in seen and carried != (None, None):
                    seen.add(source)
                    queue.append((source, carried, distance + 1))
        return None

    def consumers(self, start: fx.Node) -> tuple[int, int] | None:
        """(distance, side) of the nearest op that takes `start`'s value with fixed channels."""
        queue: deque[tuple[fx.Node, Sides, int]] = deque([(start, _SAME, 0)])
        seen = {start}
        while queue and len(seen) < _LIMIT:
            node, sides, distance = queue.popleft()
            for user in node.users:
                fixed = self.input_side(user, node)
                if fixed is not None:
                    side = sides[fixed]
                    if side is not None:
                        return distance + 1, side
                    continue
                step = self.back_to(user, node)
                carried = _compose(sides, step) if step else (None, None)
                if user not in seen and carried != (None, None):
                    seen.add(user)
                    queue.append((user, carried, distance + 1))
        return None

    # ---------------------------------------------------------------- one op

    def inputs(self, node: fx.Node) -> Iterator[tuple[fx.Node, Sides]]:
        """Each input the channels of `node`'s output come from, with where they were in it."""
        out = _shape(node)
        if out is None or len(out) < 3:
            return
        dims = self.permutation(node, len(out))
        if dims is not None:
            if dims and node.all_input_nodes:
                first, last = dims.index(1), dims.index(len(dims) - 1)
                yield node.all_input_nodes[0], (_side(first, dims), _side(last, dims))
            return
        reshaping = self.reshapes(node)
        for source in node.all_input_nodes:
            shape = _shape(source)
            if shape is not None and (reshaping or shape == out):
                yield source, _carry(shape, out)

    def back_to(self, user: fx.Node, value: fx.Node) -> Sides | None:
        """Where the channels of `user`'s output are in `value`, one of its inputs."""
        out, shape = _shape(user), _shape(value)
        if out is None or shape is None or len(out) < 3:
            return None
        dims = self.permutation(user, len(out))
        if dims is not None:
            if not dims or user.all_input_nodes[:1] != [value]:
                return None
            return _side(dims[1], dims), _side(dims[-1], dims)
        return _carry(out, shape) if self.reshapes(user) or out == shape else None

    def output_side(self, node: fx.Node) -> int | None:
        """FIRST or LAST where `node` makes a tensor with its channels there, else None."""
        shape = _shape(node)
        if shape is None or len(shape) < 3:
            return None
        module = self.module(node)
        if module is not None:
            if isinstance(module, nn.Embedding):
                return LAST
            return _module_side(module)
        name = _op(node)
        return LAST if name == "embedding" else _function_side(node, name)

    def input_side(self, user: fx.Node, value: fx.Node) -> int | None:
        """FIRST or LAST where `user` takes `value` (as its input, not its weight) with its
        channels there, else None."""
        shape = _shape(value)
        if shape is None or len(shape) < 3 or not user.args or user.args[0] is not value:
            return None
        module = self.module(user)
        return _module_side(module) if module is not None else _function_side(user, _op(user))

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None

    def permutation(self, node: fx.Node, rank: int) -> tuple[int, ...] | None:
        """The dims a permute, transpose or movedim node puts in order (`()` when unknown),
        None for other nodes."""
        module = self.module(node)
        if module is not None:
            dims = getattr(module, "dims", None)  # torchvision's Permute
            return _checked(dims, rank) if isinstance(dims, (list, tuple)) else None
        name, args = _op(node), node.args[1:]
        if name == "permute":
            flat = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            return _checked(node.kwargs.get("dims", flat), rank)
        if name in ("transpose", "swapaxes", "swapdims", "movedim") and len(args) == 2:
            a, b = args
            if not isinstance(a, int) or not isinstance(b, int):
                return ()
            order = list(range(rank))
            if name == "movedim":
                order.insert(b % rank, order.pop(a % rank))
            else:
                order[a % rank], order[b % rank] = order[b % rank], order[a % rank]
            return tuple(order)
        return None

    def reshapes(self, node: fx.Node) -> bool:
        """Whether `node` reshapes, slices, pads or joins its input (the channels keep size)."""
        module = self.module(node)
        if module is not None:
            return isinstance(module, (nn.Flatten, nn.Unflatten)) or "Pad" in type(module).__name__
        return _op(node) in _RESHAPES


_RESHAPES = {
    "view", "reshape", "flatten", "unflatten", "getitem", "pad", "cat", "concat", "concatenate",
    "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "roll", "view_as",
    "reshape_as", "clone", "to", "float", "half", "type",
}  # fmt: skip
_FIRST_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.LocalResponseNorm,
)  # fmt: skip
_FIRST_FUNCTIONS = re.compile(
    r"(conv(_transpose)?[123]d|(adaptive_)?(avg|max|lp)_pool[123]d(_with_indices)?"
    r"|batch_norm|group_norm|instance_norm|local_response_norm|interpolate|upsample\w*"
    r"|pixel_(un)?shuffle)"
)


def _module_side(module: nn.Module) -> int | None:
    if isinstance(module, _FIRST_MODULES):
        return FIRST
    if isinstance(module, nn.Linear):
        return LAST
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        # one normalised axis, and the forward as written (LayerNorm2d subclasses permute)
        own = type(module).forward in (nn.LayerNorm.forward, nn.RMSNorm.forward)
        return LAST if own and len(module.normalized_shape) == 1 else None
    return None


def _function_side(node: fx.Node, name: str) -> int | None:
    if node.op not in ("call_function", "call_method"):
        return None
    if _FIRST_FUNCTIONS.fullmatch(name):
        return FIRST
    if name == "linear":
        return LAST
    if name in ("layer_norm", "rms_norm"):
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        one = isinstance(shape, int) or (isinstance(shape, (list, tuple)) and len(shape) == 1)
        return LAST if one else None
    return None


def _op(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    shape = getattr(node.meta.get("splitter"), "shape", None)
    return tuple(shape) if isinstance(shape, (tuple, list)) else None


def _checked(dims: object, rank: int) -> tuple[int, ...]:
    """A permutation of `rank` axes, negative dims wrapped; `()` for anything else."""
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return ()
    order = tuple(int(d) % rank for d in dims)
    return order if sorted(order) == list(range(rank)) else ()


def _side(position: int, dims: Sequence[int]) -> int | None:
    """The side of axis `position` among len(dims) axes."""
    return FIRST if position == 1 else LAST if position == len(dims) - 1 else None


def _carry(a: tuple[int, ...], b: tuple[int, ...]) -> Sides:
    """Where channels first and last of shape `a` are in shape `b` after a reshape: at the
    axis, first or last, of their size (the same side where both or the shapes are equal)."""
    if a == b:
        return _SAME
    if len(a) < 3 or len(b) < 3:
        return (None, None)

    def one(size: int, side: int) -> int | None:
        first, last = b[1] == size, b[-1] == size
        return side if first and last else FIRST if first else LAST if last else None

    return one(a[1], FIRST), one(a[-1], LAST)


def _compose(sides: Sides, step: Sides) -> Sides:
    """`step` (sides in the next tensor -> in this one) then `sides` (this one -> the start)."""
    first, last = (None if s is None else sides[s] for s in step)
    return first, last
