"""The zoo: every torchvision classifier and a sample of timm models trace, annotate and find
legal cuts with no configuration, and their traced eval graphs compute the eager output."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from schemas import parse_spec
from schemas.errors import SpecError
from splitter.analysis.model import Analysis, analyze
from splitter.api import compile_package, partition, verify
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.partitioning.plan import Plan, plan_for
from splitter.report.picture import picture
from splitter.report.plot import cut_label, svg_text
from splitter.report.tables import plan_partition
from splitter.transform.verify import tree_equal, verify_plan
from tests.test_emission import assert_blocks_compute_the_model
from tests.test_useful_splits import assert_worth_training

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


def check(ref: str, options: ModelOptions, root: str | None = None) -> Analysis:
    """Traced, annotated, with legal cuts, and the traced eval graph computes the model."""
    analysis = analyze(ref, options, root=root)
    assert analysis.total_activation_bytes > 0
    assert analysis.cuts.cuts, f"{ref}: no legal cut"
    model = analysis.target.eval()
    x = analysis.target_input.batch(1)
    with torch.no_grad():
        traced, eager = analysis.traced.graph("eval")(x), model(x)
    assert tree_equal(traced, eager)
    model.train()
    return analysis


def evenly_spaced(names: list[str], count: int = 4) -> list[str]:
    n = len(names)
    picks = sorted({min(n - 1, round((i + 1) * n / (count + 1))) for i in range(count)})
    return [names[i] for i in picks]


def planned(analysis: Analysis, partition: str, root: str | None = None) -> Plan:
    """The plan of the spec `version: 1, partition: <partition>` for the analysed model."""
    root_line = f"model: {{root: {root}}}\n" if root else ""
    return plan_for(analysis, parse_spec(f"version: 1\n{root_line}partition: {partition}\n"))


def verified(analysis: Analysis, partition: str, root: str | None = None) -> list[str]:
    """Verify the spec `version: 1, partition: <partition>` on the analysed model."""
    plan = planned(analysis, partition, root)
    result = verify_plan(plan, batch_size=2)
    assert result.ok, (partition, result)
    return [c.name for c in plan.cuts]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision(name: str) -> None:
    """Traces and annotates; 4 evenly spaced legal cuts verify; the partitioner's K = 2, 4
    and 8 blocks (or as many as the rules allow, said so) keep the rules and verify."""
    size = SMALLEST.get(name, 32)
    analysis = check(f"torchvision:{name}", ModelOptions(batch_size=2, input_shape=(3, size, size)))
    cuts = evenly_spaced([c.name for c in analysis.cuts.cuts])
    verified(analysis, "{cuts: %s}" % json.dumps(cuts))
    for blocks in (2, 4, 8):
        plan = planned(analysis, f"{{auto: {{blocks: {blocks}}}}}")
        assert_worth_training(analysis, plan.cuts, blocks)  # fewer blocks only with a warning
        cuts = verified(analysis, json.dumps({"cuts": [c.name for c in plan.cuts]}))
        if blocks == 4:
            drawn(analysis, cuts)


def drawn(analysis: Analysis, cuts: list[str]) -> None:
    """The picture of the split names every block and chosen cut; its rows tile the graph."""
    plan = plan_for(analysis, parse_spec("version: 1\npartition: {cuts: %s}\n" % json.dumps(cuts)))
    pic = picture(analysis, plan_partition(plan))
    assert pic.rows[0].lo == -1 and all(a.hi == b.lo for a, b in zip(pic.rows, pic.rows[1:]))
    assert sum(r.saved_bytes for r in pic.rows) == analysis.total_activation_bytes
    svg = svg_text(pic)
    for k, cut in enumerate(cuts):
        assert f"block {k}" in svg and cut_label(cut, chosen=True) in svg


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
@pytest.mark.parametrize("name", TIMM)
def test_timm(name: str) -> None:
    check(f"timm:{name}", ModelOptions(batch_size=2))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
@pytest.mark.parametrize(("name", "size"), [("pnasnet5large", 64), ("hrnet_w18_small", 224)])
def test_timm_models_with_few_cuts_get_splits_worth_training(name: str, size: int) -> None:
    """Cells reading two tensors (pnasnet) and parallel resolutions (hrnet) leave few
    single-tensor cuts: K = 4 gives as many blocks as the rules allow (pnasnet: one, end to
    end, said so), each worth training; a split that saves nothing (hrnet's cuts are all in
    the stem) says so."""
    options = ModelOptions(batch_size=2, input_shape=(3, size, size))
    found = partition(f"timm:{name}", blocks=4, options=options)
    assert_worth_training(found.analysis, found.cuts, 4)
    if len(found.blocks) == 1:
        assert "1 block: train end to end" in found.warnings[0]
    if found.local_peak_bytes > found.e2e_peak_bytes:
        assert any("saves no memory" in w for w in found.warnings)


def test_detection_backbone_verifies_as_root() -> None:
    ref = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
    options = ModelOptions(batch_size=2, input_shape=(3, 224, 224))
    analysis = check(ref, options, root="backbone.body")
    cuts = evenly_spaced([c.name for c in analysis.cuts.cuts])
    verified(analysis, "{cuts: %s}" % json.dumps(cuts), root="backbone.body")


def test_a_two_input_model_verifies_as_root_raft_small() -> None:
    """torchvision's raft_small takes two images; its feature encoder, called on both at once,
    splits and verifies, and the whole model with it split computes the original."""
    image = ((3, 128, 128), None)
    options = ModelOptions(batch_size=2, input_shape=image[0], more_inputs=(image,))
    analysis = check("torchvision:raft_small", options, root="feature_encoder")
    assert analysis.model.inputs[1].shape == (3, 128, 128)
    cuts = evenly_spaced([c.name for c in analysis.cuts.cuts], 2)
    verified(analysis, "{cuts: %s}" % json.dumps(cuts), root="feature_encoder")


def test_the_zoo_is_complete() -> None:
    assert len(TORCHVISION) == 80


SHARING = {"coat_lite_tiny"}  # its serial blocks share the `crpe` modules


@pytest.mark.filterwarnings("ignore:`.*` has no reset_parameters:UserWarning")
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
@pytest.mark.parametrize("name", TIMM)
def test_timm_compiles_to_blocks_that_compute_the_model(name: str, tmp_path: Path) -> None:
    """K = 4 automatic blocks (coat's shared modules replicated); where the rules of
    automatic splits leave fewer than two blocks (crossvit's two branches), up to four blocks
    at evenly spaced legal cuts."""
    out, options = tmp_path / "pkg", ModelOptions(batch_size=2)
    auto = tmp_path / "auto.yaml"
    policy = "replicate" if name in SHARING else "error"
    auto.write_text(f"version: 1\npartition: {{auto: {{blocks: 4}}, shared_params: {policy}}}\n")
    try:
        compile_package(f"timm:{name}", str(auto), options, out=str(out))
    except SpecError as error:
        assert "train end to end" in str(error)
        cuts = evenly_spaced([c.name for c in analyze(f"timm:{name}", options).cuts.cuts])
        spec = tmp_path / "spec.yaml"
        spec.write_text("version: 1\npartition: {cuts: %s}\n" % json.dumps(cuts))
        compile_package(f"timm:{name}", str(spec), options, out=str(out))
    assert "torchvision for its data sets, timm for the model," in (out / "README.md").read_text()
    with load_package(out) as train:
        assert_blocks_compute_the_model(train)


# A momentum copy's layers without reset_parameters() (convnext's layer scale) keep the copied
# values under `init: fresh`, and say so.
@pytest.mark.filterwarnings("ignore:`.*` has no reset_parameters:UserWarning")
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_compiles_and_trains_a_step(name: str, tmp_path: Path) -> None:
    """K = 4 memory-balanced blocks (fewer where the model has fewer legal cuts) with momentum
    auxiliaries; the emitted package trains one step on synthetic data."""
    size = SMALLEST.get(name, 32)
    options = ModelOptions(batch_size=2, input_shape=(3, size, size))
    out = tmp_path / "pkg"
    compiled = compile_package(f"torchvision:{name}", None, options, out=str(out), blocks=4)
    blocks = len(compiled.plan.cuts) + 1
    assert "torchvision for its data sets and the model," in (out / "README.md").read_text()
    args = ["--data", "synthetic", "--steps", "1", "--batch-size", "2", "--eval-batches", "1"]
    args += ["--no-checkpoint"]  # vit_h_14's would be 9 GiB
    with load_package(out) as train:
        assert_blocks_compute_the_model(train)
        metrics = train.train([*args, "--out", str(tmp_path / "runs")])
    assert len(metrics["block_losses"]) == blocks
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])


# "Any model's shape": layouts read from the graph, not from the rank.
def partitions_verifies_compiles_and_trains(
    ref: str, shape: tuple[int, ...], tmp_path: Path
) -> str:
    """K = 4 automatic blocks with the default (momentum) auxiliaries: the cuts verify, the
    package compiles and trains two steps on synthetic data; its blocks.py comes back."""
    options = ModelOptions(batch_size=2, input_shape=shape)
    found = partition(ref, blocks=4, options=options)
    cuts = [c.name for c in found.cuts]
    verified(found.analysis, json.dumps({"cuts": cuts}))
    spec, out = tmp_path / "spec.yaml", tmp_path / "pkg"
    spec.write_text(f"version: 1\npartition: {json.dumps({'cuts': cuts})}\n")
    compile_package(ref, str(spec), options, out=str(out))
    args = ["--data", "synthetic", "--steps", "2", "--batch-size", "2", "--eval-batches", "1"]
    with load_package(out) as train:
        metrics = train.train([*args, "--no-checkpoint", "--out", str(tmp_path / "runs")])
    assert len(metrics["block_losses"]) == len(cuts) + 1
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])
    return (out / "blocks.py").read_text()


def test_video_maps_get_conv3d_heads_r3d_18(tmp_path: Path) -> None:
    """torchvision's r3d_18 on 8-frame 64x64 clips: its 5-D maps are NCDHW, not features."""
    blocks = partitions_verifies_compiles_and_trains("torchvision:r3d_18", (3, 8, 64, 64), tmp_path)
    assert '"ncdhw", num_classes' in blocks
    assert all(f'"{layout}"' not in blocks for layout in ("nc", "nchw", "ncl", "nlc"))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_maps_that_pass_through_tokens_stay_maps_davit_tiny(tmp_path: Path) -> None:
    """timm's davit_tiny: its blocks flatten NCHW maps to tokens and view them back; the
    boundaries are NCHW maps, and every head is built for them."""
    from splitter.analysis.layouts import infer_layout

    blocks = partitions_verifies_compiles_and_trains("timm:davit_tiny", (3, 64, 64), tmp_path)
    assert '"nchw", num_classes' in blocks
    assert all(f'"{layout}"' not in blocks for layout in ("nc", "ncl", "nlc", "nhwc"))
    analysis = analyze("timm:davit_tiny", ModelOptions(batch_size=2, input_shape=(3, 64, 64)))
    gm = analysis.traced.graph("train")
    nodes = list(gm.graph.nodes)
    for cut in analysis.cuts.cuts:  # every map: NHWC only inside the LayerNorm2d permutes
        if cut.shape is not None and len(cut.shape) == 4:
            nhwc = cut.name.endswith((".permute", ".layer_norm"))
            expected = "nhwc" if nhwc else "nchw"
            assert infer_layout(gm, nodes[cut.index], cut.shape) == expected, cut.name


def trained_through_root(
    tmp_path: Path, ref: str, root: str, blocks: int, extra: str = ""
) -> tuple[dict[str, Any], set[str], dict[str, torch.Tensor]]:
    """`model.root: root` of `ref` at 3x96x96 (detection: 128x128) with `conv` heads:
    partitioned into `blocks`, verified, compiled and trained 2 steps. The metrics, the
    modules (two levels of names) whose weights moved, and the exported state_dict."""
    size = 128 if "rcnn" in ref else 96
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: '{ref}', root: {root}, input_shape: [3, {size}, {size}]}}\n"
        f"{extra}partition: {{auto: {{blocks: {blocks}}}}}\naux: {{default: {{kind: conv}}}}\n"
        "training: {data: {name: synthetic}, batch_size: 2}\n"
    )
    found = partition(spec=str(spec), blocks=blocks)
    assert len(found.blocks) == blocks and found.analysis.root == root
    _, checked = verify(None, str(spec), ModelOptions())
    assert checked.ok, checked
    compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    with load_package(tmp_path / "pkg") as train:
        train.train(["--steps", "0", "--export", str(tmp_path / "before.pt")])
        args = ["--steps", "2", "--eval-batches", "1", "--export", str(tmp_path / "after.pt")]
        metrics = train.train([*args, "--out", str(tmp_path / "run")])
    assert len(metrics["block_losses"]) == blocks
    before, after = torch.load(tmp_path / "before.pt"), torch.load(tmp_path / "after.pt")
    moved = {".".join(k.split(".")[:2]) for k in before if not torch.equal(before[k], after[k])}
    return metrics, moved, after


def test_segmentation_trains_through_its_root_deeplabv3_mobilenet_v3_large(
    tmp_path: Path,
) -> None:
    """MAN++'s segmentation setting: the backbone split into local blocks with per-pixel
    heads, the ASPP head after it trained on the task loss, the whole model exported."""
    ref = "torchvision:deeplabv3_mobilenet_v3_large"
    metrics, moved, after = trained_through_root(tmp_path, ref, "backbone", 4)
    assert "targets: pixel" in (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    assert "test_miou" in metrics
    assert {m.split(".")[0] for m in moved} >= {"backbone", "classifier"}
    segmentation = torchvision.models.segmentation
    model = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
    model.load_state_dict(after, strict=True)


def test_a_detection_backbone_trains_on_the_models_losses_fasterrcnn(tmp_path: Path) -> None:
    """MAN++'s detection setting: the backbone's body split into local blocks whose heads
    learn the class of the box over each pixel; the FPN, RPN and ROI heads train on the loss
    dict the model returns for synthetic boxes; the whole model exported."""
    ref = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    task = "task: {loss: model}\n"
    metrics, moved, after = trained_through_root(tmp_path, ref, "backbone.body", 3, task)
    lock = (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    assert "targets: boxes" in lock and "loss: model" in lock and "num_classes: 91" in lock
    assert metrics["test_loss"] > 0
    assert moved >= {"backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_predictor"}
    detection = torchvision.models.detection
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    model.load_state_dict(after, strict=True)
