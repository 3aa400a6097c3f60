"""A small U-Net: a stem, one level down and up with a skip connection, a
refining conv and a 1x1 classifier per pixel; (B, 3, H, W) -> (B, classes, H, W)."""

from __future__ import annotations

import torch
from torch import nn


def conv(a: int, b: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.stem = conv(3, width)
        self.pre = conv(width, width)
        self.down = conv(width, 2 * width, stride=2)
        self.middle = conv(2 * width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.merge = conv(2 * width, width)
        self.refine = conv(width, width)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.pre(self.stem(x))
        deep = self.up(self.middle(self.down(skip)))
        x = self.merge(torch.cat([deep, skip], dim=1))
        return self.classifier(self.refine(x))


def build_model(classes: int = 4) -> UNet:
    return UNet(classes)


def example_inputs() -> torch.Tensor:
    """Two 32x32 RGB images."""
    return torch.randn(2, 3, 32, 32)
