"""The emitted package's semantics, on the emitted code itself: it runs without splitter, EMA
updates are exact, no gradient crosses a block boundary, exports load into the original class,
and resuming gives the weights of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import EXAMPLES, Killed, stopped_at_a_checkpoint

NO_SPLITTER = (
    "import runpy, sys\n"
    "for name in ('splitter', 'schemas', 'cli'):\n"
    "    sys.modules[name] = None  # any import of them fails\n"
    "sys.argv = ['train.py', *sys.argv[1:]]\n"
    "runpy.run_path('train.py', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example compiled once for this module."""
    root = tmp_path_factory.mktemp("packages")
    made = {}
    for spec in sorted(EXAMPLES.glob("*/spec.yaml")):
        out = root / spec.parent.name
        model = str(spec.parent / "model.py")
        compile_package(model, str(spec), ModelOptions(), out=str(out))
        made[spec.parent.name] = out
    return made


@pytest.fixture
def train(packages: dict[str, Path]) -> Iterator[ModuleType]:
    with load_package(packages["resnet_cifar"]) as module:
        yield module


@pytest.mark.parametrize("name", ["resnet_cifar", "tiny_vit"])
def test_package_trains_three_steps_without_splitter(
    packages: dict[str, Path], name: str, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    args = ["--data", "synthetic", "--steps", "3", "--batch-size", "8", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", NO_SPLITTER, *args],
        cwd=packages[name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["block_losses"]) == 4
    # the momentum auxiliaries' EMA copies recompute in the backward: not in the saved count
    assert metrics["peak_memory_method"] == "saved_tensor_bytes_outside_recomputation"
    assert metrics["peak_memory_bytes"] > 0
    assert metrics["peak_tensor_method"] == "live_tensor_bytes"
    assert metrics["peak_rss_bytes"] > metrics["peak_tensor_bytes"] > metrics["peak_memory_bytes"]
    assert "tensors" in done.stdout and "RSS" in done.stdout
    assert not list(packages[name].rglob("__pycache__"))


def test_local_training_holds_fewer_live_tensors_than_e2e(train: ModuleType, tmp_path: Path) -> None:
    """The tensor-level peak counts parameters, gradients, optimizer state and activations:
    end to end it exceeds local training's, and each exceeds its saved-activation peak by at
    least the parameters and their gradients."""
    found = {}
    for mode in ("e2e", "local"):
        args = ["--mode", mode, "--data", "synthetic", "--steps", "2", "--batch-size", "32",
                "--no-checkpoint", "--eval-batches", "1", "--out", str(tmp_path / mode)]
        found[mode] = train.train(args)
    params = sum(p.numel() * 4 for p in train.build(0).model.parameters())
    for metrics in found.values():
        assert metrics["peak_tensor_bytes"] >= metrics["peak_memory_bytes"] + 2 * params
    assert found["local"]["peak_tensor_bytes"] < found["e2e"]["peak_tensor_bytes"]


def one_step(train: ModuleType, batch_size: int = 8, scope: str = "block") -> Any:
    """A Step ready to run on synthetic data, and a batch."""
    args = train.parse_args(["--data", "synthetic", "--batch-size", str(batch_size)])
    train.TRAINING["optimizer_scope"] = scope
    try:
        step, _ = train.prepare(args)
    finally:
        train.TRAINING["optimizer_scope"] = "block"
    x, y = next(step.dataset.train_batches(0, batch_size, 0))
    return step, x, y


def test_ema_moves_by_the_formula_and_never_gets_a_gradient(train: ModuleType) -> None:
    step, x, y = one_step(train)
    momentum = [a for a in step.parts.auxiliaries if type(a).__name__ == "Momentum"]
    assert len(momentum) == 3
    before = [[p.detach().clone() for p in a.ema.parameters()] for a in momentum]
    sources = [[p.detach().clone() for p in a.source] for a in momentum]
    train.local_step(step, x, y)
    for aux, old, src in zip(momentum, before, sources, strict=True):
        assert all(not p.requires_grad and p.grad is None for p in aux.ema.parameters())
        for new, o, s in zip(aux.ema.parameters(), old, src, strict=True):
            expected = aux.decay * o + (1 - aux.decay) * s
            torch.testing.assert_close(new, expected, rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(n, o) for n, o in zip(aux.ema.parameters(), old, strict=True))


def test_the_ema_source_is_the_next_blocks_first_unit(train: ModuleType) -> None:
    step, _, _ = one_step(train)
    for k, aux in enumerate(step.parts.auxiliaries):
        next_block = {id(p) for p in step.parts.blocks[k + 1].parameters()}
        assert aux.source and all(id(p) in next_block for p in aux.source)
        lb = {id(p) for p in aux.lb.parameters()}
        assert not lb & next_block  # a copy, trained by block k's loss only


def test_no_gradient_crosses_a_block_boundary(train: ModuleType) -> None:
    """With one global step, gradients accumulate: between the forwards of blocks k and k+1
    (block k's local backward) only block k's and its auxiliary's gradients may change."""
    step, x, y = one_step(train, scope="global")
    params = {}
    for k, module in [*enumerate(step.parts.blocks), *enumerate(step.parts.auxiliaries)]:
        params.update({id(p): (k, p) for p in module.parameters() if p.requires_grad})
    snapshots: list[dict[int, torch.Tensor | None]] = []

    def snapshot(module: Any, args: tuple[Any, ...]) -> None:
        assert not args[0].requires_grad  # the detached output of the block before
        grads = {i: None if p.grad is None else p.grad.clone() for i, (_, p) in params.items()}
        snapshots.append(grads)

    handles = [b.register_forward_pre_hook(snapshot) for b in step.parts.blocks]
    train.local_step(step, x, y)
    for handle in handles:
        handle.remove()
    for k in range(len(snapshots) - 1):
        before, after = snapshots[k], snapshots[k + 1]
        for i, (owner, _) in params.items():
            if owner == k:
                assert after[i] is not None  # block k trained
            else:
                assert _same(before[i], after[i]), f"block {k}'s backward reached block {owner}"


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def test_per_block_optimizers_step_before_the_next_block(train: ModuleType) -> None:
    step, x, y = one_step(train)
    steps: list[int] = []
    for k, optimizer in enumerate(step.optimizers):
        optimizer.register_step_post_hook(lambda *_, k=k: steps.append(k))
    forwards: list[int] = []
    for k, block in enumerate(step.parts.blocks):
        block.register_forward_pre_hook(lambda *_, k=k: forwards.append(k) or None)
    train.local_step(step, x, y)
    assert steps == [0, 1, 2, 3] and forwards == [0, 1, 2, 3]


def test_every_trainable_parameter_is_in_exactly_one_optimizer(train: ModuleType) -> None:
    step, _, _ = one_step(train)
    counted: dict[int, int] = {}
    for optimizer in step.optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                counted[id(p)] = counted.get(id(p), 0) + 1
    wanted = [p for m in (step.parts.model, step.parts.auxiliaries) for p in m.parameters()]
    assert {id(p) for p in wanted if p.requires_grad} == set(counted)
    assert set(counted.values()) == {1}


def run(train: ModuleType, tmp: Path, *extra: str) -> dict[str, Any]:
    args = ["--data", "synthetic", "--batch-size", "16", "--out", str(tmp), *extra]
    return train.train(args)  # type: ignore[no-any-return]


def test_export_loads_into_the_original_class_and_matches_the_blocks(
    train: ModuleType, tmp_path: Path
) -> None:
    run(train, tmp_path, "--steps", "2", "--export", str(tmp_path / "w.pt"))
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    original = train.model_file.build_model()
    original.load_state_dict(state, strict=True)
    parts = train.build(0)
    parts.model.load_state_dict(state)
    original.eval(), parts.blocks.eval()
    x = torch.randn(4, 3, 32, 32)
    h = x
    for block in parts.blocks:
        h = block(h)
    assert torch.equal(original(x), h)


def test_resume_continues_to_the_uninterrupted_weights(
    train: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(train, whole, "--steps", "5", "--export", str(tmp_path / "whole.pt"))
    with stopped_at_a_checkpoint(train, monkeypatch), pytest.raises(Killed, match="3"):
        run(train, split, "--steps", "5", "--save-every", "3")
    run(train, split, "--steps", "5", "--resume", "--export", str(tmp_path / "resumed.pt"))
    a = torch.load(tmp_path / "whole.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    aux_a = torch.load(whole / "checkpoint.pt", weights_only=False)["auxiliaries"]
    aux_b = torch.load(split / "checkpoint.pt", weights_only=False)["auxiliaries"]
    assert all(torch.equal(aux_a[k], aux_b[k]) for k in aux_a)


@pytest.mark.parametrize("flags", [["--precision", "bf16"], ["--channels-last", "--threads", "1"]])
def test_precision_and_memory_format_flags_train(
    train: ModuleType, tmp_path: Path, flags: list[str]
) -> None:
    metrics = run(train, tmp_path, "--steps", "2", *flags)
    assert all(loss == loss for loss in metrics["block_losses"])  # finite, not NaN


def test_e2e_mode_trains_the_unsplit_model(train: ModuleType, tmp_path: Path) -> None:
    metrics = run(train, tmp_path, "--steps", "2", "--mode", "e2e", "--no-checkpoint")
    assert metrics["mode"] == "e2e" and len(metrics["block_losses"]) == 1
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "metrics.json").exists()


def test_labels_outside_the_output_width_name_num_classes(
    train: ModuleType, tmp_path: Path
) -> None:
    train.PACKAGE["num_classes"] = 5
    try:
        with pytest.raises(train.ConfigError, match=r"10 classes .* outputs 5 .*num_classes=10"):
            run(train, tmp_path, "--steps", "1", "--data", "digits")
    finally:
        train.PACKAGE["num_classes"] = 10


def test_a_changed_model_is_caught_by_its_fingerprint(train: ModuleType) -> None:
    saved = train.PACKAGE["fingerprint"]
    train.PACKAGE["fingerprint"] = "0" * 16
    try:
        with pytest.raises(train.ConfigError, match="run `splitter compile` again"):
            train.build(0)
    finally:
        train.PACKAGE["fingerprint"] = saved


@pytest.mark.parametrize("kind", ["linear", "conv", "momentum"])
@pytest.mark.parametrize(("fixture", "layout"), [("nhwc.py", "nhwc"), ("../../examples/tiny_vit/model.py", "nlc")])
def test_every_kind_serves_maps_and_sequences(
    kind: str, fixture: str, layout: str, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    model = str(Path(__file__).parent / "fixtures" / fixture)
    compile_package(model, None, ModelOptions(), out=str(out), blocks=3, aux=kind)
    assert f', "{layout}", num_classes' in (out / "blocks.py").read_text()
    with load_package(out) as train:
        metrics = run(train, tmp_path / "runs", "--steps", "2", "--batch-size", "4")
    assert len(metrics["block_losses"]) == 3


@pytest.mark.parametrize("init", ["copy", "fresh"])
def test_momentum_copies_start_from_the_source_or_afresh(init: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\npartition: {cuts: [layer1.2, layer2.1]}\n"
        f"aux: {{default: {{kind: momentum, init: {init}, learnable_scale: false}}}}\n"
    )
    out = tmp_path / "pkg"
    compile_package(str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions(), out=str(out))
    with load_package(out) as train:
        parts = train.build(0)
    for aux in parts.auxiliaries:
        assert "scale" not in dict(aux.named_parameters())  # MAN: s fixed at 1
        pairs = list(zip(aux.lb.parameters(), aux.source, strict=True))
        same = [torch.equal(a, b) for a, b in pairs if a.dim() > 1]  # BatchNorm resets to 1, 0
        assert all(same) if init == "copy" else not any(same)


@pytest.mark.slow
def test_torch_compile_flag_trains(train: ModuleType, tmp_path: Path) -> None:
    """`--compile` (inductor on CPU needs a C++ compiler: minutes, hence `slow`)."""
    metrics = run(train, tmp_path, "--steps", "2", "--compile", "--no-checkpoint")
    assert all(loss == loss for loss in metrics["block_losses"])
