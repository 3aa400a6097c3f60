"""InfoPro as published: its classifier configs with the original parameter counts, its decoder,
its SupCon loss, and one block of the emitted package against a reference written here from
InfoPro's equations (functional, float64) with the same weights on the same batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from splitter import api
from splitter.analysis.costs import CostModel
from splitter.analysis.layouts import InfoProHead
from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.partitioning.partitioner import settings_from
from splitter.runtime.infopro import supcon
from tests.conftest import EXAMPLES

Weights = dict[str, torch.Tensor]
RESNET = str(EXAMPLES / "resnet_cifar" / "model.py")
K4 = ["layer1.2", "layer2.1", "layer3.0"]
K16 = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(5)][:-1]  # MAN's "K=16": 14 cuts
CONFIGS = ["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"]
T = 0.1
"""The SupCon temperature of the comparison with the reference (its `t / 0.07` factor is not 1)."""

# InfoPro's AuxClassifier (networks/auxiliary_nets.py), counted by hand from its layers for
# inplanes 16, 32, 64, widen 1, feature_dim 128, class_num 10. Its first conv: 16 -> 32 and
# 32 -> 64 with stride 2, 64 -> 64 with stride 1; conv3x3 without bias = 9 * in * out, BN = 2 *
# out, Linear(a, b) = a * b + b. The pieces: conv 16->32: 4608, 32->64: 18432, 64->64: 36864,
# second conv (2c2f) 32->32: 9216, 64->64: 36864; BN 32: 64, BN 64: 128; Linear 16->128: 2176,
# 32->128: 4224, 64->128: 8320, 128->128: 16512, 128->10: 1290, 16->10: 170, 32->10: 330,
# 64->10: 650.
ORIGINAL_CE = {
    "0c1f": {16: 170, 32: 330, 64: 650},  # pool, Linear(C, 10)
    # pool, Linear(C, 128), ReLU, Linear(128, 10): 2176+1290, 4224+1290, 8320+1290
    "0c2f": {16: 3466, 32: 5514, 64: 9610},
    # conv, BN, ReLU, pool, Linear(W, 10): 4608+64+330, 18432+128+650, 36864+128+650
    "1c1f": {16: 5002, 32: 19210, 64: 37642},
    # conv, BN, ReLU, pool, Linear(W, 128), ReLU, Linear(128, 10):
    # 4608+64+4224+1290, 18432+128+8320+1290, 36864+128+8320+1290 (the audit's 46,602)
    "1c2f": {16: 10186, 32: 28170, 64: 46602},
    # 1c2f plus Linear(128, 128): 10186+16512, 28170+16512, 46602+16512
    "1c3f": {16: 26698, 32: 44682, 64: 63114},
    # conv, BN, ReLU, conv(W, W, stride 1), BN, ReLU, pool, Linear(W, 128), ReLU, Linear(128, 10):
    # 4608+64+9216+64+4224+1290, 18432+128+36864+128+8320+1290, 36864+128+36864+128+8320+1290
    "2c2f": {16: 19466, 32: 65162, 64: 83594},
}
# With loss_mode `contrast` the last Linear gives feature_dim = 128 outputs instead of 10:
# Linear(128, 128) = 16512 for Linear(128, 10) = 1290, i.e. +15222; for 0c1f Linear(C, 128) =
# 2176, 4224, 8320; for 1c1f Linear(W, 128) for Linear(W, 10), i.e. +118 * (W + 1): +3894 at
# W = 32, +7670 at W = 64.
ORIGINAL_SUPCON = {
    "0c1f": {16: 2176, 32: 4224, 64: 8320},
    "0c2f": {16: 18688, 32: 20736, 64: 24832},  # 0c2f CE + 15222
    "1c1f": {16: 8896, 32: 26880, 64: 45312},  # 5002+3894, 19210+7670, 37642+7670
    "1c2f": {16: 25408, 32: 43392, 64: 61824},  # 1c2f CE + 15222
    "1c3f": {16: 41920, 32: 59904, 64: 78336},  # 1c3f CE + 15222
    "2c2f": {16: 34688, 32: 80384, 64: 98816},  # 2c2f CE + 15222
}
# InfoPro's Decoder, widen 1: conv3x3 C -> 12 with bias (9 * C * 12 + 12), BN(12) = 24,
# conv3x3 12 -> 3 with bias (9 * 12 * 3 + 3 = 327): 1728+12+24+327, 3456+12+24+327,
# 6912+12+24+327.
ORIGINAL_DECODER = {16: 2091, 32: 3819, 64: 7275}
INFOPRO_CONV = {16: (32, 2), 32: (64, 2), 64: (64, 1)}
"""AuxClassifier's first conv by inplanes: (out channels, stride)."""
SIZE = {16: 32, 32: 16, 64: 8}
"""The ResNet-32's map size at each width."""


def package(tmp_path: Path, cuts: list[str], aux: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"version: 1\npartition: {{cuts: {cuts}}}\naux: {{default: {aux}}}\n")
    out = tmp_path / "pkg"
    compile_package(RESNET, str(spec), ModelOptions(), out=str(out))
    return out


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- the classifier's shape


@pytest.mark.parametrize("loss", ["cross_entropy", "supcon"])
@pytest.mark.parametrize("config", CONFIGS)
def test_each_config_has_the_originals_layers(config: str, loss: str) -> None:
    original = ORIGINAL_SUPCON if loss == "supcon" else ORIGINAL_CE
    for c, (width, stride) in INFOPRO_CONV.items():
        head = InfoProHead((c, SIZE[c], SIZE[c]), "nchw", 10, config, 128, loss)  # type: ignore[arg-type]
        assert count(head) == original[config][c], (config, c)
        convs = [m for m in head.convs if isinstance(m, torch.nn.Conv2d)]
        assert [(m.out_channels, m.stride[0], m.bias) for m in convs] == (
            [(width, stride, None), (width, 1, None)][: int(config[0])]
        )
        out = head(torch.randn(2, c, SIZE[c], SIZE[c]))
        assert out.shape == (2, 128 if loss == "supcon" else 10)


def test_other_widths_follow_the_rule_by_channels() -> None:
    """Below 64 channels the first conv doubles them with stride 2, from 64 on it keeps them."""
    for c, expected in ((8, (16, 2)), (48, (96, 2)), (128, (128, 1)), (256, (256, 1))):
        head = InfoProHead((c, 12, 12), "nchw", 10, "1c1f")
        conv = head.convs[0]
        assert isinstance(conv, torch.nn.Conv2d)
        assert (conv.out_channels, conv.stride[0]) == expected
    assert head(torch.randn(2, 256, 12, 12)).shape == (2, 10)
    nhwc = InfoProHead((12, 12, 48), "nhwc", 10, "2c2f")
    assert nhwc(torch.randn(2, 12, 12, 48)).shape == (2, 10)


@pytest.mark.parametrize("config", CONFIGS)
def test_man_k16_auxiliaries_count_as_the_originals(tmp_path: Path, config: str) -> None:
    """Every auxiliary of the ResNet-32 cut after each BasicBlock but the last (MAN's "K=16":
    five at 16x32x32, five at 32x16x16, four at 64x8x8), built through the compiler."""
    widths = [16] * 5 + [32] * 5 + [64] * 4
    with load_package(package(tmp_path, K16, f"{{kind: infopro, classifier: '{config}'}}")) as t:
        auxiliaries = t.build(0).auxiliaries
    assert [count(a.classifier) for a in auxiliaries] == [ORIGINAL_CE[config][c] for c in widths]
    assert [count(a.decoder) for a in auxiliaries] == [ORIGINAL_DECODER[c] for c in widths]


def test_man_infopro_2c2f_head_of_momentum_trains(tmp_path: Path) -> None:
    """MAN's published setting: momentum with InfoPro's `2c2f` head, at MAN's K=16; the heads sit
    on the next unit's output (layer2.0 and layer3.0 change the width)."""
    aux = "{kind: momentum, head: {kind: infopro, classifier: 2c2f}}"
    with load_package(package(tmp_path, K16, aux)) as train:
        metrics = train.train(["--data", "synthetic", "--steps", "1", "--batch-size", "8",
                               "--out", str(tmp_path / "runs"), "--no-checkpoint"])  # fmt: skip
        auxiliaries = train.build(0).auxiliaries
    widths = [16] * 4 + [32] * 5 + [64] * 5
    assert [count(a.head.classifier) for a in auxiliaries] == [
        ORIGINAL_CE["2c2f"][c] for c in widths
    ]
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])


@pytest.mark.parametrize("loss", ["cross_entropy", "supcon"])
def test_the_cost_model_prices_classifier_and_decoder(tmp_path: Path, loss: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\npartition: {{cuts: {K4}}}\n"
        f"aux: {{default: {{kind: infopro, classifier: 2c2f, loss: {loss}}}}}\n"
    )
    plan = api.plan(RESNET, str(spec), ModelOptions())
    costs = CostModel(plan.analysis, settings_from(plan.spec.spec, None, None))
    legal = list(plan.analysis.cuts.cuts)
    bounds = [legal.index(cut) + 1 for cut in plan.cuts]
    original = ORIGINAL_SUPCON if loss == "supcon" else ORIGINAL_CE
    assert [costs.aux_cost(k, j, 4).param_bytes for k, j in enumerate(bounds)] == [
        4 * (original["2c2f"][c] + ORIGINAL_DECODER[c])
        for c in (16, 32, 64)  # float32
    ]


# ---------------------------------------------------------------- SupCon


def test_supcon_without_positives_or_alone_adds_nothing() -> None:
    f = torch.randn(4, 8, requires_grad=True)
    assert float(supcon(f, torch.tensor([0, 1, 2, 3])).detach()) == 0.0
    alone = supcon(f[:1], torch.tensor([0]))
    alone.backward()
    assert float(alone.detach()) == 0.0 and torch.isfinite(f.grad).all()  # type: ignore[arg-type]


def test_supcon_trains_with_nan_accuracy(tmp_path: Path) -> None:
    """With SupCon the classifier outputs features, not logits: the auxiliaries' training
    accuracy is NaN; the last block's is a number; train.py runs."""
    with load_package(package(tmp_path, K4, "{kind: infopro, loss: supcon}")) as train:
        metrics = train.train(["--data", "synthetic", "--steps", "2", "--batch-size", "8",
                               "--out", str(tmp_path / "runs"), "--no-checkpoint"])  # fmt: skip
    accuracy = metrics["block_accuracy"]
    assert all(math.isnan(a) for a in accuracy[:3]) and 0 <= accuracy[3] <= 1
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])


# ---------------------------------------------------------------- the reference


def bn(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """BatchNorm in training mode: the batch's own statistics."""
    return F.batch_norm(x, None, None, w[f"{name}.weight"], w[f"{name}.bias"], training=True)


def basic_block(x: torch.Tensor, w: Weights, name: str, stride: int = 1) -> torch.Tensor:
    """He et al.'s BasicBlock: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x)), the shortcut
    a strided 1x1 conv and BN where the shape changes, else the identity."""
    out = F.conv2d(x, w[f"{name}.conv1.weight"], stride=stride, padding=1)
    out = F.relu(bn(out, w, f"{name}.bn1"))
    out = bn(F.conv2d(out, w[f"{name}.conv2.weight"], padding=1), w, f"{name}.bn2")
    if f"{name}.shortcut.0.weight" in w:
        x = bn(F.conv2d(x, w[f"{name}.shortcut.0.weight"], stride=stride), w, f"{name}.shortcut.1")
    return F.relu(out + x)


def block(k: int, x: torch.Tensor, w: Weights) -> torch.Tensor:
    """Block 0 at K=4: the stem and layer1.0..2; block 1: layer1.3..4 and layer2.0..1."""
    if k == 0:
        h = F.relu(bn(F.conv2d(x, w["conv1.weight"], padding=1), w, "bn1"))
        return basic_block(basic_block(basic_block(h, w, "layer1.0"), w, "layer1.1"), w, "layer1.2")
    h = basic_block(basic_block(x, w, "layer1.3"), w, "layer1.4")
    return basic_block(basic_block(h, w, "layer2.0", stride=2), w, "layer2.1")


def upsample(h: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling with aligned corners, as matrices: output pixel i samples the input
    at i * (n - 1) / (size - 1), between its two neighbours."""

    def matrix(n: int) -> torch.Tensor:
        a = torch.zeros(size, n, dtype=h.dtype)
        for i in range(size):
            s = i * (n - 1) / (size - 1)
            lo = min(int(s), n - 1)
            hi = min(lo + 1, n - 1)
            a[i, lo] += 1 - (s - lo)
            a[i, hi] += s - lo
        return a

    return torch.einsum("ih,nchw,jw->ncij", matrix(h.shape[2]), h, matrix(h.shape[3]))


def decoder(h: torch.Tensor, w: Weights) -> torch.Tensor:
    """InfoPro's Decoder: upsample to 32x32, conv3x3 + bias, BN, ReLU, conv3x3 + bias, sigmoid."""
    z = F.conv2d(upsample(h, 32), w["conv1.weight"], w["conv1.bias"], padding=1)
    z = F.relu(bn(z, w, "bn"))
    return torch.sigmoid(F.conv2d(z, w["conv2.weight"], w["conv2.bias"], padding=1))


def classifier(h: torch.Tensor, w: Weights, config: str) -> torch.Tensor:
    """InfoPro's AuxClassifier `<n>c<m>f`: n conv3x3 (no bias; the first by INFOPRO_CONV, the
    second stride 1), BN, ReLU; average pooling; m Linear layers with ReLU between them."""
    width, stride = INFOPRO_CONV[h.shape[1]]
    z = h
    for i in range(int(config[0])):
        conv = w[f"convs.{3 * i}.weight"]
        assert conv.shape == (width, h.shape[1] if i == 0 else width, 3, 3)
        z = F.conv2d(z, conv, stride=stride if i == 0 else 1, padding=1)
        z = F.relu(bn(z, w, f"convs.{3 * i + 1}"))
    z = z.mean(dim=(2, 3))
    for j in range(int(config[2])):
        z = F.relu(z) if j else z
        z = F.linear(z, w[f"fcs.{2 * j}.weight"], w[f"fcs.{2 * j}.bias"])
    return z


def supcon_reference(f: torch.Tensor, y: torch.Tensor, t: float = 0.07) -> torch.Tensor:
    """Khosla et al.'s L_out, one view: for each anchor i, -(t / 0.07) times the mean over its
    positives p of log(exp(z_i.z_p / t) / sum over a != i of exp(z_i.z_a / t)); 0 for an
    anchor without positives; the mean over anchors."""
    z = f / f.norm(dim=1, keepdim=True)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_denominator = torch.log(sum(torch.exp(z[i] @ z[a] / t) for a in others))
        terms = [z[i] @ z[p] / t - log_denominator for p in others if y[p] == y[i]]
        losses.append(-(t / 0.07) * torch.stack(terms).mean() if terms else z.new_zeros(()))
    return torch.stack(losses).mean()


def leaves(module: torch.nn.Module) -> Weights:
    return {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize(
    ("k", "config", "loss"),
    [(0, "1c2f", "cross_entropy"), (0, "1c2f", "supcon"), (1, "1c2f", "supcon"),
     (1, "2c2f", "cross_entropy")],
)  # fmt: skip
def test_a_block_matches_infopros_equations(tmp_path: Path, k: int, config: str, loss: str) -> None:
    """Block k of the ResNet-32 at K=4 with its InfoPro auxiliary, in training mode, float64:
    the loss and every gradient (the block's, the decoder's, the classifier's) equal the
    reference's to 1e-6 relative; block 1's decoder upsamples 16x16 to 32x32. SupCon runs at a
    temperature of 0.1, so that its `temperature / 0.07` factor is not 1."""
    options = f"classifier: '{config}', loss: {loss}, lambda2: [1, 1], temperature: {T}"
    aux_spec = f"{{kind: infopro, {options}}}"
    with load_package(package(tmp_path, K4, aux_spec)) as train:
        parts = train.build(0)
    parts.model.double().train()
    aux = parts.auxiliaries[k].double().train()
    assert [count(a.classifier) for a in parts.auxiliaries] == [
        (ORIGINAL_SUPCON if loss == "supcon" else ORIGINAL_CE)[config][c] for c in (16, 32, 64)
    ]
    assert [count(a.decoder) for a in parts.auxiliaries] == list(ORIGINAL_DECODER.values())
    torch.manual_seed(1)
    image = torch.rand(16, 3, 32, 32, dtype=torch.float64)
    x = (image - 0.5) / 0.25 if k == 0 else torch.rand(16, 16, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 9])  # 6, 7, 9: no positive
    modules = {"block": parts.blocks[k], "dec": aux.decoder, "cls": aux.classifier}
    w = {group: leaves(module) for group, module in modules.items()}

    h = block(k, x, w["block"])
    rebuilt = decoder(h, w["dec"])
    bce = -(image * rebuilt.log() + (1 - image) * (1 - rebuilt).log()).mean()
    out = classifier(h, w["cls"], config)
    task = supcon_reference(out, y, T) if loss == "supcon" else F.cross_entropy(out, y)
    lambda1 = (5.0, 2.75)[k]  # [5, 0.5] interpolated over 3 auxiliaries
    assert (aux.lambda1, aux.lambda2) == (lambda1, 1.0)
    reference = lambda1 * bce + 1.0 * task
    reference.backward()

    found, _ = aux(parts.blocks[k](x), y, image, [x])
    found.backward()
    errors = {"loss": relative(found.detach(), reference.detach())}
    for group, module in modules.items():
        for name, p in module.named_parameters():
            expected = w[group][name].grad
            assert p.grad is not None and expected is not None, name
            if (group, name) == ("dec", "conv1.bias"):
                # a bias right before training-mode BatchNorm has no gradient: both are noise
                scale = float(w["dec"]["conv1.weight"].grad.abs().max())  # type: ignore[union-attr]
                errors[f"{group} {name}"] = float(p.grad.abs().max()) / scale
                continue
            assert float(expected.abs().max()) > 0, name
            errors[f"{group} {name}"] = relative(p.grad, expected)
    worst = max(errors, key=lambda key: errors[key])
    assert errors[worst] < 1e-6, (worst, errors[worst])
    classifier_params = 3 * int(config[0]) + 2 * int(config[2])
    assert len(errors) == 1 + (21, 27)[k] + 6 + classifier_params
    if k == 1:  # the reference's aligned corners are told apart from the unaligned default
        plain = F.interpolate(h.detach(), size=(32, 32), mode="bilinear")
        assert float((plain - upsample(h.detach(), 32)).abs().max()) > 1e-3
