"""MLAAN computes what its CIFAR code says, to 1e-6, on one block of the bundled ResNet-32 at
MLAAN's own K = 8 split with its leap lists (`partition: {paper: {name: mlaan, k: 8}}`,
`aux: {preset: mlaan}`): a reference written here from `resnetMLAAN.py`'s training step
(functional, in float64) against the emitted package's blocks and auxiliary with the same
weights on the same batch: the independent loss on the block's output, the cascade over the
window of two blocks, the leap copies with the first one coupled to its EMA copy."""

from __future__ import annotations

import gc
import weakref

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import EXAMPLES
from tests.test_auglocal_parity import fresh_block as residual
from tests.test_man_parity import Weights, leaves, relative

BLOCK = 3  # layer2.0 and layer2.1; its window recomputes block 2 (layer1.3, layer1.4)
LEAP = ["layer3.0", "layer3.2", "layer3.3", "layer3.4"]  # MLAAN's list for module 3 at K = 8
STRIDES = {"layer2.0": 2, "layer3.0": 2}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mlaan")
    spec = tmp / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {paper: {name: mlaan, k: 8}}\naux: {preset: mlaan}\n"
        "training: {optimizer_scope: global}\n"
    )
    compile_package(
        str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions(), out=str(tmp / "pkg")
    )
    return tmp / "pkg"


def run(z: torch.Tensor, w: Weights, names: list[str], prefix: str = "") -> torch.Tensor:
    for name in names:
        z = residual(z, w, f"{prefix}{name}", STRIDES.get(name, 1))
    return z


def linear(z: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    return F.linear(z.mean(dim=(2, 3)), w[f"{name}.fc.weight"], w[f"{name}.fc.bias"])


def mlaan_loss(
    y_in: torch.Tensor, y: torch.Tensor, w: dict[str, Weights], coupled: bool = True
) -> torch.Tensor:
    """`resnetMLAAN.forward`, module i = 3: x = E3(x_in) for the independent loss, and the
    cascade z = E3(E2(y_in)); z = Aug[0](z) + EMA[0](z); z = Aug[1:](z);
    loss = 0.001 CE(net_classifier(x)) + 0.999 CE(aux_classifier(z))."""
    e2, e3 = ["layer1.3", "layer1.4"], ["layer2.0", "layer2.1"]
    x = run(run(y_in, w["model"], e2).detach(), w["model"], e3)
    z = run(run(y_in, w["model"], e2), w["model"], e3)
    first = run(z, w["leap"], LEAP[:1], "0.")
    z = first + run(z, w["ema"], LEAP[:1]) if coupled else first
    for i, name in enumerate(LEAP[1:], start=1):
        z = run(z, w["leap"], [name], f"{i}.")
    own = F.cross_entropy(linear(x, w["aux"], "independent"), y)
    return 0.001 * own + 0.999 * F.cross_entropy(linear(z, w["aux"], "head"), y)


def compare(package: Path, coupled: bool = True) -> tuple[dict[str, float], object]:
    with load_package(package) as train:
        parts = train.build(0)
        parts.model.double().train()
        aux = parts.auxiliaries[BLOCK].double().train()
        torch.manual_seed(1)
        y_in = torch.randn(8, 16, 32, 32, dtype=torch.float64)
        y = torch.randint(0, 10, (8,))
        w = {
            "model": leaves(parts.model),
            "leap": leaves(aux.leap),
            "ema": {k: v.detach().clone() for k, v in aux.ema.named_parameters()},
            "aux": leaves(aux),
        }
        ref = mlaan_loss(y_in, y, w, coupled)
        ref.backward()
        with torch.no_grad():
            x_in = parts.blocks[BLOCK - 1](y_in)
        loss, _ = aux(parts.blocks[BLOCK](x_in), y, y_in, [y_in, x_in])
        loss.backward()
        found = {"loss": relative(loss.detach(), ref.detach())}
        for k in (BLOCK - 1, BLOCK):
            for name, p in parts.blocks[k].named_parameters():
                found[f"block{k} {name}"] = relative(p.grad, w["model"][name].grad)
        for name, p in aux.named_parameters():
            if p.requires_grad:
                group, key = ("leap", name[5:]) if name.startswith("leap.") else ("aux", name)
                found[f"aux {name}"] = relative(p.grad, w[group][key].grad)
        return found, parts


def test_the_papers_split_and_leap_lists_are_expanded(package: Path) -> None:
    lock = yaml.safe_load((package / "spec.lock.yaml").read_text())
    assert lock["partition"]["cuts"] == [
        "layer1.0",
        "layer1.2",
        "layer1.4",
        "layer2.1",
        "layer2.3",
        "layer3.0",
        "layer3.2",
    ]
    assert lock["aux"]["blocks"][str(BLOCK)]["leap"] == LEAP
    assert lock["aux"]["blocks"]["6"]["leap"] == ["layer3.3", "layer3.4"]
    assert lock["aux"]["default"]["decay"] == 0.999


def test_mlaan_matches_its_cifar_code(package: Path) -> None:
    found, _ = compare(package)
    worst = max(found, key=lambda k: found[k])
    assert found[worst] < 1e-6, (worst, found[worst])
    # loss, blocks 2 and 3, the independent head, four leap copies, the head
    assert len(found) == 1 + 12 + 15 + 2 + (9 + 6 + 6 + 6) + 2


def test_a_cascade_without_the_ema_coupling_is_told_apart(package: Path) -> None:
    found, _ = compare(package, coupled=False)
    assert max(found.values()) > 1e-3


def test_only_the_last_auxiliarys_ema_copy_follows_its_source(package: Path) -> None:
    """MLAAN's CIFAR code updates `EMA_Net[-1]` alone, from the real layer3.3, with decay 0.999."""
    with load_package(package) as train:
        parts = train.build(0)
    with torch.no_grad():
        for p in parts.model.parameters():
            p.add_(1.0)  # the sources move away from the copies' start
    auxiliaries = list(parts.auxiliaries)[1:]  # block 0's has no loss, so no EMA copy
    before = [[p.detach().clone() for p in a.ema.parameters()] for a in auxiliaries]
    for aux in auxiliaries:
        aux.after_backward()
    source = parts.model.get_submodule("layer3.3")
    for k, aux in enumerate(auxiliaries, start=1):
        after = list(aux.ema.parameters())
        if k < 6:
            assert all(torch.equal(a, b) for a, b in zip(after, before[k - 1], strict=True)), k
        else:
            expected = [
                0.999 * b + 0.001 * s
                for b, s in zip(before[k - 1], source.parameters(), strict=True)
            ]
            assert all(torch.allclose(a, e) for a, e in zip(after, expected, strict=True))


def test_module_0_trains_only_through_module_1s_cascade(package: Path) -> None:
    """`resnetMLAAN.forward` gives module 0 no loss (i = 0 only detaches); the cascade of
    module 1 recomputes it from the stem's input. The package's block 0 step backpropagates
    nothing; verify still finds every parameter trained, by exactly one loss."""
    assert "Unsupervised()" in (package / "blocks.py").read_text()
    with load_package(package) as train:
        step, _ = train.prepare(train.parse_args(["--data", "synthetic", "--batch-size", "8"]))
        x, y = next(step.dataset.train_batches(0, 8, 0))
        steps = importlib.import_module("step")
        flight = steps.Flight(0, x, y, x, [x])
        steps.block_step(step, 0, flight)
        assert all(p.grad is None for p in step.parts.blocks[0].parameters())
        steps.block_step(step, 1, flight)
        assert all(p.grad is not None for p in step.parts.blocks[0].parameters())


def test_the_task_loss_reaches_the_last_two_modules(package: Path) -> None:
    """`y = E[-1](E[-2](y)); loss = CE(fc64(pool(y)))`: the last block's loss recomputes block
    6 from its detached input, and its gradients reach both blocks."""
    assert "TASK_WINDOW = 2" in (package / "blocks.py").read_text()
    with load_package(package) as train:
        step, _ = train.prepare(train.parse_args(["--data", "synthetic", "--batch-size", "8"]))
        parts = step.parts
        parts.model.double().train()
        torch.manual_seed(1)
        y_in = torch.randn(8, 64, 8, 8, dtype=torch.float64)
        y = torch.randint(0, 10, (8,))
        w = leaves(parts.model)
        z = run(run(y_in, w, ["layer3.1", "layer3.2"]), w, ["layer3.3", "layer3.4"])
        ref = F.cross_entropy(F.linear(z.mean(dim=(2, 3)), w["fc.weight"], w["fc.bias"]), y)
        ref.backward()
        with torch.no_grad():
            x_in = parts.blocks[6](y_in)
        _, loss, _ = step.locals[7](x_in, y, y_in, [y_in, x_in], {})
        loss.backward()
        found = {"loss": relative(loss.detach(), ref.detach())}
        for k in (6, 7):
            for name, p in parts.blocks[k].named_parameters():
                found[f"block{k} {name}"] = relative(p.grad, w[name].grad)
    worst = max(found, key=lambda k: found[k])
    assert found[worst] < 1e-6, (worst, found[worst])
    assert len(found) == 1 + 12 + 14


def test_the_package_readme_says_how_mlaans_blocks_train(package: Path) -> None:
    text = " ".join((package / "README.md").read_text().split())
    assert "gradients cross block boundaries inside a window and nowhere else" in text
    assert "Block 0 has no loss of its own: block 1's cascade trains it." in text
    assert "The task loss trains the last 2 blocks together." in text
    assert "no gradient crosses a block boundary" not in text


def test_a_plan_with_mlaans_windows_verifies(package: Path, tmp_path: Path) -> None:
    from splitter import api

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {paper: {name: mlaan, k: 8}}\naux: {preset: mlaan}\n"
        "training: {optimizer_scope: global}\n"
    )
    _, checked = api.verify(str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions())
    assert checked.ok, checked


def test_module_0s_step_keeps_no_graph(package: Path) -> None:
    """Regression: block 0's forward built a graph that no backward ever freed (the memory
    tracker's saved-tensor hooks pack each saved output as itself, which refers back to its
    node), so every step kept its activations: 23 GiB after 17 epochs of digits at K = 4."""
    with load_package(package) as train:
        step, _ = train.prepare(train.parse_args(["--data", "synthetic", "--batch-size", "8"]))
        x, y = next(step.dataset.train_batches(0, 8, 0))
        steps = importlib.import_module("step")
        seen: list[weakref.ref[torch.Tensor]] = []
        last = list(step.parts.blocks[0].modules())[-1]
        handle = last.register_forward_hook(lambda m, a, out: seen.append(weakref.ref(out)))
        try:
            steps.block_step(step, 0, steps.Flight(0, x, y, x, [x]))
        finally:
            handle.remove()
        gc.collect()
        assert seen and all(ref() is None for ref in seen)  # nothing of block 0's forward kept
