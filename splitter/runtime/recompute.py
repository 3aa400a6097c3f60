"""Activation checkpointing that leaves a module as one forward leaves it: the activations of
a call are recomputed in the backward instead of held, under the forward's random state, and
the buffers the second pass moves again (BatchNorm's running statistics) are put back."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def recomputed(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, a call that runs `module`, under non-reentrant checkpointing: the backward
    keeps only `args` (and what `fn` reaches by closure) and runs the call again when it needs
    the activations. Gradients and buffers come out as without it."""
    contexts = functools.partial(_buffers_kept_in_recompute, module)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _buffers_kept_in_recompute(module: nn.Module) -> tuple[Any, Any]:
    return nullcontext(), restored_buffers(module)


@contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the module's buffers as they were."""
    kept = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)
