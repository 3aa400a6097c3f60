"""Emitted blocks read like the model (submodules called whole, public names, typed, the batch
axis named) and compute it exactly, holding no more tensor memory than fx's own code."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.fx as fx
from torch import nn

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.runtime.memory import LiveTensors
from splitter.transform.compare import tree_equal
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"

MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """Attention and permutes in the model's own forward, so that they stay unfolded."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.qkv = nn.Linear(16, 48)
        self.mid = nn.Sequential(nn.Linear(16, 16), nn.GELU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + F.scaled_dot_product_attention(q, k, v)
        x = x.permute(1, 0, 2)
        x = self.mid(x)
        x = x.permute(1, 0, 2)
        x = x.reshape(x.shape[0], -1, 16)
        if self.training:
            x = self.drop(x)
        return self.head(x.mean(1))


def build_model():
    return Net()
'''


def assert_blocks_compute_the_model(train: ModuleType) -> None:
    """The package's emitted blocks, run one after the other, give the model's output
    exactly, in eval and in train mode (the same random draws for dropout)."""
    parts = train.build(0)
    x = torch.randn(2, *train.LOCK["model"]["input_shape"])
    with torch.no_grad():
        for training in (False, True):
            parts.model.train(training), parts.blocks.train(training)
            torch.manual_seed(0)
            expected = parts.model(x)
            torch.manual_seed(0)
            h = x
            for block in parts.blocks:
                h = block(h)
            assert tree_equal(h, expected), f"training={training}"


def forward_statements(source: str, cls: str) -> list[ast.stmt]:
    tree = ast.parse(source)
    found = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    forward = next(n for n in found.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    return forward.body


def test_the_golden_blocks_call_submodules_whole_by_index_and_attribute() -> None:
    resnet = (GOLDEN / "resnet_cifar" / "blocks.py").read_text()
    body = forward_statements(resnet, "Block0")
    assert len(body) < 10
    assert [ast.unparse(s) for s in body[3:6]] == [f"x = self.layer1[{i}](x)" for i in range(3)]
    for text in (resnet, (GOLDEN / "tiny_vit" / "blocks.py").read_text()):
        assert "getattr(self." not in text and "getattr(getattr(" not in text
        assert "torch._C" not in text and " = None" not in text
        assert "def forward(self, x: torch.Tensor) -> torch.Tensor:" in text


@pytest.fixture(scope="module")
def attention(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attention")
    (root / "net.py").write_text(MODEL)
    (root / "spec.yaml").write_text("version: 1\npartition: {cuts: [add]}\n")
    out = root / "pkg"
    options = ModelOptions(input_shape=(6, 8), batch_size=2)
    compile_package(str(root / "net.py"), str(root / "spec.yaml"), options, out=str(out))
    return out


def test_calls_read_as_the_model_writes_them(attention: Path) -> None:
    text = (attention / "blocks.py").read_text()
    assert "F.scaled_dot_product_attention(" in text and "torch._C" not in text
    assert "import torch.nn.functional as F" in text
    assert re.search(r"= x\.permute\(1, 0, 2\)  # \(6, B, 16\)", text)
    assert "= self.mid(x)  # (6, B, 16)" in text  # a Sequential called whole
    assert "x = x + " in text
    # sizes hold no memory: named for what they are, never deleted, never taking a tensor's name
    size = re.search(r"x = x.reshape\((getitem_\d), -1, 16\)", text)
    assert "shape = x.shape\n" in text and size
    assert not re.search(rf"del .*\b(shape|{size.group(1)})\b", text)


def test_one_forward_where_the_modes_agree_and_a_dispatch_where_they_differ(
    attention: Path,
) -> None:
    text = (attention / "blocks.py").read_text()
    block0, block1 = text.split("class Block1")
    assert "forward_train" not in block0
    assert "if self.training:\n            return self.forward_train(x)" in block1
    assert "self.drop(" in block1.split("def forward_eval")[0]
    assert "self.drop(" not in block1.split("def forward_eval")[1]


def test_the_emitted_blocks_compute_the_model(attention: Path) -> None:
    with load_package(attention) as train:
        assert_blocks_compute_the_model(train)


def test_a_sequential_model_is_indexed_from_self(tmp_path: Path) -> None:
    (tmp_path / "seq.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),"
        " nn.Linear(8, 2))\n"
    )
    out = tmp_path / "pkg"
    options = ModelOptions(input_shape=(4,))
    compile_package(f"{tmp_path / 'seq.py'}:build", None, options, out=str(out), blocks=2)
    text = (out / "blocks.py").read_text()
    assert "input = self[0](input)" in text and "getattr(" not in text.split("class Block0")[1]
    with load_package(out) as train:
        assert_blocks_compute_the_model(train)


# ---------------------------------------------------------------- memory


def live_peak(module: nn.Module, x: torch.Tensor, grad: bool) -> int:
    """The most bytes of tensor storage alive at once while `module` runs (and, with `grad`,
    while its backward runs), counting what the run makes."""
    tracker = LiveTensors()
    with torch.set_grad_enabled(grad), tracker:
        out = module(x)
        if grad:
            out.float().square().sum().backward()
        del out
    return tracker.peak_bytes


def fx_reference(compiled: object, k: int, block: nn.Module) -> fx.GraphModule:
    """fx's own code for block k's graph (it frees every value after its last use), on the
    very modules of the emitted block."""
    return fx.GraphModule(block, compiled.plan.surgery.blocks[k].graphs["train"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("example", ["resnet_cifar", "tiny_vit"])
def test_a_training_step_of_emitted_blocks_holds_what_fx_code_holds(
    example: str, tmp_path: Path
) -> None:
    """Forward and backward of each block in train mode: the same live-tensor peak as fx's
    code. (Without gradients a submodule called whole keeps the temporaries its own forward
    keeps, e.g. `relu(bn1(conv1(x)))` holds conv1's output during bn1.)"""
    out = tmp_path / "pkg"
    model, spec = (str(EXAMPLES / example / name) for name in ("model.py", "spec.yaml"))
    compiled = compile_package(model, spec, ModelOptions(), out=str(out))
    with load_package(out) as train:
        parts = train.build(0)
        x = torch.randn(16, *train.LOCK["model"]["input_shape"])
        for k, block in enumerate(parts.blocks):
            reference = fx_reference(compiled, k, block).train()
            assert live_peak(block.train(), x, True) == live_peak(reference, x, True), k
            with torch.no_grad():
                x = block(x)


def test_values_are_freed_where_fx_frees_them(attention: Path, tmp_path: Path) -> None:
    """Block 0 of the attention model runs its statements unfolded: with and without
    gradients its peak is fx's."""
    options = ModelOptions(input_shape=(6, 8), batch_size=2)
    spec = attention.parent / "spec.yaml"
    compiled = compile_package(
        str(attention.parent / "net.py"), str(spec), options, out=str(tmp_path / "pkg")
    )
    with load_package(attention) as train:
        block = train.build(0).blocks[0]
        x = torch.randn(64, 6, 8)
        reference = fx_reference(compiled, 0, block)
        for grad in (False, True):
            block.train(grad), reference.train(grad)
            assert live_peak(block, x, grad) == live_peak(reference, x, grad), grad
