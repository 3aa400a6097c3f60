"""MAN and MAN++ compute what the papers' equations say, to 1e-6, on one block of the bundled
ResNet-32: a reference written here from the equations (functional, in float64) against the
emitted package's block and momentum auxiliary with the same weights on the same batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from splitter.package import load_package
from tests.conftest import example_package

Weights = dict[str, torch.Tensor]
DECAY = 0.995


def package(tmp_path: Path, learnable: bool) -> Path:
    learn = str(learnable).lower()
    return example_package(
        tmp_path, aux=f"{{default: {{kind: momentum, learnable_scale: {learn}}}}}"
    )


# ---------------------------------------------------------------- the reference


def bn(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """BatchNorm in training mode: the batch's own statistics."""
    return F.batch_norm(x, None, None, w[f"{name}.weight"], w[f"{name}.bias"], training=True)


def basic_block(x: torch.Tensor, w: Weights, name: str, closing: bool = True) -> torch.Tensor:
    """He et al.'s BasicBlock with an identity shortcut: relu(bn2(conv2(relu(bn1(conv1 x)))) + x),
    the outer ReLU only with `closing`."""
    out = F.relu(bn(F.conv2d(x, w[f"{name}.conv1.weight"], padding=1), w, f"{name}.bn1"))
    out = bn(F.conv2d(out, w[f"{name}.conv2.weight"], padding=1), w, f"{name}.bn2") + x
    return F.relu(out) if closing else out


def block0(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """The stem and layer1.0..2 of the ResNet-32: block 0 of the InfoPro K=4 split."""
    h = F.relu(bn(F.conv2d(x, w["conv1.weight"], padding=1), w, "bn1"))
    for i in range(3):
        h = basic_block(h, w, f"layer1.{i}")
    return h


def conv_head(y: torch.Tensor, w: Weights) -> torch.Tensor:
    """InfoPro's `1c2f` shape at width 2C: conv3x3 stride 2, BN, ReLU, pool, Linear, ReLU, Linear."""
    z = F.relu(bn(F.conv2d(y, w["convs.0.weight"], stride=2, padding=1), w, "convs.1"))
    z = F.relu(F.linear(z.mean(dim=(2, 3)), w["mlp.0.weight"], w["mlp.0.bias"]))
    return F.linear(z, w["mlp.2.weight"], w["mlp.2.bias"])


def man_loss(
    x: torch.Tensor, y: torch.Tensor, w: dict[str, Weights], s: torch.Tensor, closing: bool = True
) -> torch.Tensor:
    """MAN (s = 1) and MAN++: h = block0(x); u = s * LB(h) + (2 - s) * EMA(h), LB and EMA being
    copies of the next unit (layer1.3); the head's cross entropy on u."""
    h = block0(x, w["model"])
    lb = basic_block(h, w["lb"], "layer1.3", closing)
    ema = basic_block(h, w["ema"], "layer1.3", closing)
    return F.cross_entropy(conv_head(s * lb + (2 - s) * ema, w["head"]), y)


# ---------------------------------------------------------------- the comparison


def leaves(module: torch.nn.Module) -> Weights:
    return {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run_both(out: Path, closing: bool = True) -> tuple[dict[str, float], Any]:
    """Worst relative differences (loss, every gradient) between the package and the reference,
    and the package's auxiliary after one EMA update with the reference's expected EMA."""
    with load_package(out) as train:
        parts = train.build(0)
        parts.model.double().train()
        aux = parts.auxiliaries[0].double().train()
        torch.manual_seed(1)
        x = torch.rand(8, 3, 32, 32, dtype=torch.float64)
        y = torch.randint(0, 10, (8,))
        w = {
            "model": leaves(parts.model),
            "lb": leaves(aux.lb),
            "ema": {k: v.detach().clone() for k, v in aux.ema.named_parameters()},
            "head": leaves(aux.head.head),
        }
        learnable = isinstance(aux.scale, torch.nn.Parameter)
        s = aux.scale.detach().clone().requires_grad_(learnable)
        ref = man_loss(x, y, w, s, closing)
        ref.backward()
        loss, _ = aux(parts.blocks[0](x), y, x, [x])
        loss.backward()
        found = {"loss": relative(loss.detach(), ref.detach())}
        for name, p in parts.blocks[0].named_parameters():
            found[f"block0 {name}"] = relative(p.grad, w["model"][name].grad)
        for group, module in (("lb", aux.lb), ("head", aux.head.head)):
            for name, p in module.named_parameters():
                found[f"{group} {name}"] = relative(p.grad, w[group][name].grad)
        if learnable:
            found["s"] = relative(aux.scale.grad, s.grad)
        source = dict(parts.model.named_parameters())
        expected = {k: DECAY * v + (1 - DECAY) * source[k].detach() for k, v in w["ema"].items()}
        aux.after_backward()
        ema_error = max(float((p - expected[k]).abs().max()) for k, p in aux.ema.named_parameters())
        return found, (ema_error, aux)


@pytest.mark.parametrize("learnable", [False, True], ids=["MAN", "MAN++"])
def test_momentum_matches_the_papers_equations(tmp_path: Path, learnable: bool) -> None:
    found, (ema_error, aux) = run_both(package(tmp_path, learnable))
    worst = max(found, key=lambda k: found[k])
    assert found[worst] < 1e-6, (worst, found[worst])
    assert len(found) == 1 + 21 + 6 + 7 + learnable  # loss, block 0, LB, head (and s)
    assert ema_error < 1e-7
    assert not any(p.requires_grad for p in aux.ema.parameters())


@pytest.mark.parametrize("learnable", [False, True], ids=["MAN", "MAN++"])
def test_a_copy_without_the_closing_relu_is_told_apart(tmp_path: Path, learnable: bool) -> None:
    """The reference that stops the copied unit before its ReLU (what the copies did before
    units kept their closing activation) differs by far more than the tolerance."""
    found, _ = run_both(package(tmp_path, learnable), closing=False)
    assert max(found.values()) > 1e-3


def test_fresh_copies_start_from_the_papers_init(tmp_path: Path) -> None:
    """MAN's LB and EMA copies start from new random weights (`init: fresh`, the default):
    He-normal convolutions over the fan-out, BatchNorm at 1 and 0."""
    with load_package(package(tmp_path, True)) as train:
        parts = train.build(0)
    aux = parts.auxiliaries[0]
    source = parts.model.layer1[3]
    for copy_ in (aux.lb, aux.ema):
        conv: Callable[..., Any] = copy_.get_submodule("layer1.3.conv1")
        assert not torch.equal(conv.weight, source.conv1.weight)
        assert abs(float(conv.weight.detach().std()) - (2 / (9 * 16)) ** 0.5) < 0.02
        norm = copy_.get_submodule("layer1.3.bn1")
        assert torch.equal(norm.weight, torch.ones(16)) and torch.equal(norm.bias, torch.zeros(16))
    assert not torch.equal(
        aux.lb.get_submodule("layer1.3.conv1").weight,
        aux.ema.get_submodule("layer1.3.conv1").weight,
    )
