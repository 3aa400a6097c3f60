"""Models with several inputs (an image and a metadata vector): described by the spec, the
command line or example_inputs(); they trace, split, verify and train, and a block reads the
other inputs it needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from splitter import api
from splitter.api import compile_package
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import train_steps

MODEL = '''
import torch
from torch import nn


class ImageAndMeta(nn.Module):
    """A CNN on the image, an MLP on a metadata vector, one classifier on both."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.meta_mlp = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.fc = nn.Linear(32, classes)

    def forward(self, image, meta, scale=1.0):
        m = self.meta_mlp(meta)  # computed first, used last
        h = self.body(self.stem(image)).mean((2, 3))
        return self.fc(torch.cat([h, m], dim=1)) * scale


def build_model():
    return ImageAndMeta()
'''

EXAMPLES = {
    "tuple": "def example_inputs():\n    return torch.randn(2, 3, 8, 8), torch.randn(2, 4)\n",
    "dict": "def example_inputs():\n"
    "    return {'meta': torch.randn(2, 4), 'image': torch.randn(2, 3, 8, 8)}\n",
}
SPEC = "version: 1\npartition: {cuts: [stem]}\naux: {default: {kind: linear}}\n"
LISTED = "model: {inputs: [{shape: [3, 8, 8]}, {shape: [4], dtype: float32}]}\n"


def model_file(tmp_path: Path, example: str = "") -> str:
    path = tmp_path / "two.py"
    path.write_text(MODEL + EXAMPLES.get(example, ""))
    return str(path)


def spec_file(tmp_path: Path, extra: str = LISTED) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC + extra)
    return str(path)


@pytest.mark.parametrize("example", ["tuple", "dict"])
def test_example_inputs_describe_every_input(tmp_path: Path, example: str) -> None:
    loaded = api.load(model_file(tmp_path, example), None, ModelOptions()).analysis.model
    assert [i.shape for i in loaded.inputs] == [(3, 8, 8), (4,)]
    assert loaded.inputs[1].example is not None


def test_the_command_line_gives_one_shape_per_input(cli: CliRunner, tmp_path: Path) -> None:
    args = ["inspect", model_file(tmp_path), "--input-shape", "3,8,8", "--input-shape", "4"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "32x3x8x8 float32 + 32x4 float32" in result.output
    one = cli.invoke(app, ["inspect", model_file(tmp_path), "--input-shape", "3,8,8"])
    assert one.exit_code != 0
    assert "takes 2 inputs (`image`, `meta`) but 1 is described" in one.output


def test_only_the_image_path_is_cut_and_the_mlp_runs_where_it_is_used(tmp_path: Path) -> None:
    analysis = api.load(model_file(tmp_path), spec_file(tmp_path), ModelOptions()).analysis
    names = {n for cut in analysis.cuts.cuts for n in cut.names}
    assert {"stem", "body"} <= names
    assert not any(n.startswith("meta_mlp") for n in names)
    gm = analysis.traced.graph("train")
    order = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert order.index("meta_mlp.0") > order.index("body.1")  # moved to just before the cat


def test_a_block_reads_the_other_input_and_verify_passes(tmp_path: Path) -> None:
    plan, checked = api.verify(model_file(tmp_path), spec_file(tmp_path), ModelOptions())
    assert [b.extras for b in plan.surgery.blocks] == [(), ("meta",)]
    assert checked.ok, checked
    assert checked.untrained == []


def test_it_compiles_and_trains_every_parameter(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    compile_package(model_file(tmp_path), spec_file(tmp_path), ModelOptions(), out=str(out))
    blocks = (out / "blocks.py").read_text()
    assert 'INPUTS = ("image", "meta")' in blocks
    assert 'reads = ("meta",)' in blocks
    assert "def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:" in blocks
    export = tmp_path / "w.pt"
    with load_package(out) as train:
        initial = {k: v.clone() for k, v in train.build(0).model.state_dict().items()}
        result = train_steps(train, tmp_path / "run", 3, "--export", str(export))
        e2e = train_steps(train, tmp_path / "e2e", 2, "--mode", "e2e", "--checkpoint")
    assert result["steps"] == 3 and e2e["steps"] == 2
    after = torch.load(export, weights_only=True)
    for name in ("stem.0.weight", "meta_mlp.0.weight", "fc.weight"):
        assert not torch.equal(initial[name], after[name]), name


def test_image_data_sets_are_refused_with_the_fix(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    compile_package(model_file(tmp_path), spec_file(tmp_path), ModelOptions(), out=str(out))
    with load_package(out) as train, pytest.raises(train.data.DataError, match="--data synthetic"):
        train.train(["--data", "digits", "--steps", "1", "--out", str(tmp_path / "r")])


def test_both_forms_of_the_input_in_a_spec_are_refused(tmp_path: Path) -> None:
    both = "model: {input_shape: [3, 8, 8], inputs: [{shape: [3, 8, 8]}, {shape: [4]}]}\n"
    with pytest.raises(SplitterError, match="both `inputs` and `input_shape`"):
        api.plan(model_file(tmp_path), spec_file(tmp_path, both), ModelOptions())


def test_an_auxiliary_that_would_copy_a_span_reading_another_input_is_refused(
    tmp_path: Path,
) -> None:
    spec = spec_file(tmp_path, LISTED.replace("model:", "aux: {default: {kind: momentum}}\nmodel:"))
    Path(spec).write_text(
        Path(spec)
        .read_text()
        .replace("[stem]", "[mean]")
        .replace("aux: {default: {kind: linear}}\n", "")
    )
    with pytest.raises(SplitterError, match=r"reads the model's input `meta`.*`linear`"):
        compile_package(model_file(tmp_path), spec, ModelOptions(), out=str(tmp_path / "pkg"))
    assert not (tmp_path / "pkg").exists()


def test_model_root_gets_every_input_the_model_gives_it(tmp_path: Path) -> None:
    (tmp_path / "pair.py").write_text(
        MODEL
        + """

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = ImageAndMeta()

    def forward(self, image, meta):
        return self.inner(image * 2, meta)


def build_pair():
    return Pair()
"""
    )
    ref = f"{tmp_path / 'pair.py'}:build_pair"
    options = ModelOptions(input_shape=(3, 8, 8), more_inputs=(((4,), None),))
    analysis = api.load(ref, None, options).analysis
    root = analysis.model  # the whole model first
    assert [i.shape for i in root.inputs] == [(3, 8, 8), (4,)]
    (tmp_path / "root.yaml").write_text(SPEC + "model: {root: inner}\n")
    plan, checked = api.verify(ref, str(tmp_path / "root.yaml"), options)
    assert [i.shape for i in plan.analysis.target_inputs] == [(3, 8, 8), (4,)]
    assert checked.ok and checked.model_output_equal_eval, checked
    one = ModelOptions(input_shape=(3, 8, 8))
    with pytest.raises(SplitterError, match="describe every input of its forward"):
        api.plan(ref, str(tmp_path / "root.yaml"), one)
