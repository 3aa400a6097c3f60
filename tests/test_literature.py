"""The literature's auxiliaries on the emitted code: InfoPro's decoder and loss weights,
AugLocal's sampled units and depths, and what each kind refuses."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from splitter import api
from splitter.api import compile_package
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.transform.verify import verify_plan
from tests.conftest import EXAMPLES

RESNET = str(EXAMPLES / "resnet_cifar" / "model.py")
INFOPRO_K8 = ["layer1.0", "layer1.2", "layer1.4", "layer2.1", "layer2.3", "layer3.0", "layer3.2"]
STAGES = {"layer1": 1, "layer2": 6, "layer3": 11}  # ResNet-32's units: the stem, 15 blocks


def package(tmp_path: Path, cuts: list[str], aux: str, model: str = RESNET) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"version: 1\npartition: {{cuts: {cuts}}}\naux: {{default: {aux}}}\n")
    out = tmp_path / "pkg"
    compile_package(model, str(spec), ModelOptions(), out=str(out))
    return out


@pytest.fixture
def infopro(tmp_path: Path) -> Iterator[ModuleType]:
    out = package(tmp_path, ["layer1.2", "layer2.1", "layer3.0"], "{kind: infopro}")
    with load_package(out) as train:
        yield train


def test_infopro_weights_are_interpolated_over_the_auxiliaries(infopro: ModuleType) -> None:
    parts = infopro.build(0)
    weights = [(a.lambda1, a.lambda2) for a in parts.auxiliaries]
    assert weights == [(5.0, 0.0), (2.75, 0.5), (0.5, 1.0)]


def test_infopro_decoder_reconstructs_the_input_in_0_1(infopro: ModuleType) -> None:
    step, x, y = _step(infopro)
    h = step.parts.blocks[0](x)
    recon = step.parts.auxiliaries[0].decoder(h)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1


def test_infopro_loss_decreases_on_digits(infopro: ModuleType) -> None:
    args = infopro.parse_args(["--data", "digits", "--batch-size", "32"])
    step, _ = infopro.prepare(args)
    batches = step.dataset.train_batches(0, 32, 0)
    losses = [float(infopro.local_step(step, x, y)[0][0]) for _, (x, y) in zip(range(12), batches)]
    assert sum(losses[-3:]) / 3 < losses[0] * 0.9, losses


def test_infopro_is_refused_on_token_sequences(tmp_path: Path) -> None:
    model = str(EXAMPLES / "tiny_vit" / "model.py")
    with pytest.raises(SplitterError, match=r"reconstructs images.*`linear`, `conv`, `momentum`"):
        package(tmp_path, ["blocks.1"], "{kind: infopro}", model)


def test_infopro_serves_as_the_head_of_momentum(tmp_path: Path) -> None:
    out = package(tmp_path, ["layer1.2", "layer2.1"], "{kind: momentum, head: {kind: infopro}}")
    with load_package(out) as train:
        metrics = train.train(
            [
                "--data",
                "synthetic",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "runs"),
                "--no-checkpoint",
            ]
        )
        parts = train.build(0)
    assert type(parts.auxiliaries[0].head).__name__ == "InfoPro"
    assert all(loss == loss for loss in metrics["block_losses"])


# ---------------------------------------------------------------- AugLocal


def unit_index(cut: str) -> int:
    """ResNet-32's feature units: 0 the stem (conv1, bn1, relu: one unit), then `layerS.I`."""
    stage, block = cut.split(".")
    return STAGES[stage] + int(block)


LAYERS = ["relu", *(f"layer{s}.{i}" for s in (1, 2, 3) for i in range(5))]
"""AugLocal's 16 layers of ResNet-32 (`configs.py`): the stem, then the 15 BasicBlocks."""
WIDTHS = [16] * 6 + [32] * 5 + [64] * 5  # AugLocal's `net_dim` for ResNet-32


def expected_sampled(
    k: int, blocks: int, last: int, n: int = 16, d: int = 3, tau: float = 0.5
) -> list[int]:
    """AugLocal's `AuxNetwork` sampling, written out again as the oracle."""
    depth = pyramid_depth(k, blocks, d, tau)
    if depth >= n - 1 - last:
        return list(range(last + 1, n))
    return [round(last + (n - last - 1) / depth * i) for i in range(1, depth + 1)]


def pyramid_depth(k: int, blocks: int, d: int, tau: float = 0.5) -> int:
    """AugLocal's `aux_depth_list` (`--pyramid`), by the block's index."""
    if blocks == 2:
        return d
    ratio = k * tau / (blocks - 2)
    return max(1, round(d * (1 - ratio) + ratio))


def expected_strides(inplanes: int, sampled: list[int]) -> list[int]:
    """AugLocal's `num_pool`: stride 2 once per doubling of the width."""
    pools, strides = 0.0, []
    for index in sampled:
        pools += math.log2(WIDTHS[index] // inplanes)
        strides.append(2 if pools >= 1 else 1)
        pools -= 1 if pools >= 1 else 0
        inplanes = WIDTHS[index]
    return strides


def auglocal_cuts(depth: int) -> list[str]:
    """AugLocal's layer-wise split at `--local_module_num 16`: K - d modules, cut after each of
    the first layers (`train.py`)."""
    return LAYERS[: 16 - depth - 1]


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("split", ["K4", "K8", "K16"])
def test_auglocal_samples_the_papers_layers_and_builds_them_anew(
    tmp_path: Path, split: str, depth: int
) -> None:
    cuts = {"K4": ["layer1.2", "layer2.1", "layer3.0"], "K8": INFOPRO_K8}.get(
        split, auglocal_cuts(depth)
    )
    out = package(tmp_path, cuts, f"{{kind: augmented, depth: {depth}}}")
    with load_package(out) as train:
        parts = train.build(0)
    blocks = len(cuts) + 1
    backbone = {id(p) for p in parts.model.parameters()}
    for k, aux in enumerate(parts.auxiliaries):
        last = 0 if cuts[k] == "relu" else unit_index(cuts[k])
        expected = expected_sampled(k, blocks, last, d=depth)
        assert [LAYERS[i] for i in aux.sampled] == [LAYERS[i] for i in expected], (k, cuts[k])
        built = list(aux.layers)
        assert [type(m).__name__ for m in built] == ["BasicBlock"] * len(expected)
        assert [m.conv2.out_channels for m in built] == [WIDTHS[i] for i in expected]
        assert [m.conv1.stride[0] for m in built] == expected_strides(WIDTHS[last], expected)
        assert built[0].conv1.in_channels == WIDTHS[last]
        norm = "BatchNorm1d" if pyramid_depth(k, blocks, depth) <= 1 else "Identity"
        assert type(aux.head.norm).__name__ == norm
        assert not {id(p) for p in aux.parameters()} & backbone


PLAIN = """
from torch import nn


def build_model(num_classes=10):
    def stage(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(stage(3, 8, 1), stage(8, 8, 1), stage(8, 16, 2), stage(16, 16, 1),
                         stage(16, 32, 2), stage(32, 32, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
"""


def test_other_units_are_fresh_copies_with_adapters(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(PLAIN)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {cuts: ['0', '1']}\naux: {default: {kind: augmented}}\n"
    )
    out = tmp_path / "pkg"
    compile_package(
        str(tmp_path / "plain.py"), str(spec), ModelOptions(input_shape=(3, 16, 16)), out=str(out)
    )
    with load_package(out) as train:
        step, x, y = _step(train)
        aux = step.parts.auxiliaries[0]
        # layers 2, 3 and 5 of 0..5 (`d >= n-1-l` fails), an adapter from layer 3's 16 channels
        assert [type(m).__name__ for m in aux.layers] == ["Unit0", "Unit1", "Adapter", "Unit2"]
        assert list(aux.sampled) == [2, 3, 5]
        unit = aux.layers[0]
        weights = [p for p in unit.parameters() if p.dim() > 1]
        model_weights = {tuple(p.shape): p for p in step.parts.model.parameters()}
        assert not any(torch.equal(w, model_weights[tuple(w.shape)]) for w in weights)
        stats = train.local_step(step, x, y)
    assert len(stats) == 3 and all(float(loss) == float(loss) for loss, _ in stats)


def _step(train: ModuleType) -> tuple[object, torch.Tensor, torch.Tensor]:
    args = train.parse_args(["--data", "synthetic", "--batch-size", "8"])
    step, _ = train.prepare(args)
    x, y = next(step.dataset.train_batches(0, 8, 0))
    return step, x, y


# ---------------------------------------------------------------- MLAAN


@pytest.fixture
def mlaan(tmp_path: Path) -> Iterator[ModuleType]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {cuts: [layer1.2, layer2.1, layer3.0]}\n"
        "aux: {default: {kind: mlaan, window: 2}}\ntraining: {optimizer_scope: global}\n"
    )
    out = tmp_path / "pkg"
    compile_package(RESNET, str(spec), ModelOptions(), out=str(out))
    with load_package(out) as train:
        yield train


def test_mlaan_cascade_reaches_exactly_its_window(mlaan: ModuleType) -> None:
    """With one global step, gradients accumulate: block k's local backward changes the
    gradients of blocks k-1 and k (the window) and of its own auxiliary, nothing else; block 0
    has no loss of its own (MLAAN's CIFAR code), block 1's cascade trains it."""
    step, x, y = _step(mlaan)
    owners: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for k, block in enumerate(step.parts.blocks):
        owners.update({id(p): (f"block {k}", p) for p in block.parameters()})
    for k, aux in enumerate(step.parts.auxiliaries):
        owners.update({id(p): (f"aux {k}", p) for p in aux.parameters() if p.requires_grad})
    snapshots = []

    def snapshot() -> None:
        snapshots.append(
            {i: None if p.grad is None else p.grad.clone() for i, (_, p) in owners.items()}
        )

    for aux in step.parts.auxiliaries:  # runs right after each block's local backward
        aux.after_backward = (lambda run: lambda: (snapshot(), run()))(aux.after_backward)
    snapshot()
    mlaan.local_step(step, x, y)
    assert [a.window for a in step.parts.auxiliaries] == [1, 2, 2]
    for k in range(len(step.parts.auxiliaries)):
        before, after = snapshots[k], snapshots[k + 1]
        changed = {owners[i][0] for i in owners if not _same(before[i], after[i])}
        window = {f"block {b}" for b in range(max(0, k - 1), k + 1)}
        assert changed == (window | {f"aux {k}"} if k else set()), k


def test_verify_knows_the_mlaan_window(mlaan: ModuleType, tmp_path: Path) -> None:
    """`verify` runs each block's local loss over the window the emitted auxiliary trains."""
    plan = api.plan(RESNET, str(tmp_path / "spec.yaml"), ModelOptions())
    result = verify_plan(plan)
    assert result.ok, result
    step, _, _ = _step(mlaan)
    emitted = step.parts.windows  # the auxiliaries' and the task loss's (MLAAN's last two)
    assert [b.window for b in result.blocks] == emitted == [1, 2, 2, 2]


def test_mlaan_ema_updates_by_the_formula(mlaan: ModuleType) -> None:
    step, x, y = _step(mlaan)
    coupled = [a for a in step.parts.auxiliaries if getattr(a, "ema", None) is not None]
    assert [a.update_ema for a in coupled] == [False, True]  # `ema: last`, MLAAN's CIFAR code
    before = [[p.clone() for p in a.ema.parameters()] for a in coupled]
    sources = [[p.detach().clone() for p in a.source] for a in coupled]
    mlaan.local_step(step, x, y)
    for aux, old, src in zip(coupled, before, sources, strict=True):
        for new, o, s in zip(aux.ema.parameters(), old, src, strict=True):
            expected = aux.decay * o + (1 - aux.decay) * s if aux.update_ema else o
            torch.testing.assert_close(new, expected, rtol=1e-6, atol=1e-7)
            assert new.grad is None


def test_mlaan_needs_the_global_optimizer_scope(tmp_path: Path) -> None:
    with pytest.raises(SplitterError, match=r"optimizer_scope: global"):
        package(tmp_path, ["layer2.1"], "{kind: mlaan}")


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
