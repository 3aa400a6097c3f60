"""The exact min-max split of a sequence into contiguous parts, by dynamic programming.

The one implementation for the partitioner (cuts between a model's units) and the runtime
(blocks onto devices and pipeline stages); packages carry it, so it imports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Cost = Callable[[int, int, int], float]
"""cost(k, i, j): the cost of part k spanning items i..j-1."""


def min_max(cost: Cost, n: int, parts: int, later: bool = True) -> tuple[list[int], float]:
    """Boundaries 0 = b_0 < b_1 < ... < b_K = n minimising max_k cost(k, b_k, b_k+1), exactly
    (O(K n^2) cost calls), and that maximum. Among equal choices each part starts as late as
    it can (`later`), else as early as it can."""
    if not 1 <= parts <= n:
        raise ValueError(f"{parts} parts need {parts - 1} of the {n - 1} boundaries")
    best = [[math.inf] * (n + 1) for _ in range(parts + 1)]
    choice = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        ends = [n] if k == parts else range(k, n - (parts - k) + 1)
        for j in ends:
            for i in range(k - 1, j):
                value = max(best[k - 1][i], cost(k - 1, i, j))
                if value < best[k][j] or (later and value == best[k][j]):
                    best[k][j], choice[k][j] = value, i
    bounds = [n]
    for k in range(parts, 0, -1):
        bounds.append(choice[k][bounds[-1]])
    return bounds[::-1], best[parts][n]
