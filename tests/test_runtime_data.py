"""Runtime data: batch shapes, seeded resumable order, normalisation, errors, and imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from splitter.runtime import data as data_module
from splitter.runtime import taskdata
from splitter.package import load_package
from splitter.runtime.data import DATA_SETS, Data, DataError, load_data
from tests.conftest import example_package


@pytest.fixture(scope="module")
def digits() -> Data:
    return load_data("digits", (3, 32, 32), torch.float32)


def same(
    a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]
) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------- digits


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((3, 32, 32), torch.float32), ((1, 8, 8), torch.float32), ((3, 64, 64), torch.bfloat16)],
)
def test_digits_batches_take_the_model_input_shape(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    data = load_data("digits", shape, dtype)
    x, y = next(data.train_batches(0, 16, seed=0))
    assert x.shape == (16, *shape) and x.dtype == dtype and x.is_contiguous()
    assert y.shape == (16,) and y.dtype == torch.int64
    x, y = next(data.test_batches(16))
    assert x.shape == (16, *shape) and x.dtype == dtype
    assert data.num_classes == 10 and len(data.mean) == len(data.std) == shape[0]


def test_digits_split_every_fifth_sample_into_the_test_set(digits: Data) -> None:
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    test = list(digits.test_batches(100))
    assert [len(y) for _, y in test] == [100, 100, 100, 60]  # fixed order, last batch kept
    labels = torch.cat([y for _, y in test])
    assert labels.min() == 0 and labels.max() == 9


def test_unnormalise_gives_back_the_pixels_in_0_1() -> None:
    from sklearn.datasets import load_digits

    data = load_data("digits", (1, 8, 8), torch.float32)
    x = torch.cat([x for x, _ in data.test_batches(128)])
    pixels = torch.as_tensor(load_digits().images[::5], dtype=torch.float32).unsqueeze(1) / 16
    torch.testing.assert_close(data.unnormalise(x), pixels, atol=1e-5, rtol=0)
    assert abs(x[: len(x) * 4 // 5].mean().item()) < 0.2  # normalised with the train statistics


def test_unnormalise_of_upscaled_digits_stays_in_0_1(digits: Data) -> None:
    x = digits.unnormalise(next(digits.test_batches(64))[0])
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated to every channel


# ---------------------------------------------------------------- order


def test_an_epoch_order_depends_on_seed_and_epoch_only(digits: Data) -> None:
    first = list(digits.train_batches(3, 64, seed=7))
    assert same(first, list(digits.train_batches(3, 64, seed=7)))
    assert not same(first, list(digits.train_batches(4, 64, seed=7)))
    assert not same(first, list(digits.train_batches(3, 64, seed=8)))
    labels = torch.cat([y for _, y in first])
    assert labels.tolist() != sorted(labels.tolist())  # shuffled


@pytest.mark.parametrize("skip", [0, 1, 5, 22, 30])
def test_skip_resumes_exactly_where_the_epoch_left_off(digits: Data, skip: int) -> None:
    whole = list(digits.train_batches(2, 64, seed=1))
    assert same(list(digits.train_batches(2, 64, seed=1, skip=skip)), whole[skip:])


@pytest.mark.parametrize("batch_size", [1, 64, 100, 1437])
def test_steps_per_epoch_counts_full_batches(digits: Data, batch_size: int) -> None:
    batches = list(digits.train_batches(0, batch_size, seed=0))
    assert len(batches) == digits.steps_per_epoch(batch_size) == 1437 // batch_size
    assert all(len(y) == batch_size for _, y in batches)  # the partial batch is dropped
    samples = torch.cat([y for _, y in batches])
    assert len(samples) == 1437 // batch_size * batch_size


def test_a_set_smaller_than_a_batch_is_one_batch(digits: Data) -> None:
    assert digits.steps_per_epoch(2000) == 1
    [(x, y)] = list(digits.train_batches(0, 2000, seed=0))
    assert x.shape[0] == len(y) == 1437


# ---------------------------------------------------------------- synthetic


def test_synthetic_float_images_are_normalised_uniform_noise() -> None:
    data = load_data("synthetic", (3, 16, 16), torch.float32, num_classes=7, seed=3)
    assert (len(data.train), len(data.test), data.num_classes) == (1024, 256, 7)
    assert data.mean == (0.5,) * 3 and data.std == (0.25,) * 3
    x, y = next(data.train_batches(0, 32, seed=0))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -2 and x.max() <= 2 and y.min() >= 0 and y.max() < 7
    x01 = data.unnormalise(x)
    assert x01.min() >= 0 and x01.max() <= 1
    again = load_data("synthetic", (3, 16, 16), torch.float32, num_classes=7, seed=3)
    assert same(list(data.test_batches(64)), list(again.test_batches(64)))
    other = load_data("synthetic", (3, 16, 16), torch.float32, num_classes=7, seed=4)
    assert not same(list(data.test_batches(64)), list(other.test_batches(64)))


def test_synthetic_images_are_made_per_batch_and_replay() -> None:
    """An ImageNet-sized synthetic set holds its labels only; a sample is the same whichever
    batch it lands in, and train and test samples differ."""
    data = load_data("synthetic", (3, 224, 224), torch.float32, num_classes=1000)
    held = [
        t
        for split in (data.train, data.test)
        for t in vars(split).values()
        if isinstance(t, torch.Tensor)
    ]
    assert sum(t.numel() * t.element_size() for t in held) == (1024 + 256) * 8
    x, y = next(data.train_batches(0, 4, seed=0))
    order = torch.randperm(1024, generator=torch.Generator().manual_seed(0)).tolist()[:4]
    [(again, labels)] = list(data.train.batches([order[::-1]], 0))
    assert torch.equal(again, x.flip(0)) and torch.equal(labels, y.flip(0))
    assert not torch.equal(
        next(data.test_batches(4))[0], data.train.batches([[0, 1, 2, 3]], 0).__next__()[0]
    )


def test_synthetic_token_ids_are_valid_in_any_vocabulary() -> None:
    data = load_data("synthetic", (128,), torch.int64)
    x, y = next(data.train_batches(0, 8, seed=0))
    assert x.shape == (8, 128) and x.dtype == torch.int64 and set(x.flatten().tolist()) == {0, 1}
    assert data.num_classes == 10 and y.min() >= 0 and y.max() < 10
    assert (data.mean, data.std) == ((0.0,), (1.0,))
    assert torch.equal(data.unnormalise(x), x)


# ---------------------------------------------------------------- errors


def test_digits_refuse_a_token_input() -> None:
    with pytest.raises(DataError, match=r"`digits` are images.*\(128,\) int64.*--data synthetic"):
        load_data("digits", (128,), torch.int64)


def test_digits_refuse_too_few_classes() -> None:
    with pytest.raises(DataError, match="num_classes=5"):
        load_data("digits", (1, 8, 8), torch.float32, num_classes=5)
    assert load_data("digits", (1, 8, 8), torch.float32, num_classes=12).num_classes == 10


def test_cifar10_needs_a_root_and_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--data-root DIR.*never downloads"):
        load_data("cifar10", (3, 32, 32), torch.float32)
    with pytest.raises(DataError, match=rf"{tmp_path}.*cifar-10-batches-py"):
        load_data("cifar10", (3, 32, 32), torch.float32, root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def write_cifar10(root: Path, per_batch: int = 8) -> None:
    """A CIFAR-10 folder in the data set's own format (`cifar-10-batches-py/`: five training
    batches, a test batch and the meta file, pickled dicts of uint8 rows R..G..B and labels),
    with few images: pixel (c, i, j) of image n is (n + c + i + j) % 256, label n % 10."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    c, i, j = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    for b, name in enumerate(names):
        ids = range(b * per_batch, (b + 1) * per_batch)
        data = np.stack([((n + c + i + j) % 256).astype(np.uint8).reshape(-1) for n in ids])
        batch = {"data": data, "labels": [n % 10 for n in ids], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))


@pytest.fixture
def cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small CIFAR-10 folder. torchvision checks each file's MD5 against the released
    archive's, which a folder of 48 images cannot match: only that check is switched off."""
    import torchvision

    write_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    return tmp_path


def test_cifar10_is_read_from_its_own_file_format(cifar10: Path) -> None:
    data = load_data("cifar10", (3, 32, 32), torch.float32, root=str(cifar10))
    assert (data.num_classes, len(data.train), len(data.test)) == (10, 40, 8)
    [(x, y)] = list(data.test_batches(8))  # no augmentation on the test split
    assert y.tolist() == [n % 10 for n in range(40, 48)]
    c, i, j = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    pixels = ((40 + c + i + j) % 256).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in data_module.MEAN_STD["cifar10"])
    assert torch.allclose(x[0], (pixels - mean) / std, atol=1e-6)
    batches = list(data.train_batches(0, 8, seed=0))
    assert len(batches) == 5 and all(x.shape == (8, 3, 32, 32) for x, _ in batches)
    assert same(batches[1:], list(data.train_batches(0, 8, seed=0, skip=1)))  # crops replay


def test_a_package_trains_on_the_cifar10_folder_with_the_mans_recipe(
    cifar10: Path, tmp_path: Path
) -> None:
    (tmp_path / "compiled").mkdir()
    out = example_package(tmp_path / "compiled", training="{recipe: man-cifar}")
    with load_package(out) as train:
        args = ["--data", "cifar10", "--data-root", str(cifar10), "--steps", "2"]
        metrics = train.train([*args, "--batch-size", "8", "--out", str(tmp_path / "run")])
        steps = train.load_dataset(train.parse_args(args), 10).train.dataset.transform
    assert metrics["steps"] == 2 and all(loss == loss for loss in metrics["block_losses"])
    assert steps.transforms[0].padding_mode == "reflect"  # MAN's CIFAR augmentation


def test_unknown_data_set_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="imagefolder"):
        load_data("mnist", (1, 28, 28), torch.float32)


# ---------------------------------------------------------------- imagefolder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for split, count in (("train", 5), ("val", 2)):
        for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                image = Image.new("RGB", (10, 10), colour)
                image.putpixel((i, i), (255, 255, 255))
                image.save(tmp_path / split / label / f"{i}.png")
    return tmp_path


def test_imagefolder_serves_the_class_folders(folder: Path) -> None:
    data = load_data("imagefolder", (3, 16, 16), torch.float32, root=str(folder))
    assert (data.num_classes, len(data.train), len(data.test)) == (2, 10, 4)
    batches = list(data.train_batches(0, 4, seed=0))
    assert [x.shape for x, _ in batches] == [(4, 3, 16, 16)] * 2
    assert same(batches[1:], list(data.train_batches(0, 4, seed=0, skip=1)))  # augmentation too
    [(x, y)] = list(data.test_batches(8))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    assert data.unnormalise(x).min() >= -1e-5 and data.unnormalise(x).max() <= 1 + 1e-5


def test_imagefolder_converts_to_grey_for_a_one_channel_model(folder: Path) -> None:
    data = load_data("imagefolder", (1, 12, 12), torch.float32, root=str(folder))
    [(x, _)] = list(data.test_batches(8))
    assert x.shape == (4, 1, 12, 12) and len(data.mean) == 1


# ---------------------------------------------------------------- imports


@pytest.mark.parametrize("module", [data_module, taskdata])
def test_the_module_imports_only_stdlib_and_torch_at_top_level(module: object) -> None:
    """Beside its runtime sibling `taskdata` (top-level in a package, relative in the library)."""
    tree = ast.parse(Path(str(getattr(module, "__file__", ""))).read_text())
    allowed = {*sys.stdlib_module_names, "__future__", "torch", "taskdata"}

    def roots(nodes: list[ast.stmt] | list[ast.AST]) -> set[str]:
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module is None
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module is not None
                names.add(node.module.split(".")[0])
        return names

    assert roots(tree.body) <= allowed
    assert roots(list(ast.walk(tree))) <= allowed | {"torchvision", "sklearn"}
    if module is taskdata:
        assert roots(list(ast.walk(tree))) <= {*sys.stdlib_module_names, "__future__", "torch"}
    assert DATA_SETS == (
        "synthetic",
        "digits",
        "cifar10",
        "cifar100",
        "svhn",
        "stl10",
        "imagefolder",
    )
