"""`partition.paper`: the repositories' split tables for CIFAR ResNet-32/110, as legal cuts."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import parse_spec
from schemas.errors import SpecError
from schemas.papers import TABLES
from splitter.analysis.model import analyze
from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.plan import plan_for
from tests.conftest import EXAMPLES


def cuts(paper: str) -> list[str]:
    spec = parse_spec(f"version: 1\npartition: {{paper: {paper}}}\n").spec
    assert spec.partition.cuts is not None
    return spec.partition.cuts


def test_the_tables_give_the_papers_block_counts() -> None:
    assert cuts("{name: infopro, k: 4}") == ["layer1.2", "layer2.1", "layer3.0"]
    assert len(cuts("{name: infopro, k: 16}")) + 1 == 16  # the stem is a module
    assert cuts("{name: infopro, k: 16}")[0] == "relu"
    assert len(cuts("{name: man, k: 16}")) + 1 == 15  # MAN's "K=16"
    assert cuts("{name: man++, k: 16}") == cuts("{name: infopro, k: 16}")
    assert len(cuts("{name: man, k: 55, depth: 110}")) + 1 == 54
    assert len(cuts("{name: man, k: 32, depth: 110}")) + 1 == 32
    assert cuts("{name: infopro*, k: 4, depth: 110}") == ["layer1.6", "layer1.14", "layer2.8"]


@pytest.mark.parametrize(
    ("paper", "message"),
    [
        ("{name: man, k: 5}", r"`man` publishes no split at K = 5 for ResNet-32; its K are 2, 3"),
        ("{name: infopro*, k: 4}", r"`infopro\*` publishes splits for ResNet-110, not ResNet-32"),
        ("{name: man, k: 4}, cuts: [layer1.0]", r"gives `paper` and `cuts` or `auto`; keep one"),
    ],
)
def test_a_split_the_paper_does_not_publish_is_refused(paper: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        cuts(paper)


@pytest.mark.parametrize("depth", [32, 110])
def test_every_table_is_legal_on_the_bundled_resnet(depth: int) -> None:
    options = ModelOptions(model_args={"depth": depth}, batch_size=2)
    analysis = analyze(str(EXAMPLES / "resnet_cifar" / "model.py"), options)
    for paper, tables in TABLES.items():
        for k, pairs in tables.get(depth, {}).items():
            text = f"version: 1\npartition: {{paper: {{name: {paper}, k: {k}, depth: {depth}}}}}\n"
            plan = plan_for(analysis, parse_spec(text))
            assert len(plan.surgery.blocks) == len(pairs) + 1, (paper, k)


def test_the_lock_says_where_the_cuts_come_from(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {EXAMPLES / 'resnet_cifar' / 'model.py'}}}\n"
        "partition: {paper: {name: infopro, k: 4}}\naux: {default: {kind: linear}}\n"
    )
    out = tmp_path / "pkg"
    compile_package(None, str(spec), ModelOptions(), out=str(out))
    lock = (out / "spec.lock.yaml").read_text()
    assert '# cuts from `paper: {"name": "infopro", "k": 4, "depth": 32}`' in lock
    assert "cuts: [layer1.2, layer2.1, layer3.0]" in lock
