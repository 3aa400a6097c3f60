"""Data for tasks beyond classification, with structure a model can learn.

`markov_tokens`: sequences from a fixed random Markov chain over V tokens, in which each token
is followed by one of 4 tokens with probabilities 0.55, 0.25, 0.15 and 0.05: the best possible
next-token loss is the chain's entropy, 1.11 nats, far below log V (4.16 for V = 64), so a
falling loss shows learning. For `per_token` targets a position's label is
`(x[t - 1] + x[t]) % classes` (the first position's `x[0] % classes`): it needs the token
before, not only the token itself.

`text_tokens`: a local UTF-8 file as byte tokens (0..255), cut into windows of T + 1 bytes; the
last tenth of the file is the test set.

`masks` (and `boxes`, the same scenes with their rectangles as detection targets): images with
1 to 3 rectangles, each of a class 1..C-1, every pixel in its class's
colour (a fixed random direction over the channels; the background is class 0) plus noise; the
target is each pixel's class."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
CHAIN_SEED = 20_261_203
"""The seed of the Markov chain itself: the same chain for every run, train and test."""
SUCCESSORS = torch.tensor([0.55, 0.25, 0.15, 0.05])


class TaskDataError(ValueError):
    """Data that cannot be made as asked; the message names the value and the fix."""


@dataclass
class Made:
    """Samples made on demand, each from its own seed: a large map costs one batch."""

    count: int
    make: Callable[[int], tuple[torch.Tensor, Any]]
    collate: Callable[[Sequence[Any]], Any] = lambda ys: torch.stack(list(ys))

    def __len__(self) -> int:
        return self.count

    def batches(self, order: list[list[int]], seed: int) -> Iterator[tuple[torch.Tensor, Any]]:
        for batch in order:
            xs, ys = zip(*(self.make(i) for i in batch), strict=True)
            yield torch.stack(xs), self.collate(ys)


@dataclass
class Held:
    """Samples held in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, order: list[list[int]], seed: int) -> Iterator[Batch]:
        for batch in order:
            i = torch.tensor(batch, dtype=torch.int64)
            yield self.x[i], self.y[i]


def chain(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed chain over `vocab` tokens: each token's 4 successors and their probabilities."""
    g = torch.Generator().manual_seed(CHAIN_SEED + vocab)
    successors = torch.stack([torch.randperm(vocab, generator=g)[:4] for _ in range(vocab)])
    return successors, SUCCESSORS


def entropy() -> float:
    """The chain's entropy per token in nats: the lowest next-token loss possible."""
    p = SUCCESSORS
    return float(-(p * p.log()).sum())


def markov_tokens(
    vocab: int, length: int, count: int, seed: int, labels: int | None = None
) -> Held:
    """`count` sequences from the chain: inputs `(count, length)` and the next tokens as
    targets; with `labels`, each position's label `(x[t-1] + x[t]) % labels` instead."""
    if vocab < 4:
        raise TaskDataError(f"a vocabulary of {vocab} tokens: the Markov data needs at least 4")
    successors, probs = chain(vocab)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(count, length + 1, dtype=torch.int64)
    tokens[:, 0] = torch.randint(0, vocab, (count,), generator=g)
    for t in range(length):
        pick = torch.multinomial(probs.expand(count, 4), 1, generator=g).squeeze(1)
        tokens[:, t + 1] = successors[tokens[:, t], pick]
    x = tokens[:, :length]
    if labels is None:
        return Held(x, tokens[:, 1:].contiguous())
    before = torch.cat([torch.zeros(count, 1, dtype=torch.int64), x[:, :-1]], dim=1)
    return Held(x, (before + x) % labels)


def text_tokens(path: str, length: int, vocab: int) -> tuple[Held, Held]:
    """Windows of `length + 1` bytes of the file at `path` (train: the first nine tenths)."""
    where = Path(path).expanduser()
    if not where.is_file():
        raise TaskDataError(f"`text:{path}`: no such file; give a local UTF-8 text file")
    if vocab < 256:
        raise TaskDataError(
            f"`text:{path}` gives byte tokens 0..255, but the model's vocabulary has {vocab}; "
            "build the model with a vocabulary of 256 and compile again"
        )
    data = torch.frombuffer(bytearray(where.read_bytes()), dtype=torch.uint8).long()
    cut = len(data) * 9 // 10
    parts = []
    for part in (data[:cut], data[cut:]):
        n = (len(part) - 1) // length
        if n < 1:
            raise TaskDataError(
                f"`text:{path}` has {len(data):,} bytes: too few for windows of {length + 1} "
                f"in both its train and test tenths; give a file of at least "
                f"{10 * (length + 1):,} bytes"
            )
        windows = part[: n * length + 1].unfold(0, length + 1, length)
        parts.append(Held(windows[:, :-1].contiguous(), windows[:, 1:].contiguous()))
    return parts[0], parts[1]


def masks(shape: tuple[int, ...], classes: int, count: int, seed: int) -> Made:
    """`count` images of `shape` (C, H, W) with rectangles of classes 1..classes-1 and their
    per-pixel targets (H, W)."""
    draw = _scenes(shape, classes)

    def make(index: int) -> Batch:
        image, target, _ = draw(seed + index)
        return image, target

    return Made(count, make)


def boxes(shape: tuple[int, ...], classes: int, count: int, seed: int) -> Made:
    """`masks`' images with their rectangles as detection targets: `Boxes` batches."""
    draw = _scenes(shape, classes)

    def make(index: int) -> tuple[torch.Tensor, Any]:
        image, target, found = draw(seed + index)
        return image, (target, found)

    return Made(count, make, Boxes.collate)


class Boxes:
    """A batch of detection targets: per image `{"boxes": (n, 4) x1 y1 x2 y2, "labels": (n,)}`
    as torchvision's detection models take them, and `masks` (B, H, W), the class of the box
    over each pixel (the last drawn on top; 0 for none), which the blocks' heads learn."""

    def __init__(self, masks: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        self.masks, self.targets = masks, targets

    @staticmethod
    def collate(ys: Sequence[Any]) -> Boxes:
        masks = torch.stack([m for m, _ in ys])
        targets = [{"boxes": b[:, 1:].float(), "labels": b[:, 0].long()} for _, b in ys]
        return Boxes(masks, targets)

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Boxes:
        moved = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()}
                 for t in self.targets]  # fmt: skip
        return Boxes(self.masks.to(device, non_blocking=non_blocking), moved)

    def tensors(self) -> list[torch.Tensor]:
        return [self.masks, *(v for t in self.targets for v in t.values())]


def _scenes(
    shape: tuple[int, ...], classes: int
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Draw the scene of a seed: the image, each pixel's class, and the rectangles as rows
    `(class, x1, y1, x2, y2)`."""
    if len(shape) != 3 or classes < 2:
        raise TaskDataError(
            f"per-pixel targets need images (C, H, W) and at least 2 classes; the model takes "
            f"{list(shape)} and predicts {classes}: set `model.input_shape: [C, H, W]`, or "
            "`task.targets` to the kind the model serves"
        )
    c, h, w = shape
    colours = torch.randn(classes, c, generator=torch.Generator().manual_seed(CHAIN_SEED))
    colours = 1.5 * colours / colours.norm(dim=1, keepdim=True).clamp_min(1e-6)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        image = 0.5 * torch.randn(c, h, w, generator=g)
        target = torch.zeros(h, w, dtype=torch.int64)
        found = []
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            k = int(torch.randint(1, classes, (), generator=g))
            top, left = (int(torch.randint(0, n - n // 4, (), generator=g)) for n in (h, w))
            tall, wide = (int(torch.randint(n // 4, n // 2 + 1, (), generator=g)) for n in (h, w))
            target[top : top + tall, left : left + wide] = k
            found.append([k, left, top, min(left + wide, w), min(top + tall, h)])
        image += colours[target].movedim(-1, 0)
        seen = [r for r in found if bool((target[r[2] : r[4], r[1] : r[3]] == r[0]).any())]
        return image, target, torch.tensor(seen, dtype=torch.int64)  # no box wholly covered

    return draw


SIZES = ((0, 1024), (1, 256))
"""The train and test sets' sizes (as `synthetic`'s), each with its seed offset."""


def task_sets(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    targets: str,
    classes: int,
    seed: int,
    more_inputs: Sequence[object] = (),
) -> tuple[Held | Made, Held | Made]:
    """The train and test sets of `--data name` for `targets` other than `class`: Markov
    tokens or masks (`synthetic`), or a text file's bytes (`text:PATH`)."""
    tokens = targets in ("next_token", "per_token")
    fix = "`--data synthetic`" + (" or `--data text:PATH`" if targets == "next_token" else "")
    if more_inputs:
        raise TaskDataError(
            f"`{targets}` targets are made for models of one input, but this one takes "
            f"{1 + len(more_inputs)}; train it on your own batches (`train.local_step`)"
        )
    if name.startswith("text:") and targets != "next_token":
        raise TaskDataError(
            f"`{name}` gives next-token targets, but the task's are `{targets}`; use "
            "`task.targets: next_token` for a language model, or `--data synthetic`"
        )
    if name != "synthetic" and not name.startswith("text:"):
        raise TaskDataError(
            f"`{name}` is labelled per image, but the task has `{targets}` targets; use {fix}"
        )
    if tokens and (len(shape) != 1 or dtype.is_floating_point):
        raise TaskDataError(
            f"`{targets}` targets are made for token ids of shape (T,), but the model takes "
            f"{list(shape)} {str(dtype).removeprefix('torch.')}; set `model.input_shape: [T]` "
            "and `model.input_dtype: int64`, or set `task.targets`"
        )
    if name.startswith("text:"):
        return text_tokens(name.removeprefix("text:"), shape[0], classes)
    if tokens:
        labels = classes if targets == "per_token" else None
        train, test = (markov_tokens(classes, shape[0], n, 2 * seed + i, labels) for i, n in SIZES)
        return train, test
    scenes = boxes if targets == "boxes" else masks
    made = (scenes(shape, classes, n, (2 * seed + i) * 1_000_003) for i, n in SIZES)
    return next(made), next(made)
