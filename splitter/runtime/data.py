"""Data sets served as seeded, resumable batches shaped for the model's input."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

if __package__:  # imported by the library as `splitter.runtime.data`
    from . import taskdata
else:  # a package's own module beside train.py
    import taskdata  # type: ignore[no-redef]

Batch = tuple[Any, torch.Tensor]
"""A batch's model input (a tensor, or a tuple with one per input of a forward that takes
several) and its labels."""
Sample = tuple[torch.Tensor, int]

MEAN_STD = {  # per RGB channel, of the images in [0, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}
DATA_SETS: tuple[str, ...] = ("synthetic", "digits", *MEAN_STD)
CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "stl10": 10}
LAYOUT = {
    "cifar10": "DIR/cifar-10-batches-py/ (the CIFAR-10 python version, extracted)",
    "cifar100": "DIR/cifar-100-python/ (the CIFAR-100 python version, extracted)",
    "svhn": "DIR/train_32x32.mat and DIR/test_32x32.mat",
    "stl10": "DIR/stl10_binary/ (the STL-10 binary archive, extracted)",
    "imagefolder": "DIR/train/<class>/<image> and DIR/val/<class>/<image> (or DIR/test/...)",
}


class DataError(ValueError):
    """A data set that cannot be served as asked; the message names the value and the fix."""


# ---------------------------------------------------------------- splits


@dataclass
class Tensors:
    """Samples held in memory; `x` broadcasts to the sample `shape` (grey to C channels)."""

    x: torch.Tensor
    y: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, order: list[list[int]], seed: int) -> Iterator[Batch]:
        for batch in order:
            i = torch.tensor(batch, dtype=torch.int64)
            x = self.x[i].expand(len(batch), *self.shape).to(self.dtype).contiguous()
            yield x, self.y[i]


@dataclass
class Generated:
    """Random samples made on demand, each from its own seed: only the labels are held, so a
    large input shape costs one batch of memory, not the whole set."""

    y: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    seed: int
    more: tuple[tuple[tuple[int, ...], torch.dtype], ...] = ()
    """The shape and dtype of the model's other inputs, each made as the first is."""

    def __len__(self) -> int:
        return len(self.y)

    def sample(
        self, index: int, shape: tuple[int, ...], dtype: torch.dtype, which: int = 0
    ) -> torch.Tensor:
        """Input `which` of sample `index`: uniform values normalised to mean 0, std about
        1.15, or token ids in {0, 1}."""
        g = torch.Generator().manual_seed(self.seed + index + 500_009 * which)
        if dtype.is_floating_point:
            return (torch.rand(shape, generator=g) - 0.5) / 0.25
        return torch.randint(0, 2, shape, generator=g)

    def batches(self, order: list[list[int]], seed: int) -> Iterator[Batch]:
        inputs = ((self.shape, self.dtype), *self.more)
        for batch in order:
            x = tuple(
                torch.stack([self.sample(i, *spec, which=n) for i in batch]).to(spec[1])
                for n, spec in enumerate(inputs)
            )
            yield x if self.more else x[0], self.y[torch.tensor(batch, dtype=torch.int64)]


class Seeded(Dataset[Sample]):
    """Seeds the RNG from (epoch seed, index) before each sample, so augmentations replay."""

    def __init__(self, dataset: Dataset[Sample]) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, seed = key
        torch.default_generator.manual_seed(hash((seed, index)) % 2**63)
        return self.dataset[index]


@dataclass
class Images:
    """A torchvision data set, decoded and augmented in DataLoader workers."""

    dataset: Any  # a torchvision data set: Dataset[Sample] with a length
    dtype: torch.dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, order: list[list[int]], seed: int) -> Iterator[Batch]:
        if not order:
            return
        sampler = [[(i, seed) for i in batch] for batch in order]
        pin = torch.cuda.is_available()
        loader = DataLoader(
            Seeded(self.dataset), batch_sampler=sampler, num_workers=_workers(), pin_memory=pin
        )
        for x, y in loader:
            yield x.to(self.dtype), y


def _workers() -> int:
    """DataLoader workers: up to 4, and no more than the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return min(4, len(os.sched_getaffinity(0)))
    return min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------- the data set


@dataclass
class Data:
    """A data set served as batches of the model's input shape and dtype."""

    name: str
    num_classes: int
    mean: tuple[float, ...]  # per input channel; the model sees (image01 - mean) / std
    std: tuple[float, ...]
    train: Tensors | Generated | Images | taskdata.Held | taskdata.Made
    test: Tensors | Generated | Images | taskdata.Held | taskdata.Made

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches per epoch: the last partial one is dropped, unless it is the only one."""
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size}: it must be at least 1")
        return max(len(self.train) // batch_size, 1)

    def train_batches(
        self, epoch: int, batch_size: int, seed: int, skip: int = 0
    ) -> Iterator[Batch]:
        """The epoch's batches in an order set by (seed, epoch) alone, from batch `skip` on."""
        steps = self.steps_per_epoch(batch_size)
        if skip < 0:
            raise DataError(f"skip={skip}: it must be at least 0")
        epoch_seed = seed * 1_000_003 + epoch
        g = torch.Generator().manual_seed(epoch_seed)
        perm = torch.randperm(len(self.train), generator=g).tolist()
        order = [perm[i * batch_size : (i + 1) * batch_size] for i in range(skip, steps)]
        yield from self.train.batches(order, epoch_seed)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The test set in a fixed order; the last batch may be partial."""
        n = len(self.test)
        order = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        yield from self.test.batches(order, 0)

    def unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float batches back to [0, 1] (channels on dim 1); anything else unchanged."""
        if not x.is_floating_point() or x.dim() < 2:
            return x
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(view)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(view)
        return x * std + mean


def load_data(
    name: str,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype,
    *,
    num_classes: int | None = None,
    root: str | None = None,
    seed: int = 0,
    padding: str = "zero",
    flip: bool = True,
    more_inputs: Sequence[tuple[tuple[int, ...], torch.dtype]] = (),
    targets: str = "class",
) -> Data:
    """The data set `name` for a model taking samples of `input_shape` and `input_dtype`;
    CIFAR, SVHN and STL-10 train on random crops of the image padded by 4 (`padding`: `zero`
    or `reflect`) and, with `flip`, horizontal flips (never for SVHN's digits). `more_inputs`:
    the shape and dtype of the model's other inputs, which only `synthetic` makes. `targets`
    other than `class` (the task's), and `text:PATH`: tokens or masks (`taskdata.task_sets`)."""
    shape = tuple(input_shape)
    if targets != "class" or name.startswith("text:"):
        classes = num_classes or 10
        try:
            sets = taskdata.task_sets(name, shape, input_dtype, targets, classes, seed, more_inputs)
        except taskdata.TaskDataError as error:
            raise DataError(str(error)) from None
        return Data(name, classes, *_made_stats(shape, input_dtype), *sets)
    if name == "synthetic":
        classes = 10 if num_classes is None else num_classes
        return _synthetic(shape, input_dtype, classes, seed, tuple(more_inputs))
    if name not in DATA_SETS:
        raise DataError(f"unknown data set `{name}`; choose one of: {', '.join(DATA_SETS)}")
    if more_inputs:
        raise DataError(
            f"`{name}` holds images alone, but the model takes {1 + len(more_inputs)} inputs; "
            "use `--data synthetic`, or feed your own batches to `train.local_step`"
        )
    if len(shape) != 3 or not input_dtype.is_floating_point:
        raise DataError(
            f"`{name}` are images, but the model takes input of shape {shape} "
            f"{str(input_dtype).removeprefix('torch.')}; use `--data synthetic`"
        )
    data = (
        _digits(shape, input_dtype)
        if name == "digits"
        else _vision(name, shape, input_dtype, root, (padding, flip))
    )
    if num_classes is not None and num_classes < data.num_classes:
        raise DataError(
            f"`{name}` has {data.num_classes} classes but the model has num_classes={num_classes}; "
            f"give the model at least {data.num_classes} outputs, or use `--data synthetic`"
        )
    return data


# ---------------------------------------------------------------- in memory


def _synthetic(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    num_classes: int,
    seed: int,
    more: tuple[tuple[tuple[int, ...], torch.dtype], ...] = (),
) -> Data:
    """Random inputs and labels: uniform images, or token ids in {0, 1} for integer inputs;
    1024 training and 256 test samples, made batch by batch."""
    if num_classes < 1:
        raise DataError(f"num_classes={num_classes}: `synthetic` needs at least 1 class")
    g = torch.Generator().manual_seed(seed)
    labels = [torch.randint(0, num_classes, (n,), generator=g) for n in (1024, 256)]
    base = seed * 1_000_003 * 4
    train, test = (
        Generated(y, shape, dtype, base + 2 * 1_000_003 * i, more) for i, y in enumerate(labels)
    )
    return Data("synthetic", num_classes, *_made_stats(shape, dtype), train, test)


def _made_stats(
    shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std per channel of made-up inputs: 0.5 and 0.25 for floats, none for ids."""
    c = shape[0] if len(shape) >= 2 else 1
    return ((0.5,) * c, (0.25,) * c) if dtype.is_floating_point else ((0.0,), (1.0,))


def _digits(shape: tuple[int, ...], dtype: torch.dtype) -> Data:
    """scikit-learn's 8x8 digits, upscaled to (H, W); every fifth sample is the test set."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped, unused-ignore]

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    is_test = torch.arange(len(y)) % 5 == 0
    mean, std = x[~is_test].mean().item(), x[~is_test].std().item()
    train, test = (
        Tensors(_resize((x[m] - mean) / std, shape[1:]), y[m], shape, dtype)
        for m in (~is_test, is_test)
    )
    return Data("digits", 10, (mean,) * shape[0], (std,) * shape[0], train, test)


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of (N, 1, h, w) images to `size`, in chunks to bound the memory."""
    if tuple(x.shape[2:]) == size:
        return x
    out = x.new_empty(len(x), 1, *size)
    for i in range(0, len(x), 256):
        chunk = x[i : i + 256]
        out[i : i + 256] = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
    return out


# ---------------------------------------------------------------- torchvision


def _vision(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    root: str | None,
    augment: tuple[str, bool] = ("zero", True),
) -> Data:
    """A torchvision data set read from `root`; never downloaded."""
    if root is None:
        raise DataError(
            f"`{name}` is read from a local folder: pass `--data-root DIR` "
            "(or set `training.data.root` in the spec); splitter never downloads"
        )
    c, h, w = shape
    if c not in (1, 3):
        raise DataError(f"`{name}` has 3 channels but the model takes {c}; use `--data synthetic`")
    mean, std = MEAN_STD[name] if c == 3 else (_grey(MEAN_STD[name][0]), _grey(MEAN_STD[name][1]))
    root = os.path.expanduser(root)
    try:
        train = _open_set(name, root, True, _transform(name, c, h, w, True, mean, std, augment))
        test = _open_set(name, root, False, _transform(name, c, h, w, False, mean, std))
    except (RuntimeError, FileNotFoundError) as e:
        raise DataError(f"`{name}` was not found in {root}: expected {LAYOUT[name]}") from e
    if name == "imagefolder" and train.classes != test.classes:
        raise DataError(f"the class folders of {root}/train and its test split differ")
    classes = len(train.classes) if name == "imagefolder" else CLASSES[name]
    return Data(name, classes, mean, std, Images(train, dtype), Images(test, dtype))


def _grey(rgb: tuple[float, ...]) -> tuple[float, ...]:
    """A statistic of the luminance, approximated from the RGB channels' (ITU-R 601-2)."""
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2],)


def _open_set(name: str, root: str, train: bool, tf: Callable[[Any], torch.Tensor]) -> Any:
    """The torchvision data set's train or test split."""
    import torchvision  # type: ignore[import-untyped, unused-ignore]

    sets = torchvision.datasets
    if name in ("cifar10", "cifar100"):
        cifar = sets.CIFAR10 if name == "cifar10" else sets.CIFAR100
        return cifar(root, train=train, transform=tf, download=False)
    if name in ("svhn", "stl10"):
        split = "train" if train else "test"
        return getattr(sets, name.upper())(root, split=split, transform=tf, download=False)
    split = "train" if train else "val" if os.path.isdir(os.path.join(root, "val")) else "test"
    return sets.ImageFolder(os.path.join(root, split), transform=tf)


def _transform(
    name: str,
    c: int,
    h: int,
    w: int,
    train: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: tuple[str, bool] = ("zero", True),
) -> Callable[[Any], torch.Tensor]:
    """PIL image to a normalised (C, H, W) tensor, with the set's usual augmentation in training."""
    import torchvision  # type: ignore[import-untyped, unused-ignore]

    T = torchvision.transforms
    if name == "imagefolder" and train:
        steps = [T.RandomResizedCrop((h, w)), T.RandomHorizontalFlip()]
    elif name == "imagefolder":
        steps = [T.Resize(int(h * 256 / 224)), T.CenterCrop((h, w))]
    else:
        side = 96 if name == "stl10" else 32
        mode = "constant" if augment[0] == "zero" else augment[0]
        steps = [T.RandomCrop(side, padding=4, padding_mode=mode)] if train else []
        steps += [T.RandomHorizontalFlip()] if train and augment[1] and name != "svhn" else []
        steps += [T.Resize((h, w))] if (h, w) != (side, side) else []
    if c == 1:
        steps.insert(0, T.Grayscale(1))
    tf: Callable[[Any], torch.Tensor] = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    return tf
