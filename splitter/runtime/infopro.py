"""InfoPro's auxiliary networks (Wang et al., ICLR 2021, CIFAR code): the decoder, the classifier
built from its configs by name (`networks/auxiliary_nets.py`: `Decoder`, `AuxClassifier`), and
the supervised contrastive loss it trains the classifier with (`networks/losses.py`)."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Config = Literal["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"]
"""`<n>c<m>f`: n conv3x3-BN-ReLU layers, global average pooling, m Linear layers."""
TaskLoss = Literal["cross_entropy", "supcon"]
BASE_TEMPERATURE = 0.07
"""SupConLoss's `base_temperature`: the loss is scaled by `temperature / 0.07`."""
WIDEST = 64
"""The widest stage of InfoPro's CIFAR ResNets, where its classifier stops widening."""


class InfoProDecoder(nn.Module):
    """InfoPro's `Decoder`: reconstructs the un-normalised input in [0, 1] by bilinear
    upsampling to the input size (`align_corners=True`), conv3x3 with bias to `width`, BN,
    ReLU, conv3x3 with bias to the input channels, sigmoid (convs He-normal, as InfoPro's)."""

    def __init__(
        self, shape: tuple[int, ...], layout: str, image: tuple[int, ...], width: int = 12
    ) -> None:
        super().__init__()
        self.check(layout, image)
        self.layout, self.size = layout, tuple(image[1:])
        self.conv1 = nn.Conv2d(shape[0] if layout == "nchw" else shape[-1], width, 3, 1, 1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, image[0], 3, 1, 1)
        he_normal(self)

    @staticmethod
    def check(layout: str, image: tuple[int, ...]) -> None:
        """Refuse what the decoder cannot serve: it needs image maps and an image input."""
        if layout not in ("nchw", "nhwc") or len(image) != 3:
            raise ValueError(
                f"the infopro decoder reconstructs images: the boundary is `{layout}` and the "
                f"input {list(image)} (it takes `nchw` or `nhwc` maps of a [C, H, W] input); "
                "use the `linear`, `conv` or `momentum` auxiliary here"
            )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.permute(0, 3, 1, 2) if self.layout == "nhwc" else h
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=True)
        return torch.sigmoid(self.conv2(F.relu(self.bn(self.conv1(x)))))


def conv_width(channels: int) -> tuple[int, int]:
    """Width and stride of the classifier's first conv on a map of `channels` channels.

    InfoPro defines three input widths (its CIFAR ResNets' stages): 16 -> 32 and 32 -> 64 with
    stride 2, 64 -> 64 with stride 1. Keyed on the channels as InfoPro's code is (so STL-10's
    96x96 maps get the same convs as CIFAR's 32x32), splitter extends that to every width: below
    64 channels the conv doubles the width with stride 2, from 64 channels on it keeps the width
    with stride 1. A second conv (`2c2f`) keeps the width with stride 1."""
    return (2 * channels, 2) if channels < WIDEST else (channels, 1)


class InfoProHead(nn.Module):
    """InfoPro's `AuxClassifier` for one config: the convs (3x3, padding 1, no bias, each
    followed by BatchNorm and ReLU; widths and strides by `conv_width`), adaptive average
    pooling to 1x1, then the Linear layers, `feature_dim` wide between them with ReLU, the last
    one to the classes (`cross_entropy`) or to `feature_dim` features (`supcon`); `0c1f` is
    pooling and one Linear (greedy supervised learning). Convolutions start He-normal over the
    fan-out, as InfoPro's ResNet initialises every conv it holds."""

    def __init__(
        self,
        shape: tuple[int, ...],
        layout: str,
        num_classes: int,
        config: Config = "1c2f",
        feature_dim: int = 128,
        loss: TaskLoss = "cross_entropy",
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if layout not in ("nchw", "nhwc") or len(shape) != 3:
            raise ValueError(
                f"InfoPro's classifier takes image maps (`nchw` or `nhwc`), not `{layout}` "
                f"{list(shape)}; use the `linear` or `conv` auxiliary here"
            )
        self.layout, self.loss, self.temperature = layout, loss, temperature
        c = shape[0] if layout == "nchw" else shape[-1]
        width, stride = conv_width(c)
        convs: list[nn.Module] = []
        for i in range(int(config[0])):
            step = stride if i == 0 else 1
            convs += [nn.Conv2d(width if i else c, width, 3, step, 1, bias=False)]
            convs += [nn.BatchNorm2d(width), nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        out = feature_dim if loss == "supcon" else num_classes
        sizes = [width if convs else c, *[feature_dim] * (int(config[2]) - 1), out]
        fcs: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            fcs += [nn.ReLU(inplace=True), nn.Linear(a, b)] if i else [nn.Linear(a, b)]
        self.fcs = nn.Sequential(*fcs)
        he_normal(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The logits (`cross_entropy`) or the features, not yet normalised (`supcon`)."""
        x = h.permute(0, 3, 1, 2) if self.layout == "nhwc" else h
        out: torch.Tensor = self.fcs(F.adaptive_avg_pool2d(self.convs(x), 1).flatten(1))
        return out

    def task_loss(
        self, out: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on this classifier's output, and the logits the loop's accuracy reads.
        With `supcon` there are no logits: an empty tensor comes back, and the accuracy, the
        mean of `argmax(logits, 1) == target` over its (no) elements, is NaN."""
        if self.loss == "supcon":
            loss = supcon(out, target, self.temperature)
            return loss, out.detach().new_empty((0, 1, 1))
        return F.cross_entropy(out, target), out


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss as InfoPro's `SupConLoss` computes it for
    one view per sample: the features are L2-normalised; every sample is an anchor against all
    the others, its positives those of its class; the loss is the mean over anchors of
    `-(temperature / 0.07)` times the mean log-probability of its positives. An anchor with no
    positive in the batch adds 0 (still counted in the mean). Computed in float32 or wider
    with autocast off; a batch of one gives 0 (InfoPro's code gives NaN there)."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(features.device.type, enabled=False):
        z = F.normalize(features.to(dtype), dim=1)
        logits = z @ z.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only
        others = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        positive = (labels[:, None] == labels[None, :]) & others
        total = (logits.exp() * others).sum(dim=1, keepdim=True)
        log_prob = logits - total.clamp_min(torch.finfo(dtype).tiny).log()
        mean_positive = (positive * log_prob).sum(dim=1) / positive.sum(dim=1).clamp_min(1)
        return -(temperature / BASE_TEMPERATURE) * mean_positive.mean()


def he_normal(module: nn.Module) -> None:
    """Every conv of `module` He-normal over its fan-out, `normal(0, sqrt(2 / (k*k*out)))`,
    as InfoPro's ResNet initialises its convs (biases and other layers keep PyTorch's init)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
