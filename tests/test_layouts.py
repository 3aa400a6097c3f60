"""Layouts from the graph, for any rank: where a boundary tensor's channels are is read from the
ops that produce and consume it (not from its rank), the auxiliaries are built for it (Conv3d
heads on video maps), and what no head can serve is refused with the boundary and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch.fx as fx

from splitter.analysis.layouts import LayoutError, infer_layout
from splitter.analysis.model import analyze
from splitter.api import compile_package, verify
from splitter.errors import SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.test_emission import assert_blocks_compute_the_model

MODELS = '''\
import torch
from torch import nn


def conv_bn(conv: nn.Module, norm: nn.Module) -> nn.Sequential:
    return nn.Sequential(conv, norm, nn.ReLU())


class VideoNet(nn.Module):
    """3-D convolutions on clips (C, D, H, W), then an NDHWC stage: LayerNorm and Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(nn.Conv3d(3, 8, 3, (1, 2, 2), 1, bias=False), nn.BatchNorm3d(8))
        self.layer1 = conv_bn(nn.Conv3d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm3d(8))
        self.layer2 = conv_bn(nn.Conv3d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm3d(16))
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 16), nn.GELU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.mlp(self.norm(x.permute(0, 2, 3, 4, 1)))  # NDHWC from here on
        return self.fc(x.mean(dim=(1, 2, 3)))


class SignalNet(nn.Module):
    """1-D convolutions on signals (C, L); the second map is square (16 channels, 16 steps)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(nn.Conv1d(4, 16, 5, 1, 2, bias=False), nn.BatchNorm1d(16))
        self.layer1 = conv_bn(nn.Conv1d(16, 16, 3, 2, 1, bias=False), nn.BatchNorm1d(16))
        self.layer2 = conv_bn(nn.Conv1d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm1d(16))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


class Stage(nn.Module):
    """LayerNorm and an MLP over the last axis, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class NhwcNet(nn.Module):
    """A conv stem, then NHWC maps (16x16x16: square, so the shape cannot tell) through
    LayerNorm-Linear stages and a swin-like patch merging through a 6-D reshape."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.stage1 = Stage(16)
        self.stage2 = Stage(16)
        self.merge = nn.Linear(64, 32)
        self.stage3 = Stage(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x).permute(0, 2, 3, 1)))
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
        x = self.stage3(self.merge(x.flatten(3)))
        return self.fc(x.mean(dim=(1, 2)))


class MixerBlock(nn.Module):
    """MLP-Mixer: a Linear over the tokens (behind a transpose), then one over the channels."""

    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.tokens = nn.Linear(tokens, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channels = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2) + x  # residual last
        return x + self.channels(self.norm2(x))


class TokenNet(nn.Module):
    """Tokens (L, C) = 16 x 16 embedded by a Linear, mixer blocks, a LayerNorm, mean pooling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.block1 = MixerBlock(16, 16)
        self.block2 = MixerBlock(16, 16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.block2(self.block1(self.embed(x))))
        return self.fc(x.mean(dim=1))


class HybridNet(nn.Module):
    """davit-like: NCHW maps (16 channels, 4x4) flattened to 16 tokens of 16 channels for a
    LayerNorm-Linear stage, then viewed back as maps for a convolution."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.stage = Stage(16)
        self.conv = conv_bn(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.stem(x).flatten(2).transpose(1, 2))
        x = self.conv(x.transpose(1, 2).unflatten(2, (4, 4)))
        return self.fc(x.mean(dim=(2, 3)))
'''
INPUTS = {
    "VideoNet": (3, 4, 16, 16),
    "SignalNet": (4, 32),
    "NhwcNet": (3, 16, 16),
    "TokenNet": (16, 8),
    "HybridNet": (3, 16, 16),
}
REFUSED = "refused"
"""No layout describes the tensor (more than 4 axes after the batch)."""
EXPECTED = {
    # 3-D convolutions: NCDHW video maps; then permuted to NDHWC for LayerNorm and Linear.
    "VideoNet": {
        "stem.0": "ncdhw", "stem.1": "ncdhw", "stem": "ncdhw", "layer1.0": "ncdhw",
        "layer1.1": "ncdhw", "layer1": "ncdhw", "layer2.0": "ncdhw", "layer2.1": "ncdhw",
        "layer2": "ncdhw", "permute": "ndhwc", "norm": "ndhwc", "mlp.0": "ndhwc",
        "mlp": "ndhwc", "mean": "nc",
    },
    # 1-D convolutions: NCL signals, square (16, 16) ones included.
    "SignalNet": {
        "stem.0": "ncl", "stem.1": "ncl", "stem": "ncl", "layer1.0": "ncl", "layer1.1": "ncl",
        "layer1": "ncl", "layer2.0": "ncl", "layer2.1": "ncl", "layer2": "ncl", "pool": "ncl",
        "flatten": "nc",
    },
    # (16, 16, 16) maps: channels last because LayerNorm and Linear act on them; the 6-D
    # patch-merging reshape is refused; its flattening is NHWC again.
    "NhwcNet": {
        "stem": "nchw", "permute": "nhwc", "stage1": "nhwc", "stage2": "nhwc",
        "reshape": REFUSED, "permute_1": REFUSED, "flatten": "nhwc", "merge": "nhwc",
        "stage3": "nhwc", "mean": "nc",
    },
    # (16 tokens, 16 channels): the token-mixing Linear behind a transpose does not make the
    # residual's sum NCL; the next LayerNorm takes it channels last.
    "TokenNet": {
        "embed": "nlc", "block1.add": "nlc", "block1": "nlc", "block2.add": "nlc",
        "block2": "nlc", "norm": "nlc", "mean": "nc",
    },
    # davit's shape: maps flattened to tokens and back; the unflattened maps feed a conv.
    "HybridNet": {
        "stem": "nchw", "flatten": "ncl", "transpose": "nlc", "stage": "nlc",
        "transpose_1": "ncl", "unflatten": "nchw", "conv.0": "nchw", "conv.1": "nchw",
        "conv": "nchw", "mean": "nc",
    },
}  # fmt: skip
TRAIN = ["--data", "synthetic", "--steps", "2", "--batch-size", "2", "--eval-batches", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "nets.py"
    path.write_text(MODELS)
    return path


def options(name: str) -> ModelOptions:
    return ModelOptions(batch_size=2, input_shape=INPUTS[name])


def inferred(models: Path, name: str) -> dict[str, str]:
    """The layout `auto` gives at every legal cut of the model."""
    analysis = analyze(f"{models}:{name}", options(name))
    gm = analysis.traced.graph("train")
    nodes = list(gm.graph.nodes)
    found = {}
    for cut in analysis.cuts.cuts:
        assert cut.shape is not None
        try:
            found[cut.name] = str(infer_layout(gm, nodes[cut.index], cut.shape))
        except LayoutError:
            found[cut.name] = REFUSED
    return found


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_layout_at_every_boundary_comes_from_the_ops(models: Path, name: str) -> None:
    assert inferred(models, name) == EXPECTED[name]


def test_a_rank_no_head_serves_is_refused_naming_the_layouts() -> None:
    graph = fx.Graph()
    node = graph.placeholder("x")
    graph.output(node)
    gm = fx.GraphModule({}, graph)
    with pytest.raises(LayoutError, match=r"\(B, 8, 2, 8, 2, 16\) has 5 axes.*`ncdhw`, `ndhwc`"):
        infer_layout(gm, node, (2, 8, 2, 8, 2, 16))


def spec_file(tmp_path: Path, cuts: list[str], aux: str) -> str:
    spec = tmp_path / "spec.yaml"
    text = f"version: 1\npartition: {{cuts: {cuts}}}\naux: {{default: {aux}}}\n"
    global_step = "training: {optimizer_scope: global}\n"  # MLAAN's cascade needs it
    spec.write_text(text + (global_step if "mlaan" in aux else ""))
    return str(spec)


@pytest.mark.filterwarnings("ignore:`.*` has no reset_parameters:UserWarning")
@pytest.mark.parametrize(
    ("name", "cuts", "aux", "heads"),
    [
        ("VideoNet", ["stem", "layer2", "norm"], "{kind: conv}",
         ['ConvHead((8, 4, 8, 8), "ncdhw"', 'ConvHead((16, 2, 4, 4), "ncdhw"',
          'ConvHead((2, 4, 4, 16), "ndhwc"']),
        ("VideoNet", ["layer1", "mlp"], "{kind: linear, layout: auto}",
         ['LinearHead((8, 4, 8, 8), "ncdhw"', 'LinearHead((2, 4, 4, 16), "ndhwc"']),
        ("VideoNet", ["mlp"], "{kind: conv, layout: ndhwc}", ['ConvHead((2, 4, 4, 16), "ndhwc"']),
        ("VideoNet", ["stem", "layer1"], "{kind: momentum}",
         ['ConvHead((8, 4, 8, 8), "ncdhw"', 'ConvHead((16, 2, 4, 4), "ncdhw"']),
        ("VideoNet", ["stem", "layer1"], "{kind: augmented}",
         ['Adapter((8, 4, 8, 8), "ncdhw", (16, 2, 4, 4), "ncdhw")',
          'Adapter((16, 2, 4, 4), "ncdhw", (2, 4, 4, 16), "ndhwc")']),
        ("VideoNet", ["stem", "layer1"], "{kind: mlaan}", ['LinearHead((8, 4, 8, 8), "ncdhw"']),
        ("NhwcNet", ["permute", "stage2", "merge"], "{kind: conv}",
         ['ConvHead((16, 16, 16), "nhwc"', 'ConvHead((8, 8, 32), "nhwc"']),
        ("NhwcNet", ["stage1", "flatten"], "{kind: momentum}",
         ['ConvHead((16, 16, 16), "nhwc"', 'ConvHead((8, 8, 32), "nhwc"']),
        ("SignalNet", ["stem", "layer1"], "{kind: conv}", ['ConvHead((16, 16), "ncl"']),
        ("TokenNet", ["block1", "block2"], "{kind: conv}", ['ConvHead((16, 16), "nlc"']),
        ("HybridNet", ["stage", "unflatten"], "{kind: conv}",
         ['ConvHead((16, 16), "nlc"', 'ConvHead((16, 4, 4), "nchw"']),
    ],
)  # fmt: skip
def test_plans_verify_compile_and_train_on_the_layout_found(
    models: Path, name: str, cuts: list[str], aux: str, heads: list[str], tmp_path: Path
) -> None:
    """The spec's cuts plan and verify; the package builds each head for its boundary's layout
    (Conv3d on video maps) and trains two steps on synthetic data of the model's input shape."""
    ref, spec = f"{models}:{name}", spec_file(tmp_path, cuts, aux)
    plan, result = verify(ref, spec, options(name))
    assert result.ok and [c.name for c in plan.cuts] == cuts
    out = tmp_path / "pkg"
    compile_package(ref, spec, options(name), out=str(out))
    blocks = (out / "blocks.py").read_text()
    assert all(head in blocks for head in heads), blocks
    with load_package(out) as train:
        assert_blocks_compute_the_model(train)
        metrics = train.train([*TRAIN, "--out", str(tmp_path / "runs")])
        convs = {type(m).__name__ for aux in train.build(0).auxiliaries for m in aux.modules()}
    assert len(metrics["block_losses"]) == len(cuts) + 1
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])
    if name == "VideoNet" and "conv" in aux:  # the heads' convolutions are 3-D
        assert "Conv3d" in convs and "Conv2d" not in convs and "Conv1d" not in convs


@pytest.mark.parametrize(("name", "aux"), [("VideoNet", "conv"), ("NhwcNet", "linear")])
def test_automatic_splits_compile_and_train(
    models: Path, name: str, aux: str, tmp_path: Path
) -> None:
    """The partitioner measures heads built for each candidate's layout and passes over cuts
    no head serves (NhwcNet's 6-D reshape)."""
    out = tmp_path / "pkg"
    compiled = compile_package(
        f"{models}:{name}", None, options(name), out=str(out), blocks=3, aux=aux
    )
    assert not {"reshape", "permute_1"} & {c.name for c in compiled.plan.cuts}
    with load_package(out) as train:
        metrics = train.train([*TRAIN, "--out", str(tmp_path / "runs")])
    assert all(math.isfinite(loss) for loss in metrics["block_losses"])


@pytest.mark.parametrize(
    ("name", "cuts", "aux", "message"),
    [
        ("NhwcNet", ["reshape"], "{kind: linear}",
         r"block 0's `linear` auxiliary cannot serve `reshape`: .*\(B, 8, 2, 8, 2, 16\) has 5 "
         r"axes after the batch; auxiliaries serve .*`nchw`, `nhwc`, `ncdhw`, `ndhwc`"),
        ("NhwcNet", ["reshape"], "{kind: conv, layout: nhwc}",
         r"`layout: nhwc`, but the tensor at `reshape` is \(B, 8, 2, 8, 2, 16\), which is not an "
         r"image map; cut where the tensor has at most 4 axes after the batch"),
        ("VideoNet", ["layer1"], "{kind: linear, layout: nchw}",
         r"`layout: nchw`.*`layer1` is \(B, 8, 4, 8, 8\), which is not an image map; use "
         r"`layout: auto` or `ncdhw` or `ndhwc`"),
        ("VideoNet", ["layer1"], "{kind: conv, variant: mlp-sr}",
         r"takes image maps \(NCHW\), but the boundary `layer1` is NCDHW; use `variant: default`"),
        ("VideoNet", ["layer1"], "{kind: infopro}",
         r"reconstructs images, but `layer1` carries a video map \(B, 8, 4, 8, 8\) and the "
         r"input is \[3, 4, 16, 16\]"),
    ],
)  # fmt: skip
def test_what_no_head_serves_is_refused_naming_the_boundary(
    models: Path, name: str, cuts: list[str], aux: str, message: str, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path, cuts, aux)
    with pytest.raises(SplitterError, match=message):
        compile_package(f"{models}:{name}", spec, options(name), out=str(tmp_path / "pkg"))
    assert not (tmp_path / "pkg").exists()
