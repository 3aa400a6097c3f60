"""CUDA checks (marker `gpu`; skipped without a GPU): estimates and equivalence on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitter.analysis.model import analyze
from splitter.frontend.annotate import measure_saved_bytes
from splitter.frontend.modelref import ModelOptions
from splitter.transform.surgery import split
from splitter.transform.verify import verify
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


@pytest.mark.parametrize(
    "flags",
    [[], ["--precision", "fp16", "--channels-last"], ["--mode", "e2e"], ["--mode", "e2e", "--checkpoint"]],
)
def test_compiled_package_trains_on_cuda(tmp_path: Path, flags: list[str]) -> None:
    from splitter.api import compile_package
    from splitter.package import load_package

    spec = EXAMPLES / "resnet_cifar" / "spec.yaml"
    out = tmp_path / "pkg"
    compile_package(str(EXAMPLES / "resnet_cifar" / "model.py"), str(spec), ModelOptions(), out=str(out))
    args = ["--data", "synthetic", "--steps", "3", "--device", "cuda", "--out", str(tmp_path / "r")]
    with load_package(out) as train:
        metrics = train.train([*args, *flags])
    assert metrics["peak_memory_method"] == "cuda_max_memory_allocated"
    assert metrics["peak_memory_bytes"] > 0 and metrics["device"].startswith("cuda")


def _package(tmp_path: Path) -> Path:
    from splitter.api import compile_package

    out = tmp_path / "pkg"
    spec, model = EXAMPLES / "resnet_cifar" / "spec.yaml", EXAMPLES / "resnet_cifar" / "model.py"
    compile_package(str(model), str(spec), ModelOptions(), out=str(out))
    return out


@pytest.mark.parametrize("count", [1, 2])
def test_wavefront_on_cuda_matches_one_device(tmp_path: Path, count: int) -> None:
    """The wavefront's groups on one or two GPUs (CUDA generators per block, non_blocking
    copies, cross-device EMA sources) reach the one-device weights up to cuDNN's
    nondeterminism."""
    if torch.cuda.device_count() < count:
        pytest.skip(f"needs {count} GPUs")
    from splitter.package import load_package

    package = _package(tmp_path)
    devices = ["cuda:0", "cuda:0"] if count == 1 else [f"cuda:{i}" for i in range(count)]
    found = {}
    for name, device in {"one": ["cuda:0"], "wavefront": devices}.items():
        args = ["--data", "synthetic", "--steps", "4", "--batch-size", "32", "--no-checkpoint",
                "--out", str(tmp_path / name), "--export", str(tmp_path / f"{name}.pt"),
                "--device", *device]  # fmt: skip
        with load_package(package) as train:
            train.train(args)
        found[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    for key, value in found["one"].items():
        assert torch.allclose(value.float(), found["wavefront"][key].float(), atol=1e-3), key


def test_nccl_pipeline_trains(tmp_path: Path) -> None:
    """Two ranks on two GPUs (NCCL) train and gather a checkpoint."""
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs a GPU per rank: 2 GPUs")
    import subprocess
    import sys

    package = _package(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "train.py", "--data", "synthetic", "--steps", "4", "--out", str(tmp_path / "r")],
        cwd=package, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 4
