"""The zoo: every torchvision classifier and a sample of timm models trace, annotate and find
legal cuts with no configuration, and their traced eval graphs compute the eager output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torchvision

from splitter.analysis import analyze
from splitter.modelref import ModelOptions

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore::FutureWarning")]

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
# The smallest input each accepts in train mode (most CNNs: 32).
SMALLEST = {"alexnet": 63, "inception_v3": 299, "maxvit_t": 224} | {
    name: 224 for name in TORCHVISION if name.startswith("vit_")
}
# Plain `torch.fx.symbolic_trace` fails on the first four; splitter needs no configuration.
TIMM = [
    "mobilevitv2_050", "crossvit_tiny_240", "efficientvit_b0", "tf_efficientnet_b0",
    "resnet18", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto",
    "swin_tiny_patch4_window7_224", "levit_128s", "coat_lite_tiny", "poolformer_s12",
    "mixer_s16_224", "cait_xxs24_224", "edgenext_xx_small", "ghostnet_100", "hrnet_w18_small",
    "dla34", "xcit_nano_12_p16_224", "twins_pcpvt_small", "gcvit_xxtiny", "maxvit_nano_rw_256",
    "fastvit_t8", "eva02_tiny_patch14_224", "nfnet_l0", "repvit_m0_9",
]


def check(ref: str, options: ModelOptions) -> None:
    analysis = analyze(ref, options)
    assert analysis.total_activation_bytes > 0
    assert analysis.cuts.cuts, f"{ref}: no legal cut"
    model = analysis.model.module.eval()
    x = analysis.model.input.batch(1)
    with torch.no_grad():
        traced, eager = analysis.traced.graph("eval")(x), model(x)
    assert torch.equal(traced, eager)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision(name: str) -> None:
    size = SMALLEST.get(name, 32)
    check(f"torchvision:{name}", ModelOptions(batch_size=2, input_shape=(3, size, size)))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
@pytest.mark.parametrize("name", TIMM)
def test_timm(name: str) -> None:
    check(f"timm:{name}", ModelOptions(batch_size=2))


def test_the_zoo_is_complete() -> None:
    assert len(TORCHVISION) == 80


def evenly_spaced(names: list[str], count: int = 4) -> list[str]:
    n = len(names)
    picks = sorted({min(n - 1, round((i + 1) * n / (count + 1))) for i in range(count)})
    return [names[i] for i in picks]


def verify_with_cuts(ref: str, size: int, tmp_path: Path, root: str | None = None) -> None:
    from splitter.plan import load_plan
    from splitter.verify import verify_plan

    options = ModelOptions(batch_size=2, input_shape=(3, size, size))
    analysis = analyze(ref, options, root=root)
    cuts = evenly_spaced([c.name for c in analysis.cuts.cuts])
    spec = tmp_path / "spec.yaml"
    root_line = f"model: {{root: {root}}}\n" if root else ""
    spec.write_text(f"version: 1\n{root_line}partition:\n  cuts: {json.dumps(cuts)}\n")
    result = verify_plan(load_plan(ref, str(spec), options), batch_size=2)
    assert result.ok, result


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_verifies_with_four_cuts(name: str, tmp_path: Path) -> None:
    verify_with_cuts(f"torchvision:{name}", SMALLEST.get(name, 32), tmp_path)


def test_detection_backbone_verifies_as_root(tmp_path: Path) -> None:
    verify_with_cuts(
        "torchvision:fasterrcnn_mobilenet_v3_large_fpn", 224, tmp_path, root="backbone.body"
    )
