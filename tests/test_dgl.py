"""DGL's `mlp-sr` head and MAN++'s auxDGL head: the originals' parameter counts on the bundled
ResNet-32 at K = 4, and block 0's local loss and gradients against a reference written here from
DGL's definition (functional, float64), to 1e-6."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from splitter.api import compile_package
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import EXAMPLES, example_package, train_steps
from tests.test_man_parity import Weights, block0, bn

CUTS = "[layer1.2, layer2.1, layer3.0]"
# The originals at the three K = 4 boundaries (16, 32 and 64 channels; 10 classes): DGL's
# `auxillary_classifier2(n_lin=3, mlp_layers=3)` counts a BatchNorm2d(C) it never calls.
DGL_ORIGINAL = [14_410, 54_922, 214_282]
AUXDGL_ORIGINAL = [635_146, 637_194, 641_290]


def package(tmp_path: Path, variant: str) -> Path:
    return example_package(tmp_path, aux=f"{{default: {{kind: conv, variant: {variant}}}}}")


@pytest.mark.parametrize(
    ("variant", "original", "unused"),
    [("mlp-sr", DGL_ORIGINAL, [32, 64, 128]), ("auxdgl", AUXDGL_ORIGINAL, [0, 0, 0])],
)
def test_the_heads_have_the_originals_parameters(
    variant: str, original: list[int], unused: list[int], tmp_path: Path
) -> None:
    with load_package(package(tmp_path, variant)) as train:
        parts = train.build(0)
        counts = [sum(p.numel() for p in a.parameters()) for a in parts.auxiliaries]
    assert counts == [n - u for n, u in zip(original, unused, strict=True)]


# ---------------------------------------------------------------- the reference


def mlp_sr(h: torch.Tensor, w: Weights, size: int) -> torch.Tensor:
    """DGL's `mlp-sr` on maps `h` of side `size`: pool to ceil(size/4), three conv1x1-BN-ReLU,
    pool to 2x2, flatten, three Linear-BN1d-ReLU, Linear."""
    side = math.ceil(size / 4)
    out = F.adaptive_avg_pool2d(h, (side, side))
    for i in range(3):
        out = F.relu(bn(F.conv2d(out, w[f"head.convs.{i}.0.weight"]), w, f"head.convs.{i}.1"))
    out = F.adaptive_avg_pool2d(out, (2, 2)).flatten(1)
    for i in range(3):
        linear = F.linear(
            out, w[f"head.classifier.{3 * i}.weight"], w[f"head.classifier.{3 * i}.bias"]
        )
        out = F.relu(bn(linear, w, f"head.classifier.{3 * i + 1}"))
    return F.linear(out, w["head.classifier.9.weight"], w["head.classifier.9.bias"])


def test_block0_with_mlp_sr_computes_dgls_loss_and_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with load_package(package(tmp_path, "mlp-sr")) as train:
        parts = train.build(0)
        block, aux = parts.blocks[0].double().train(), parts.auxiliaries[0].double().train()
        x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
        loss, _ = aux(block(x), y, x)
        params = [*block.parameters(), *aux.parameters()]
        grads = torch.autograd.grad(loss, params)
        weights = {
            **{n: p.detach().clone().requires_grad_() for n, p in block.named_parameters()},
            **{n: p.detach().clone().requires_grad_() for n, p in aux.named_parameters()},
        }
    expected = F.cross_entropy(mlp_sr(block0(x, weights), weights, 32), y)
    expected_grads = torch.autograd.grad(expected, list(weights.values()))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_a_momentum_auxiliary_takes_the_auxdgl_head_and_trains(tmp_path: Path) -> None:
    """DGL+MAN++: MAN++'s momentum copy of the next unit under its DGL head."""
    head = "{kind: conv, variant: auxdgl}"
    out = example_package(tmp_path, aux=f"{{default: {{kind: momentum, head: {head}}}}}")
    assert 'dgl_head("auxdgl", (16, 32, 32), num_classes)' in (out / "blocks.py").read_text()
    with load_package(out) as train:
        metrics = train_steps(train, tmp_path / "run", 2)
    assert len(metrics["block_losses"]) == 4


def test_token_sequences_are_refused_with_the_fix(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {cuts: [blocks.1]}\naux: {default: {kind: conv, variant: mlp-sr}}\n"
    )
    with pytest.raises(SplitterError, match=r"takes image maps \(NCHW\).*`variant: default`"):
        compile_package(
            str(EXAMPLES / "tiny_vit" / "model.py"),
            str(spec),
            ModelOptions(),
            out=str(tmp_path / "pkg"),
        )
