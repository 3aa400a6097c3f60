"""AugLocal computes what its paper and code say, to 1e-6, on one block of the bundled ResNet-32
at AugLocal's own split (`--local_module_num 16 --aux_net_depth 2`: 14 layer-wise modules): a
reference written here from `AuxNetwork` (fresh BasicBlocks at the sampled layers' widths,
stride 2 once per doubling, pooling, Linear; functional, in float64) against the emitted
package's block and auxiliary with the same weights on the same batch. The auxiliaries'
parameter counts are the originals'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import EXAMPLES
from tests.test_man_parity import Weights, basic_block, bn, leaves, relative

LAYERS = ["relu", *(f"layer{s}.{i}" for s in (1, 2, 3) for i in range(5))]
K16_D2 = LAYERS[:13]  # 16 - d modules: a cut after each of the first 13 layers
BLOCK = 3  # ends at layer1.2 (layer 3); AugLocal samples layers 9 and 15


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("auglocal")
    spec = tmp / "spec.yaml"
    spec.write_text(
        f"version: 1\npartition: {{cuts: {K16_D2}}}\naux: {{default: {{kind: augmented, depth: 2}}}}\n"
    )
    compile_package(
        str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions(), out=str(tmp / "pkg")
    )
    return tmp / "pkg"


def fresh_block(x: torch.Tensor, w: Weights, name: str, stride: int) -> torch.Tensor:
    """AugLocal's BasicBlock from C to C' channels: relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x)),
    conv1 at `stride`, s a 1x1 convolution and BatchNorm where the shape changes."""
    out = F.relu(
        bn(F.conv2d(x, w[f"{name}.conv1.weight"], stride=stride, padding=1), w, f"{name}.bn1")
    )
    out = bn(F.conv2d(out, w[f"{name}.conv2.weight"], padding=1), w, f"{name}.bn2")
    shortcut = x
    if f"{name}.shortcut.0.weight" in w:
        shortcut = bn(
            F.conv2d(x, w[f"{name}.shortcut.0.weight"], stride=stride), w, f"{name}.shortcut.1"
        )
    return F.relu(out + shortcut)


def auglocal_loss(
    h: torch.Tensor, y: torch.Tensor, w: dict[str, Weights], strides: tuple[int, int] = (2, 2)
) -> torch.Tensor:
    """Block 3 (the model's layer1.2) on its input, then AuxNetwork for layer 3 at depth 2:
    BasicBlock(16 -> 32) for layer 9, BasicBlock(32 -> 64) for layer 15, pool, Linear, CE."""
    z = basic_block(h, w["model"], "layer1.2")
    z = fresh_block(z, w["aux"], "layers.0", strides[0])
    z = fresh_block(z, w["aux"], "layers.1", strides[1])
    logits = F.linear(z.mean(dim=(2, 3)), w["aux"]["head.fc.weight"], w["aux"]["head.fc.bias"])
    return F.cross_entropy(logits, y)


def compare(package: Path, strides: tuple[int, int] = (2, 2)) -> dict[str, float]:
    with load_package(package) as train:
        parts = train.build(0)
        block = parts.blocks[BLOCK].double().train()
        aux = parts.auxiliaries[BLOCK].double().train()
        torch.manual_seed(1)
        h = torch.randn(8, 16, 32, 32, dtype=torch.float64)
        y = torch.randint(0, 10, (8,))
        w = {"model": leaves(parts.model.double()), "aux": leaves(aux)}
        ref = auglocal_loss(h, y, w, strides)
        ref.backward()
        loss, _ = aux(block(h), y, h, [h])
        loss.backward()
        found = {"loss": relative(loss.detach(), ref.detach())}
        for name, p in block.named_parameters():
            found[f"block {name}"] = relative(p.grad, w["model"][name].grad)
        for name, p in aux.named_parameters():
            found[f"aux {name}"] = relative(p.grad, w["aux"][name].grad)
        return found


def test_augmented_matches_auglocals_auxiliary(package: Path) -> None:
    found = compare(package)
    worst = max(found, key=lambda k: found[k])
    assert found[worst] < 1e-6, (worst, found[worst])
    assert len(found) == 1 + 6 + 2 * 9 + 2  # loss, layer1.2, two fresh blocks, the Linear


def test_a_sample_without_auglocals_strides_is_told_apart(package: Path) -> None:
    assert max(compare(package, strides=(1, 1)).values()) > 1e-3


def test_parameter_counts_are_the_originals(package: Path) -> None:
    """AugLocal's AuxNetwork for ResNet-32, d = 2: layer 0 and layer 3 sample a 16 -> 32 and a
    32 -> 64 BasicBlock (14,528 + 57,728) and Linear(64, 10) (650); layer 12 samples two
    64 -> 64 BasicBlocks (73,984 each)."""
    with load_package(package) as train:
        parts = train.build(0)
    counts = [sum(p.numel() for p in aux.parameters()) for aux in parts.auxiliaries]
    assert counts[0] == counts[3] == 14_528 + 57_728 + 650
    assert counts[12] == 2 * 73_984 + 650
    assert [list(a.sampled) for a in parts.auxiliaries][:4] == [[8, 15], [8, 15], [8, 15], [9, 15]]
