"""CUDA checks (marker `gpu`; skipped without a GPU): estimates and equivalence on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitter.analysis import analyze
from splitter.annotate import measure_saved_bytes
from splitter.modelref import ModelOptions
from splitter.surgery import split
from splitter.verify import verify
from tests.conftest import EXAMPLES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16"])
def test_estimate_equals_a_cuda_forward(name: str) -> None:
    analysis = analyze(f"torchvision:{name}", ModelOptions(batch_size=8))
    model = analysis.model.module.cuda()
    real = measure_saved_bytes(model, torch.randn(8, 3, 224, 224, device="cuda"))
    assert analysis.total_activation_bytes == pytest.approx(real, rel=0.01)


def test_split_verifies_on_cuda() -> None:
    analysis = analyze(str(EXAMPLES / "resnet_cifar" / "model.py"))
    cuts = [analysis.cuts.find(n) for n in ("layer1.2", "layer2.1", "layer3.0")]
    surgery = split(analysis.traced, cuts)  # type: ignore[arg-type]
    target = analysis.target.cuda()
    surgery.chain().cuda()
    graphs = {m: analysis.traced.graph(m).cuda() for m in ("train", "eval")}
    x = torch.rand(8, 3, 32, 32, device="cuda")
    result = verify(target, graphs, cuts, surgery, x)  # type: ignore[arg-type]
    assert result.output_equal_eval and all(b.isolated for b in result.blocks)


@pytest.mark.parametrize("flags", [[], ["--precision", "fp16", "--channels-last"], ["--mode", "e2e"]])
def test_compiled_package_trains_on_cuda(tmp_path: Path, flags: list[str]) -> None:
    from splitter.compiler import compile_package
    from splitter.package import load_package

    spec = EXAMPLES / "resnet_cifar" / "spec.yaml"
    out = tmp_path / "pkg"
    compile_package(str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions(), out=str(out))
    args = ["--data", "synthetic", "--steps", "3", "--device", "cuda", "--out", str(tmp_path / "r")]
    with load_package(out) as train:
        metrics = train.train([*args, *flags])
    assert metrics["peak_memory_method"] == "cuda_max_memory_allocated"
    assert metrics["peak_memory_bytes"] > 0 and metrics["device"].startswith("cuda")
