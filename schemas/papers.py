"""The papers' split tables for CIFAR ResNet-32 and ResNet-110, as cut names, and MLAAN's leap
lists.

Each repository lists, per K, the residual blocks after which a module ends, as `[stage, index]`
(`[0, 0]`: after the stem): InfoPro's `networks/configs.py` (`InfoPro`, and the memory-balanced
`InfoPro_balanced_memory` of "InfoPro*", CIFAR-10), and MAN's `networks/config.py`, whose lists
repeat InfoPro's without the stem module and end with the last block (so its "K=16" is 15
modules and its "K=55" 54). MAN++ puts the stem back as a module of its own. MLAAN's
`config2.py` and `configAuxPlus_new.py` give its splits and, per module, the blocks its cascaded
auxiliary copies ("leap" layers). Here a pair
`[s, i]` is the cut `layer{s}.{i}` and `[0, 0]` the cut after the stem (`relu`).
"""

from __future__ import annotations

from typing import Literal

Paper = Literal["infopro", "infopro*", "man", "man++", "mlaan"]
Pair = tuple[int, int]


def _every(stages: int, blocks: int, skip_last: bool) -> list[Pair]:
    pairs = [(s, i) for s in range(1, stages + 1) for i in range(blocks)]
    return pairs[:-1] if skip_last else pairs


INFOPRO: dict[int, dict[int, list[Pair]]] = {
    32: {
        2: [(2, 1)],
        3: [(1, 4), (2, 4)],
        4: [(1, 2), (2, 1), (3, 0)],
        8: [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
        16: [(0, 0), *_every(3, 5, skip_last=True)],
    },
    110: {
        2: [(2, 8)],
        3: [(1, 17), (2, 17)],
        4: [(1, 11), (2, 7), (3, 3)],
        8: [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)],
        16: [
            (1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16),
            (2, 1), (2, 4), (2, 7), (2, 11), (2, 15),
            (3, 1), (3, 5), (3, 9), (3, 13),
        ],
    },
}  # fmt: skip
INFOPRO_BALANCED: dict[int, dict[int, list[Pair]]] = {
    110: {2: [(1, 14)], 3: [(1, 9), (2, 2)], 4: [(1, 6), (1, 14), (2, 8)]},
}
MAN: dict[int, dict[int, list[Pair]]] = {
    32: {k: [p for p in pairs if p != (0, 0)] for k, pairs in INFOPRO[32].items()},
    110: {
        **{k: [p for p in pairs if p != (0, 0)] for k, pairs in INFOPRO[110].items()},
        32: [
            (1, 1), (1, 2), (1, 4), (1, 5), (1, 7), (1, 9), (1, 11), (1, 13), (1, 14), (1, 16),
            (1, 17), (2, 1), (2, 2), (2, 4), (2, 5), (2, 7), (2, 9), (2, 11), (2, 13), (2, 14),
            (2, 16), (2, 17), (3, 1), (3, 3), (3, 4), (3, 6), (3, 7), (3, 9), (3, 11), (3, 13),
            (3, 15),
        ],
        55: _every(3, 18, skip_last=True),
    },
}  # fmt: skip
MAN_PLUS = {
    depth: {k: [(0, 0), *pairs] for k, pairs in table.items()} for depth, table in MAN.items()
}
MLAAN: dict[int, dict[int, list[Pair]]] = {
    32: {**{k: INFOPRO[32][k] for k in (2, 3, 4, 8)}, 15: _every(3, 5, skip_last=True)},
    110: {**INFOPRO[110], 32: MAN[110][32], 54: MAN[110][55]},
}
"""MLAAN's `config2.py`: InfoPro's lists without the stem module (the stem is in module 0) and
its layer-wise K = 15 (ResNet-32) and K = 54 (ResNet-110), K = 32 as MAN's."""

_EARLY, _MID = [(2, 0), (3, 0), (3, 2), (3, 4)], [(3, 0), (3, 2), (3, 3), (3, 4)]
_EARLY3 = [(2, 0), (3, 0), (3, 3), (3, 4)]
_EARLY110, _MID110 = [(2, 0), (3, 0), (3, 2), (3, 17)], [(3, 0), (3, 2), (3, 3), (3, 17)]
_LATE110 = [(3, 0), (3, 3), (3, 4), (3, 17)]
MLAAN_LEAPS: dict[int, dict[int, list[list[Pair]]]] = {
    32: {
        8: [_EARLY, _EARLY, _EARLY3, _MID, _MID, [(3, 2), (3, 3), (3, 4)], [(3, 3), (3, 4)]],
        15: [
            _EARLY, _EARLY, _EARLY3, _EARLY, _EARLY3, _MID, _MID, _MID, _MID, _MID,
            [(3, 1), (3, 2), (3, 4)], [(3, 2), (3, 3), (3, 4)], [(3, 3), (3, 4)], [(3, 4)],
        ],
    },
    110: {
        32: [
            *[_EARLY110] * 11, *[_MID110] * 10, _LATE110, *[[(3, 8), (3, 17)]] * 4,
            *[[(3, 14), (3, 17)]] * 2, [(3, 15), (3, 17)], [(3, 16), (3, 17)], [(3, 17)],
        ],
        54: [
            *[_EARLY110] * 18, *[_MID110] * 17, _LATE110, *[[(3, 8), (3, 17)]] * 7,
            *[[(3, 14), (3, 17)]] * 4, *[[(3, 15), (3, 17)]] * 2, *[[(3, 16), (3, 17)]] * 3,
            [(3, 17)],
        ],
    },
}  # fmt: skip
"""MLAAN's `configAuxPlus_new.py` (commit 70effbe): for each module but the last, the blocks its
cascaded auxiliary copies (the first coupled to its EMA copy), for the K it publishes lists for."""

TABLES: dict[str, dict[int, dict[int, list[Pair]]]] = {
    "infopro": INFOPRO,
    "infopro*": INFOPRO_BALANCED,
    "man": MAN,
    "man++": MAN_PLUS,
    "mlaan": MLAAN,
}


def mlaan_leaps(k: int, depth: int) -> list[list[str]] | None:
    """MLAAN's leap layers per block at K = `k` for the ResNet of `depth` (None: unpublished)."""
    lists = MLAAN_LEAPS.get(depth, {}).get(k)
    return None if lists is None else [[f"layer{s}.{i}" for s, i in leap] for leap in lists]


def paper_cuts(paper: str, k: int, depth: int) -> list[str]:
    """The cut names of `paper`'s split at K = `k` for the ResNet of `depth` (ValueError with
    the published K when there is none)."""
    table = TABLES[paper].get(depth)
    if table is None:
        depths = " and ".join(f"ResNet-{d}" for d in TABLES[paper])
        raise ValueError(f"`{paper}` publishes splits for {depths}, not ResNet-{depth}")
    if k not in table:
        published = ", ".join(map(str, sorted(table)))
        raise ValueError(
            f"`{paper}` publishes no split at K = {k} for ResNet-{depth}; its K are {published}"
        )
    return ["relu" if pair == (0, 0) else f"layer{pair[0]}.{pair[1]}" for pair in table[k]]
