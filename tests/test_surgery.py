"""Block surgery: FQNs kept, both graphs carried, exact chaining, shared-parameter policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitter.analysis.model import Analysis, analyze
from splitter.frontend.modelref import ModelOptions
from splitter.transform.surgery import SurgeryError, split
from splitter.transform.verify import verify
from tests.conftest import EXAMPLES, FIXTURES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")


def cuts_of(analysis: Analysis, *names: str) -> list:  # type: ignore[type-arg]
    found = [analysis.cuts.find(n) for n in names]
    assert all(found), names
    return found


def check(analysis: Analysis, surgery, cuts):  # type: ignore[no-untyped-def]
    graphs = {m: analysis.traced.graph(m) for m in ("train", "eval")}
    x = analysis.target_input.batch(4)
    return verify(analysis.target, graphs, cuts, surgery, x)


@pytest.fixture(scope="module")
def cifar() -> Analysis:
    return analyze(CIFAR, ModelOptions(batch_size=2, model_args={"depth": 20}))


def test_blocks_own_exactly_their_submodules_under_original_fqns(cifar: Analysis) -> None:
    surgery = split(cifar.traced, cuts_of(cifar, "layer1.2", "layer2.1", "layer3.0"))
    model_state = cifar.target.state_dict()
    keys = [set(b.state_dict()) for b in surgery.blocks]
    assert set().union(*keys) == set(model_state)
    assert sum(len(k) for k in keys) == len(model_state)  # disjoint
    for block in surgery.blocks:
        for name, value in block.state_dict(keep_vars=True).items():
            assert value is cifar.target.state_dict(keep_vars=True)[name]  # the user's tensors
    assert "layer1.2.conv1.weight" in keys[0] and "layer2.0.conv1.weight" in keys[1]
    assert [(b.start, b.end) for b in surgery.blocks] == [
        ("input", "layer1.2"), ("layer1.2", "layer2.1"), ("layer2.1", "layer3.0"),
        ("layer3.0", "output"),
    ]


def test_chained_blocks_equal_the_model(cifar: Analysis) -> None:
    surgery = split(cifar.traced, cuts_of(cifar, "conv1", "layer2.0.add", "flatten"))
    chain = surgery.chain().eval()
    model = cifar.target.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(chain(x), model(x))
    result = check(cifar, surgery, surgery_cuts := cuts_of(cifar, "conv1", "layer2.0.add",
                                                            "flatten"))
    assert result.ok, result
    assert len(surgery_cuts) == 3


def test_block_follows_train_and_eval_graphs() -> None:
    analysis = analyze(str(FIXTURES / "auxnet.py"))
    surgery = split(analysis.traced, cuts_of(analysis, "a"))
    last = surgery.blocks[1]
    assert "aux" in last.code("train") and "aux" not in last.code("eval")
    chain = surgery.chain()
    x = torch.randn(2, 8)
    assert isinstance(chain.train()(x), tuple)
    assert isinstance(chain.eval()(x), torch.Tensor)
    assert check(analysis, surgery, cuts_of(analysis, "a")).ok


def test_block_code_uses_source_names(cifar: Analysis) -> None:
    surgery = split(cifar.traced, cuts_of(cifar, "layer1.2"))
    code = surgery.blocks[1].code()
    assert "def forward(self, x)" in code and "self.fc(" in code


@pytest.fixture(scope="module")
def tied() -> Analysis:
    return analyze(str(FIXTURES / "tied.py"))


def test_shared_parameter_is_an_error_naming_it(tied: Analysis) -> None:
    with pytest.raises(SurgeryError, match=r"`embed\.weight` is used by blocks 0, 2.*replicate"):
        split(tied.traced, cuts_of(tied, "tanh", "body"))


def test_replicate_gives_independent_copies(tied: Analysis) -> None:
    surgery = split(tied.traced, cuts_of(tied, "tanh", "body"), "replicate")
    first, last = surgery.blocks[0].embed.weight, surgery.blocks[2].embed.weight
    assert first is tied.target.embed.weight and last is not first
    assert torch.equal(first, last) and isinstance(last, torch.nn.Parameter)
    assert check(tied, surgery, cuts_of(tied, "tanh", "body")).ok


def test_owner_gives_later_blocks_a_detached_view(tied: Analysis) -> None:
    surgery = split(tied.traced, cuts_of(tied, "tanh", "body"), "owner")
    view = surgery.blocks[2].embed.weight
    assert not isinstance(view, torch.nn.Parameter) and not view.requires_grad
    assert view.data_ptr() == tied.target.embed.weight.data_ptr()
    assert "embed.weight" not in surgery.blocks[2].state_dict()
    assert tied.target.embed.weight is surgery.blocks[0].embed.weight  # the user's module kept
    assert check(tied, surgery, cuts_of(tied, "tanh", "body")).ok


def test_sync_shares_the_object(tied: Analysis) -> None:
    surgery = split(tied.traced, cuts_of(tied, "tanh", "body"), "sync")
    assert surgery.blocks[2].embed.weight is surgery.blocks[0].embed.weight
    assert [s.names for s in surgery.shared] == [("embed.weight",)]
    assert check(tied, surgery, cuts_of(tied, "tanh", "body")).ok


def test_verify_catches_a_silently_shared_parameter(tied: Analysis) -> None:
    """fx split_module shares parameters silently; the net still trains, verify must fail."""
    surgery = split(tied.traced, cuts_of(tied, "tanh", "body"), "sync")
    surgery.shared.clear()
    result = check(tied, surgery, cuts_of(tied, "tanh", "body"))
    assert not result.ok
    assert not result.blocks[2].isolated and result.multiply_trained == ["embed.weight"]


def test_verify_catches_a_wrong_block(cifar: Analysis) -> None:
    cuts = cuts_of(cifar, "layer1.2", "layer2.1")
    surgery = split(cifar.traced, cuts)
    real = surgery.blocks[1]._compiled["eval"]
    surgery.blocks[1]._compiled["eval"] = lambda x: real(x) * (1 + 1e-7)  # type: ignore[assignment]
    result = check(cifar, surgery, cuts)
    assert not result.ok and not result.blocks[1].eval_equal and not result.output_equal_eval


def test_verify_reports_parameters_no_block_trains() -> None:
    analysis = analyze(str(FIXTURES / "tied.py"), ModelOptions(model_args={"unused_head": True}))
    cuts = cuts_of(analysis, "tanh")
    result = check(analysis, split(analysis.traced, cuts, "sync"), cuts)
    assert result.untrained == ["head.weight (not used by the forward)"] and not result.ok


def test_blocks_follow_dtype_and_device_moves() -> None:
    """A block's graphs must see the tensors `.to()` puts in place of its buffers and params."""
    analysis = analyze(str(EXAMPLES / "tiny_vit" / "model.py"))
    surgery = split(analysis.traced, cuts_of(analysis, "blocks.1"))
    chain = surgery.chain().double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(chain(x), analysis.target.double().eval()(x))


def test_verify_follows_a_declared_window(cifar: Analysis) -> None:
    """MLAAN's cascaded loss trains blocks k-w+1..k: inside the window is declared, a
    gradient beyond it is still a leak, and coverage counts each block's own loss."""
    cuts = cuts_of(cifar, "layer1.2", "layer2.1", "layer3.0")
    graphs = {m: cifar.traced.graph(m) for m in ("train", "eval")}
    x = cifar.target_input.batch(4)
    result = verify(cifar.target, graphs, cuts, split(cifar.traced, cuts), x, windows=(1, 2, 2))
    assert result.ok, result
    assert [b.window for b in result.blocks] == [1, 2, 2, 1]
    assert result.untrained == [] and result.multiply_trained == []


def test_verify_catches_a_leak_beyond_the_window(tied: Analysis) -> None:
    cuts = cuts_of(tied, "tanh", "body")
    surgery = split(tied.traced, cuts, "sync")
    surgery.shared.clear()  # embed.weight: block 0's, silently used by block 2
    graphs = {m: tied.traced.graph(m) for m in ("train", "eval")}
    x = tied.target_input.batch(4)
    beyond = verify(tied.target, graphs, cuts, surgery, x, windows=(1, 1, 2))
    assert not beyond.blocks[2].isolated
    assert "outside its window of 2" in beyond.blocks[2].problems[0]
    within = verify(tied.target, graphs, cuts, surgery, x, windows=(1, 1, 3))
    assert within.blocks[2].isolated and within.blocks[2].window == 3


def test_a_parameter_whose_gradient_is_exactly_zero_is_not_trained(tmp_path: Path) -> None:
    """A loss that reaches a parameter with a zero gradient (a zero weight, a dead branch)
    trains nothing: coverage counts nonzero gradients only."""
    model = tmp_path / "dead.py"
    model.write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Dead(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Linear(4, 4)\n"
        "        self.gate = nn.Parameter(torch.ones(4))\n"
        "        self.b = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n"
        "        h = torch.tanh(self.a(x))\n"
        "        return self.b(h + 0.0 * self.gate)\n\n\n"
        "def build_model():\n    return Dead()\n"
    )
    analysis = analyze(str(model), ModelOptions(input_shape=(4,)))
    cuts = cuts_of(analysis, "tanh")
    result = check(analysis, split(analysis.traced, cuts), cuts)
    assert result.untrained == ["gate"] and not result.ok
    assert all(b.isolated for b in result.blocks)  # reached with a zero gradient: no leak
