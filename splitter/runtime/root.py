"""The model around its `model.root`: the blocks split the root alone, and the rest of the
model (what runs before it, and the neck and heads after it) runs around them.

Block 0 trains on what the model gives its root: `Around.root_input` runs the model up to the
root's call (no gradient) and stops there. The last block's output is put where the root's
would be and the model runs on (`Around.output`): the task loss trains the last block and the
modules after the root, which the last block's optimizer (or the global one) holds. What runs
before the root runs
twice a step and gets no gradient (torchvision's segmentation and detection models have no
parameters there). Exported weights are the whole model's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _Reached(Exception):
    """The model's forward reached its root: what came before is all that was needed."""


class Given(nn.Module):
    """Stands in for the root: returns the value it was given, whatever it is called with."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.value


class Around:
    """The model `model` around its submodule at `path`."""

    def __init__(self, model: nn.Module, path: str) -> None:
        self.model, self.path = model, path
        self.root = model.get_submodule(path)
        own = {id(p) for p in self.root.parameters()}
        self.rest = [p for p in model.parameters() if id(p) not in own]
        """The parameters outside the root: the last block's (or the global) optimizer holds
        them."""

    def root_input(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """What the model passes its root on these inputs (its first argument)."""
        seen: list[torch.Tensor] = []

        def reached(_: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])
            raise _Reached

        handle = self.root.register_forward_pre_hook(reached)
        try:
            with torch.no_grad():
                self.model(*inputs)
        except _Reached:
            pass
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError(f"the model did not call its root `{self.path}`")
        return seen[0]

    def output(self, inputs: Sequence[torch.Tensor], value: Any) -> Any:
        """The model's output on `inputs` with `value` as its root's output."""
        with swapped(self.model, self.path, Given(value)):
            return self.model(*inputs)


@contextmanager
def swapped(model: nn.Module, path: str, replacement: nn.Module) -> Iterator[nn.Module]:
    """`model` with its submodule at `path` replaced, for the time of the block."""
    *parents, name = path.split(".")
    holder = model.get_submodule(".".join(parents)) if parents else model
    original = holder._modules[name]
    holder._modules[name] = replacement
    try:
        yield model
    finally:
        holder._modules[name] = original
