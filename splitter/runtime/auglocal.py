"""AugLocal's fresh layers: a residual block of the model's own class, built anew at the width
and stride the auxiliary samples (AugLocal's `networks/auxiliary_nets.py` builds BasicBlocks so,
from the sampled layers' widths)."""

from __future__ import annotations

import inspect

from torch import nn

RESNET_ARGUMENTS = (("inplanes", "in_planes"), ("planes",), ("stride",))
"""The first arguments of a ResNet-style block's class: torchvision's and the CIFAR ResNets'."""


def is_resnet_block(module: nn.Module) -> bool:
    """Whether `module`'s class is built as `(inplanes, planes, stride, ...)`."""
    try:
        names = list(inspect.signature(type(module)).parameters)[:3]
    except (TypeError, ValueError):
        return False
    return len(names) == 3 and all(n in ok for n, ok in zip(names, RESNET_ARGUMENTS, strict=True))


def resnet_block(model: nn.Module, path: str, inplanes: int, width: int, stride: int) -> nn.Module:
    """A new block of the class of `model`'s `path`, from `inplanes` channels to `width` (its
    `planes` times the class's `expansion`) at `stride`. A class that takes a `downsample` gets
    a 1x1 convolution and BatchNorm where the width or the resolution changes; other classes
    build their own shortcut."""
    cls = type(model.get_submodule(path))
    planes = width // int(getattr(cls, "expansion", 1))
    if "downsample" not in inspect.signature(cls).parameters:
        return cls(inplanes, planes, stride)
    downsample = None
    if stride != 1 or inplanes != width:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width)
        )
    return cls(inplanes, planes, stride, downsample)
