"""Legal cuts (dominators), their canonical names and aliases, and units."""

from __future__ import annotations

import pytest

from splitter.analysis.cuts import units
from splitter.analysis.model import analyze
from splitter.frontend.modelref import ModelOptions
from tests.conftest import EXAMPLES, FIXTURES

SMALL = ModelOptions(batch_size=2, input_shape=(3, 32, 32))


@pytest.mark.parametrize(("name", "count", "options"), [
    ("resnet50", 38, SMALL),
    ("vit_b_16", 31, ModelOptions(batch_size=1)),
    ("densenet121", 24, SMALL),
])
def test_interior_cut_counts(name: str, count: int, options: ModelOptions) -> None:
    assert len(analyze(f"torchvision:{name}", options).cuts.cuts) == count


def test_resnet_names_and_aliases() -> None:
    cuts = analyze("torchvision:resnet50", SMALL).cuts
    names = [c.name for c in cuts.cuts]
    assert names[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1.0.add", "layer1.0"]
    assert names[-3:] == ["layer4.2", "avgpool", "flatten"]
    end_of_layer1 = cuts.find("layer1")
    assert end_of_layer1 is not None and end_of_layer1.name == "layer1.2"
    assert set(end_of_layer1.aliases) == {"layer1", "layer1.2.relu", "layer1.2.relu_2"}
    assert cuts.find("layer1.2.relu_2") is end_of_layer1
    assert cuts.find("layer1.0.conv2") is None  # inside a residual block
    assert end_of_layer1.shape == (2, 256, 8, 8)


def test_op_names_repeat_with_suffixes() -> None:
    cuts = analyze("torchvision:vit_b_16", ModelOptions(batch_size=1)).cuts
    layer0 = cuts.find("encoder.layers.encoder_layer_0")
    assert layer0 is not None
    assert "encoder.layers.encoder_layer_0.add_1" in layer0.aliases
    assert cuts.find("encoder.layers.encoder_layer_0.add") is not None


def test_cuts_legal_in_one_mode_only_are_reported() -> None:
    analysis = analyze(str(FIXTURES / "auxnet.py"))
    assert [c.name for c in analysis.cuts.cuts] == ["a", "relu"]
    assert analysis.cuts.eval_only == ("b", "relu_1")  # the aux output taps the first relu
    assert analysis.cuts.train_only == ()


def test_units_keep_what_closes_them_and_merge_parameter_free_spans() -> None:
    analysis = analyze(str(EXAMPLES / "resnet_cifar" / "model.py"), ModelOptions(batch_size=2))
    found = units(analysis.traced.graph("train"), analysis.cuts.cuts)
    spans = [(u.start, u.end) for u in found]
    assert spans[0] == ("input", "relu")  # conv1, its BatchNorm and its ReLU: one unit
    assert spans[1] == ("relu", "layer1.0")  # the residual unit with its closing ReLU
    assert spans[-2] == ("layer3.3", "flatten")  # avgpool and flatten join layer3.4
    assert spans[-1] == ("flatten", "output")
    assert not any(end.endswith(".add") for _, end in spans)
    assert all(u.params > 0 for u in found)
    total = sum(p.numel() for p in analysis.model.module.parameters())
    assert sum(u.params for u in found) == total


def test_cuts_before_a_closing_op_are_not_admissible() -> None:
    analysis = analyze("torchvision:resnet18", SMALL)
    refused = [c.name for c in analysis.cuts.cuts if not c.admissible]
    assert refused[:3] == ["conv1", "bn1", "relu"]  # the stem's BatchNorm, ReLU and max-pool
    assert all(name.endswith(".add") for name in refused[3:])  # before a residual unit's ReLU
    kept = [c.name for c in analysis.cuts.cuts if c.admissible]
    assert kept[:3] == ["maxpool", "layer1.0", "layer1.1"] and "flatten" in kept


def test_a_block_end_at_an_inadmissible_cut_still_ends_a_unit() -> None:
    analysis = analyze("torchvision:resnet18", SMALL)
    gm = analysis.traced.graph("train")
    found = units(gm, analysis.cuts.cuts, block_ends=["bn1"])
    spans = [(u.start, u.end) for u in found]
    assert ("input", "bn1") in spans  # conv1 and bn1 (the block ends at bn1)
    assert ("bn1", "layer1.0") in spans  # ReLU and max-pool join the unit after, at a block start
