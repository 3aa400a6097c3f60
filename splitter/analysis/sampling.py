"""AugLocal's rule for the layers an auxiliary samples (Ma et al., ICLR 2024): uniformly over
the units after the block, always ending at the last, with a depth that decreases linearly."""

from __future__ import annotations

from collections.abc import Sequence


def augmented_units(
    feature_ends: Sequence[int], j: int, k: int, blocks: int, depth: int, tau: float
) -> list[int]:
    """AugLocal's sampled units after boundary j for block k of `blocks` (DESIGN 3)."""
    n = len(feature_ends)
    done = [i for i, end in enumerate(feature_ends) if end <= j]
    last = done[-1] if done else -1  # the unit the block ends with
    d = auglocal_depth(k, blocks, depth, tau)
    if last >= n - 1:
        return []
    if d >= n - 1 - last:
        return list(feature_ends[last + 1 :])
    picks = sorted({round(last + (n - last - 1) / d * i) for i in range(1, d + 1)})
    return [feature_ends[i] for i in picks if i > last]


def auglocal_depth(k: int, blocks: int, depth: int, tau: float) -> int:
    """AugLocal's pyramidal depth for block k: from `depth` at the first block down linearly by
    the coefficient `tau` (round half to even, as Python's `round` in its code)."""
    if blocks <= 2:
        return depth
    ratio = k * tau / (blocks - 2)
    return max(1, round(depth * (1 - ratio) + ratio))
