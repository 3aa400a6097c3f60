"""Auxiliary heads on every layout, and the layout inferred at a cut."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from splitter.analysis.layouts import (
    ConvHead,
    InfoProDecoder,
    LayoutError,
    LinearHead,
    infer_layout,
)
from splitter.analysis.model import analyze
from splitter.frontend.modelref import ModelOptions
from splitter.runtime.auxiliary import Adapter
from tests.conftest import EXAMPLES

SHAPES = {
    "nchw": (2, 16, 32, 32),
    "nhwc": (2, 32, 32, 16),
    "ncl": (2, 16, 100),
    "nlc": (2, 100, 16),
    "nc": (2, 16),
    "ncdhw": (2, 16, 4, 16, 16),
    "ndhwc": (2, 4, 16, 16, 16),
}


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("head", [LinearHead, ConvHead])
def test_heads_serve_every_layout(layout: str, head: type) -> None:
    module = head(SHAPES[layout][1:], layout, 10)
    x = torch.randn(SHAPES[layout])
    assert module(x).shape == (2, 10)
    assert torch.equal(fx.symbolic_trace(module)(x), module(x))


def test_conv_head_strides_while_the_map_is_large() -> None:
    head = ConvHead((16, 32, 32), "nchw", 10, depth=3)
    strides = [m.stride[0] for m in head.convs if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 1]  # 32 -> 16 -> 8, then no longer larger than 8x8
    assert head.convs[0].out_channels == 32  # 2C by default


def test_conv_head_on_video_maps_strides_each_long_axis_with_conv3d() -> None:
    head = ConvHead((16, 4, 32, 32), "ncdhw", 10, depth=3)
    convs = [m for m in head.convs if isinstance(m, torch.nn.Conv3d)]
    assert [m.stride for m in convs] == [(1, 2, 2), (1, 2, 2), (1, 1, 1)]  # 32 -> 16 -> 8
    assert not any(isinstance(m, torch.nn.Conv2d) for m in head.modules())
    channels_last = ConvHead((4, 32, 32, 16), "ndhwc", 10, depth=3)
    x = torch.randn(2, 16, 4, 32, 32)
    channels_last.load_state_dict(head.state_dict())
    head.eval(), channels_last.eval()
    assert torch.allclose(channels_last(x.movedim(1, -1)), head(x), atol=1e-6)


@pytest.mark.parametrize("head", [LinearHead, ConvHead])
def test_heads_refuse_a_shape_their_layout_cannot_have(head: type) -> None:
    with pytest.raises(LayoutError, match=r"\[8, 4, 4\] is not `ncdhw`; heads serve nchw, nhwc"):
        head((8, 4, 4), "ncdhw", 10)
    with pytest.raises(LayoutError, match=r"heads serve nc, ncl, nlc, nchw, nhwc, ncdhw, ndhwc"):
        head((8, 2, 4, 2, 4), "ncdhw", 10)


def test_adapter_projects_and_pools_video_maps() -> None:
    adapter = Adapter((8, 4, 16, 16), "ncdhw", (2, 8, 8, 16), "ndhwc")
    assert adapter(torch.randn(2, 8, 4, 16, 16)).shape == (2, 2, 8, 8, 16)


def test_infopro_decoder_reconstructs_the_input_range() -> None:
    decoder = InfoProDecoder((16, 8, 8), "nchw", (3, 32, 32))
    out = decoder(torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match=r"reconstructs images.*`linear`, `conv` or `momentum`"):
        InfoProDecoder((100, 16), "nlc", (3, 32, 32))


@pytest.mark.parametrize(
    ("ref", "options", "expected"),
    [
        (
            "torchvision:swin_t",
            ModelOptions(batch_size=1, input_shape=(3, 64, 64)),
            {
                "features.0.0": "nchw",
                "features.0.1": "nhwc",
                "features.1.0.add": "nhwc",
                "permute": "nchw",
                "flatten": "nc",
            },
        ),
        (
            "torchvision:vit_b_16",
            ModelOptions(batch_size=1),
            {"reshape": "ncl", "permute": "nlc", "encoder": "nlc"},
        ),
        (
            "torchvision:convnext_tiny",
            ModelOptions(batch_size=2, input_shape=(3, 32, 32)),
            {
                "features.0.1.permute": "nhwc",
                "features.0.1": "nchw",
                "classifier.0.layer_norm": "nhwc",
            },
        ),
        (
            str(EXAMPLES / "tiny_vit" / "model.py"),
            ModelOptions(batch_size=2),
            {"flatten": "ncl", "transpose": "nlc", "blocks.5": "nlc"},
        ),  # square 64x64: by ops only
    ],
)
def test_layout_is_inferred_from_the_ops(
    ref: str, options: ModelOptions, expected: dict[str, str]
) -> None:
    analysis = analyze(ref, options)
    gm = analysis.traced.graph("train")
    nodes = list(gm.graph.nodes)
    for name, layout in expected.items():
        cut = analysis.cuts.find(name)
        assert cut is not None and cut.shape is not None
        assert infer_layout(gm, nodes[cut.index], cut.shape) == layout, name
