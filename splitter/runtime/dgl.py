"""DGL's auxiliary classifiers (Belilovsky et al., ICML 2020, CIFAR auxiliary study
`auxiliary_nets_study/models.py`, `auxillary_classifier2`) and MAN++'s re-implementation of it
for DGL+MAN++ (`networks/auxDGL.py`, `AuxClassifier`), for image maps (NCHW)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Variant = Literal["mlp-sr", "auxdgl"]
"""`mlp-sr`: DGL's default head (3 conv1x1 + 3 MLP layers); `auxdgl`: MAN++'s."""


class DglHead(nn.Module):
    """DGL's `mlp-sr`: average-pool to ceil(H/4) x ceil(W/4), `convs` x [conv1x1 C->C without
    bias, BN, ReLU], average-pool to 2x2, flatten (channel-major, 4C features), `mlp` x
    [Linear 4C->4C, BN1d, ReLU], Linear to the classes.

    The original also builds a BatchNorm2d(C) that its MLP variants never call (2C unused
    parameters: 14,410 counted at ResNet-32's first stage against 14,378 here)."""

    def __init__(
        self, shape: tuple[int, ...], num_classes: int, convs: int = 3, mlp: int = 3
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.size = (math.ceil(h / 4), math.ceil(w / 4))
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)) for _ in range(convs)
        )
        layers: list[nn.Module] = []
        for _ in range(mlp):
            layers += [nn.Linear(4 * c, 4 * c), nn.BatchNorm1d(4 * c), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*layers, nn.Linear(4 * c, num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(h, self.size)
        for conv in self.convs:
            out = F.relu(conv(out))
        out = F.adaptive_avg_pool2d(out, (2, 2))
        logits: torch.Tensor = self.classifier(out.flatten(1))
        return logits


class AuxDglHead(nn.Module):
    """MAN++'s DGL head: average-pool to 8x8, 3 x [conv1x1 to `feature_dim` without bias, BN,
    ReLU], global average pooling, 3 x [Linear to 4 x `feature_dim`, BN1d, ReLU], Linear to
    the classes (feature_dim 128: 635,146 parameters at 16 channels and 10 classes)."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, feature_dim: int = 128) -> None:
        super().__init__()
        c, wide = shape[0], 4 * feature_dim
        convs: list[nn.Module] = []
        for i in range(3):
            convs += [
                nn.Conv2d(c if i == 0 else feature_dim, feature_dim, 1, bias=False),
                nn.BatchNorm2d(feature_dim),
                nn.ReLU(),
            ]
        mlp: list[nn.Module] = []
        for i in range(3):
            mlp += [
                nn.Linear(feature_dim if i == 0 else wide, wide),
                nn.BatchNorm1d(wide),
                nn.ReLU(inplace=True),
            ]
        self.head = nn.Sequential(
            *convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *mlp, nn.Linear(wide, num_classes)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(F.adaptive_avg_pool2d(h, (8, 8)))
        return logits


def dgl_head(variant: Variant, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The head of `variant` for a boundary of per-sample `shape` (C, H, W)."""
    if variant == "mlp-sr":
        return DglHead(shape, num_classes)
    return AuxDglHead(shape, num_classes)
