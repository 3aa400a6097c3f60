"""Model references, the shared model options and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from splitter.errors import ModelLoadError, UsageError
from splitter.frontend.inputs import parse_input_shape
from splitter.frontend.modelref import ModelOptions, load_model, nearest_file, parse_model_args
from tests.conftest import EXAMPLES

CIFAR = str(EXAMPLES / "resnet_cifar" / "model.py")


def test_model_args_are_python_literals_with_string_fallback() -> None:
    assert parse_model_args(["depth=20", "name=wide", "scales=(1, 2)"]) == {
        "depth": 20, "name": "wide", "scales": (1, 2),
    }


@pytest.mark.parametrize("bad", ["depth", "=3", "2x=1"])
def test_model_arg_without_name_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="name=value"):
        parse_model_args([bad])


@pytest.mark.parametrize(("text", "shape"), [("3,224,224", (3, 224, 224)), ("128", (128,)),
                                             ("1, 2, 3, 4", (1, 2, 3, 4))])
def test_input_shape_of_any_rank(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("bad", ["", "3,a", "3,-1", "0"])
def test_bad_input_shape_names_value_and_fix(bad: str) -> None:
    with pytest.raises(UsageError, match=r"--input-shape .*e\.g\."):
        parse_input_shape(bad)


def test_file_model_uses_build_model_and_example_inputs() -> None:
    model = load_model(CIFAR, ModelOptions(model_args={"depth": 20}))
    assert model.name == "model"
    assert model.input.shape == (3, 32, 32)
    assert model.batch_size == 32
    batch = model.input.batch(5)
    assert batch.shape == (5, 3, 32, 32)
    assert model.input.example is not None
    assert torch.equal(batch[:2], model.input.example)  # values kept, re-batched by repetition
    assert torch.equal(batch[2:4], model.input.example)


def test_named_callable_in_model_file() -> None:
    model = load_model(f"{CIFAR}:CifarResNet", ModelOptions(model_args={"depth": 8}))
    assert type(model.module).__name__ == "CifarResNet"
    assert model.name == "CifarResNet"


def test_command_line_shape_wins_with_a_warning() -> None:
    model = load_model(CIFAR, ModelOptions(input_shape=(3, 64, 64)))
    assert model.input.shape == (3, 64, 64)
    assert model.input.example is None
    assert any("overrides" in w for w in model.warnings)


def test_torchvision_default_shape() -> None:
    model = load_model("torchvision:resnet18")
    assert model.input.shape == (3, 224, 224)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"does not exist.*build_model"):
        load_model(str(tmp_path / "nope.py"))


def test_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\ndef build_model(:\n    pass\n")
    with pytest.raises(ModelLoadError, match=r"line 3: syntax error"):
        load_model(str(path))


def test_file_without_build_model_lists_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "other.py"
    path.write_text("from torch import nn\n\ndef make_net():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(ModelLoadError, match=r"no callable `build_model`.*`make_net`"):
        load_model(str(path))


def test_model_without_input_shape_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\n\ndef build_model():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(UsageError, match=r"--input-shape .*example_inputs"):
        load_model(str(path))


def test_unknown_torchvision_name_suggests_close_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"did you mean `torchvision:resnet50`"):
        load_model("torchvision:resnet5")


def _model_folder(root: Path) -> Path:
    folder = root / "examples" / "net"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text("def build_model():\n    raise AssertionError\n")
    (folder / "data.txt").write_text("not a model\n")
    return folder


@pytest.mark.parametrize(("typed", "meant"), [
    ("exmaples/net/model.py", "examples/net/model.py"),  # a misspelled folder
    ("examples/net/model.pyy", "examples/net/model.py"),  # a misspelled suffix
    ("examples/nte/modle.py", "examples/net/model.py"),  # both
    ("examples/net", "examples/net/model.py"),  # the folder, not the file
])
def test_a_mistyped_model_file_suggests_the_nearest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typed: str, meant: str
) -> None:
    _model_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"did you mean `{re.escape(meant)}`\?.*build_model"):
        load_model(typed)
    with pytest.raises(ModelLoadError, match=re.escape(f"did you mean `{tmp_path / meant}`?")):
        load_model(str(tmp_path / typed))  # absolute paths too


def test_a_model_file_with_nothing_near_gets_no_guess(tmp_path: Path) -> None:
    _model_folder(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist") as caught:
        load_model(str(tmp_path / "examples" / "net" / "weights.py"))
    assert "did you mean" not in str(caught.value)
    assert nearest_file(tmp_path / "nowhere" / "at" / "all.py") is None


def test_unknown_timm_name_suggests_close_ones_and_how_to_list() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ModelLoadError, match=r"did you mean `timm:vit_base_patch16_224`"):
        load_model("timm:vit_bse_patch16_224")
    with pytest.raises(ModelLoadError) as caught:
        load_model("timm:nonexistent")
    message = str(caught.value)
    assert "did you mean" not in message
    assert message.endswith("`python -c 'import timm; print(timm.list_models())'` lists them")


def test_timm_name_with_a_pretrained_tag_builds() -> None:
    pytest.importorskip("timm")
    model = load_model("timm:resnet18.a1_in1k", ModelOptions(input_shape=(3, 32, 32)))
    assert type(model.module).__name__ == "ResNet"
