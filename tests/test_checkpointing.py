"""Activation recomputation computes what holding the activations computes, in less memory:
`train.py --mode e2e --checkpoint` (the unsplit model, checkpointed at the block boundaries)
gives plain e2e's weights, BatchNorm statistics and dropout masks included; the momentum
auxiliary's recomputed EMA copy gives the gradients of the held one."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torchvision.models.resnet import Bottleneck

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.runtime.auxiliary import Classifier, LinearHead, Momentum
from splitter.runtime.memory import LiveTensors

FIXTURE = Path(__file__).parent / "fixtures" / "pipenet.py"
SPEC = """\
version: 1
model: {input_shape: [3, 16, 16], kwargs: {dropout: 0.2}}
partition: {cuts: [units.1, units.3, units.4]}
aux: {default: {kind: linear}}
training:
  batch_size: 64
  data: {name: synthetic}
"""
RUN = ["--data", "synthetic", "--steps", "3", "--threads", "1", "--eval-batches", "1"]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN with BatchNorm and dropout in every unit, in four blocks."""
    root = tmp_path_factory.mktemp("checkpointing")
    (root / "spec.yaml").write_text(SPEC)
    compile_package(str(FIXTURE), str(root / "spec.yaml"), ModelOptions(), out=str(root / "pkg"))
    return root / "pkg"


@pytest.fixture
def train(package: Path) -> Iterator[ModuleType]:
    with load_package(package) as module:
        yield module


def run(train: ModuleType, out: Path, *extra: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Three e2e steps; the exported state_dict and metrics.json."""
    train.train([*RUN, "--mode", "e2e", "--out", str(out), "--export", str(out / "w.pt"), *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    return torch.load(out / "w.pt", weights_only=True), metrics


def test_checkpoint_gives_plain_e2e_weights_with_fewer_live_activations(
    train: ModuleType, tmp_path: Path
) -> None:
    plain, plain_metrics = run(train, tmp_path / "plain")
    recomputed, metrics = run(train, tmp_path / "checkpoint", "--checkpoint")
    assert plain.keys() == recomputed.keys()
    for name, value in plain.items():
        assert torch.allclose(value.double(), recomputed[name].double(), rtol=0, atol=1e-6), name
    # each BatchNorm counted 3 batches: the recomputation's second pass left no trace
    assert {int(v) for k, v in recomputed.items() if k.endswith("num_batches_tracked")} == {3}
    assert metrics["peak_tensor_bytes"] < 0.8 * plain_metrics["peak_tensor_bytes"]
    # autograd's saves go to checkpoint's own hooks: that figure is not claimed
    assert metrics["peak_memory_bytes"] is None
    assert metrics["peak_memory_method"] == "unmeasured_under_checkpoint"
    assert plain_metrics["peak_memory_bytes"] > 0


def test_checkpoint_weights_differ_from_a_run_that_lets_the_recomputation_move_buffers(
    train: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The equality above needs the buffers put back: without that the statistics drift."""
    plain, _ = run(train, tmp_path / "plain")
    monkeypatch.setattr(sys.modules["recompute"], "restored_buffers", lambda module: nullcontext())
    drifted, _ = run(train, tmp_path / "drifted", "--checkpoint")
    assert any(
        not torch.allclose(plain[k].double(), drifted[k].double(), atol=1e-6)
        for k in plain
        if "running" in k
    )


def test_checkpoint_needs_e2e(train: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(sys.modules["settings"].FlagError, match="pass it with --mode e2e"):
        train.train([*RUN, "--checkpoint", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- the momentum auxiliary


def momentum_step(recompute: bool) -> tuple[dict[str, torch.Tensor], int]:
    """One local backward of a MAN++ auxiliary on a torchvision Bottleneck at 32x32: every
    gradient (the block output's included) and EMA-copy buffer after it, and the most bytes
    of live tensors during it."""
    torch.manual_seed(0)
    unit = Bottleneck(64, 16)
    head = Classifier(LinearHead((64, 32, 32), "nchw", 10))
    aux = Momentum(unit, head, recompute=recompute)
    h0 = torch.randn(8, 64, 32, 32)
    y = torch.randint(0, 10, (8,))
    live = LiveTensors()
    live.track([*aux.parameters(), *aux.buffers()])
    with live:
        h = h0.clone().requires_grad_()
        loss, _ = aux(h, y, torch.empty(0))
        loss.backward()
        found = {"h": h.grad}
    found |= {f"grad.{k}": p.grad for k, p in aux.named_parameters() if p.grad is not None}
    found |= {f"ema.{k}": b for k, b in aux.ema.named_buffers()}
    return found, live.peak_bytes


def test_recomputed_frozen_copy_gives_the_same_gradients_with_fewer_live_bytes() -> None:
    held, held_peak = momentum_step(recompute=False)
    again, again_peak = momentum_step(recompute=True)
    assert held.keys() == again.keys() and "grad.scale" in held and "grad.lb.conv1.weight" in held
    for name, value in held.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=1e-6, msg=name)
    assert int(again["ema.bn1.num_batches_tracked"]) == 1
    assert again_peak < 0.85 * held_peak, (again_peak, held_peak)
