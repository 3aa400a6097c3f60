"""Cost annotation under FakeTensorMode: estimates equal real measurements."""

from __future__ import annotations

import resource

import pytest
import torch
import torchvision

from splitter.analysis.model import analyze
from splitter.frontend.annotate import measure_saved_bytes, node_cost
from splitter.frontend.inputs import InputSpec
from splitter.frontend.modelref import ModelOptions
from splitter.frontend.trace import trace
from tests.conftest import FIXTURES


@pytest.mark.parametrize(("name", "batch"), [("resnet18", 4), ("mobilenet_v2", 2), ("vit_b_16", 2)])
def test_estimate_equals_real_forward(name: str, batch: int) -> None:
    analysis = analyze(f"torchvision:{name}", ModelOptions(batch_size=batch))
    model = analysis.model.module
    real = measure_saved_bytes(model, torch.randn(batch, 3, 224, 224))
    assert analysis.total_activation_bytes == pytest.approx(real, rel=0.01)


def test_resnet50_reference_figure() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    analysis = analyze("torchvision:resnet50")
    assert round(analysis.total_activation_bytes / 2**20) == 2622
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < analysis.total_activation_bytes / 10  # fake tensors: no activation memory


def test_real_tensor_fallback_for_data_dependent_leaf() -> None:
    analysis = analyze(str(FIXTURES / "branchy.py"), ModelOptions(batch_size=4))
    gm = analysis.traced.graph("train")
    gate = next(n for n in gm.graph.nodes if n.target == "gate")
    assert node_cost(gate).measured
    assert node_cost(gate).shape == (4, 8, 16, 16)
    assert not any(node_cost(n).measured for n in gm.graph.nodes if n is not gate)
    real = measure_saved_bytes(analysis.model.module, torch.rand(4, 3, 15, 15))
    assert analysis.total_activation_bytes == real


def test_parameters_flops_and_shapes() -> None:
    model = torchvision.models.resnet18()
    analysis = analyze("torchvision:resnet18", ModelOptions(batch_size=1))
    costs = [node_cost(n) for n in analysis.traced.graph("train").graph.nodes]
    assert sum(c.params for c in costs) == sum(p.numel() for p in model.parameters())
    assert sum(c.flops for c in costs) == pytest.approx(2 * 1.814e9, rel=0.01)
    conv1 = next(n for n in analysis.traced.graph("train").graph.nodes if n.target == "conv1")
    assert node_cost(conv1).shape == (1, 64, 112, 112)
    assert node_cost(conv1).dtype == "float32"


def test_bf16_precision_halves_most_saved_bytes() -> None:
    fp32 = analyze("torchvision:resnet18", ModelOptions(batch_size=2)).total_activation_bytes
    bf16 = analyze(
        "torchvision:resnet18", ModelOptions(batch_size=2, precision="bf16")
    ).total_activation_bytes
    assert 0.45 * fp32 < bf16 < 0.55 * fp32


def test_module_state_untouched_by_annotation() -> None:
    from splitter.frontend.annotate import annotate

    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    annotate(trace(model).graph("train"), InputSpec((3, 64, 64), torch.float32), 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_annotation_does_not_keep_the_model_alive() -> None:
    """Regression: the zoo run was killed for memory (24 GiB after 65 models): saved-tensor
    hooks are held by autograd from C++, and the hook referred to the interpreter, so every
    annotated model stayed alive."""
    import gc
    import weakref

    model = torchvision.models.resnet18()
    from splitter.frontend.annotate import annotate

    annotate(trace(model).graph("train"), InputSpec((3, 32, 32), torch.float32), 2)
    alive = weakref.ref(model.conv1.weight)
    del model
    gc.collect()
    assert alive() is None
