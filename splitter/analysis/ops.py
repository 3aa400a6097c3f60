"""What an fx node does, as far as units are concerned: the normalisation, activation, local
pooling and dropout that close a weighted operation (a conv, a Linear, attention) or a residual
sum belong to it, so no admissible cut falls right before one of them."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from splitter.frontend.annotate import node_cost

NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
"""Normalisation layers: they close the weighted operation right before them."""

CLOSING_MODULES: tuple[type[nn.Module], ...] = (
    # activation
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    # local pooling (global, adaptive pooling ends the features instead)
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    # dropout
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
"""Activations, local pooling and dropout: they close whatever op comes right before them."""

NORM_OPS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"})
CLOSING_OPS = frozenset(
    {
        *("relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu"),
        *("mish", "hardswish", "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus"),
        *("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"),
        *("max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"),
        *("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"),
    }
)
"""Function and method names (leading and trailing underscores dropped) of the same kinds."""


def is_kind(
    node: fx.Node, root: nn.Module, modules: tuple[type[nn.Module], ...], names: frozenset[str]
) -> bool:
    """Whether `node` calls one of `modules`, or a function or method named in `names`."""
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), modules)
    if node.op == "call_function":
        return getattr(node.target, "__name__", "").strip("_") in names
    if node.op == "call_method":
        return str(node.target).strip("_") in names
    return False


def admissible(node: fx.Node, root: nn.Module) -> bool:
    """Whether a cut after `node` keeps every unit whole. Not when the tensor's only use is an
    activation, a local pooling or a dropout (a residual sum's ReLU, a stem's max-pool), nor
    a normalisation of a weighted operation's output (a conv's BatchNorm). A tensor that also
    feeds a skip connection starts a unit, and so does a residual sum that a normalisation
    reads (a pre-norm transformer's stream)."""
    users = [u for u in node.users if u.op == "output" or "splitter" not in u.meta or _is_tensor(u)]
    if len(users) != 1:
        return True
    (user,) = users
    if is_kind(user, root, NORM_MODULES, NORM_OPS):
        return not _weighted(node, root)
    return not is_kind(user, root, CLOSING_MODULES, CLOSING_OPS)


def _weighted(node: fx.Node, root: nn.Module) -> bool:
    """A conv, Linear, attention or embedding: an op that brings parameters of its own."""
    if "splitter" not in node.meta or node_cost(node).params == 0:
        return False
    return not is_kind(node, root, NORM_MODULES, NORM_OPS)


def _is_tensor(node: fx.Node) -> bool:
    return node_cost(node).shape is not None
