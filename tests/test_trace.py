"""Tracing: both modes, user leaves, automatic leafing and wrapping, untraceable roots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitter.errors import TraceError, UsageError
from splitter.frontend.modelref import import_model_file
from splitter.frontend.trace import trace
from tests.conftest import FIXTURES


def branchy() -> nn.Module:
    return import_model_file(FIXTURES / "branchy.py").build_model()


def test_plain_symbolic_trace_fails_on_the_fixture() -> None:
    with pytest.raises(Exception, match="control flow"):
        torch.fx.symbolic_trace(branchy())


def test_auto_leafing_wraps_the_function_and_leafs_the_smallest_module() -> None:
    traced = trace(branchy())
    kinds = {(x.kind, x.fqn.rsplit(".", 1)[-1]) for x in traced.leafed}
    assert kinds == {("function", "pad_to_even"), ("module", "gate")}
    gate = next(x for x in traced.leafed if x.kind == "module")
    assert "branchy.py:21" in gate.reason and "control flow" in gate.reason
    assert traced.is_leafed("gate") and not traced.is_leafed("stem")
    targets = {str(n.target) for n in traced.graph("train").graph.nodes}
    assert "gate" in targets and "gate.conv" not in targets


def test_traced_graphs_compute_the_model() -> None:
    model = branchy().eval()
    traced = trace(model)
    x = torch.randn(2, 3, 15, 15)
    assert torch.equal(traced.graph("eval")(x), model(x))


def test_without_auto_leaf_the_failure_is_reported() -> None:
    with pytest.raises(TraceError, match=r"control flow.*--leaf"):
        trace(branchy(), auto_leaf=False)


def test_user_leaf_by_fqn_and_by_class_name() -> None:
    model = branchy()
    traced = trace(model, ["body", "Gate"])
    assert traced.is_leafed("body") and traced.is_leafed("gate")
    assert not any(x.kind == "module" for x in traced.leafed)


def test_unknown_leaf_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"--leaf `bdy`.*did you mean `body`"):
        trace(branchy(), ["bdy"])


def test_train_and_eval_graphs_differ_when_forward_reads_training() -> None:
    model = import_model_file(FIXTURES / "auxnet.py").build_model()
    traced = trace(model)
    train_targets = {n.target for n in traced.graph("train").graph.nodes}
    eval_targets = {n.target for n in traced.graph("eval").graph.nodes}
    assert "aux" in train_targets and "aux" not in eval_targets
    assert model.training  # the caller's mode is restored


def test_untraceable_root_suggests_a_root_submodule() -> None:
    import torchvision

    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None
    )
    with pytest.raises(TraceError, match=r"model\.root.*`backbone`.*`backbone\.body`"):
        trace(model)
