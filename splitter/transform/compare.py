"""Comparing model outputs: exactly, or by the largest relative difference."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree


def tree_equal(a: Any, b: Any) -> bool:
    """Same structure, and every tensor equal (`torch.equal`)."""
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    return len(la) == len(lb) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(la, lb, strict=True)
    )


def rel_diff(a: Any, b: Any) -> float:
    """The largest difference of a floating tensor of `a` from `b`'s, relative to `b`'s
    largest magnitude."""
    worst = 0.0
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=False):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            scale = max(float(y.abs().max()), 1e-12) if y.numel() else 1.0
            worst = max(worst, float((x - y).abs().max()) / scale if x.numel() else 0.0)
    return worst
