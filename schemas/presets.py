"""Auxiliary presets: each paper's auxiliary settings by name, as its CIFAR code runs them.

`aux: {preset: NAME}` expands into `aux.default` before validation; every key the spec's own
`aux.default` sets wins (`{preset: infopro, default: {loss: cross_entropy}}`). The expansion is
kind-level, so it applies to any model whose boundaries the kinds serve; spec.lock.yaml shows
the resolved auxiliary.
"""

from __future__ import annotations

from typing import Any, Literal

from schemas.papers import mlaan_leaps, paper_cuts

Preset = Literal["man", "man++", "infopro", "infopro+man", "dgl", "dgl+man++", "auglocal", "mlaan"]

INFOPRO_LAMBDAS: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    2: ((5.0, 0.0), (1.0, 0.0)),
    4: ((6.0, 1.0), (0.0, 2.0)),
    8: ((5.0, 0.0), (0.0, 2.0)),
    16: ((5.0, 0.2), (0.05, 0.5)),
}
"""InfoPro's `[first, last]` (lambda1, lambda2) for ResNet-32 by K (`comand.sh`); another K
takes splitter's defaults ([5, 0.5] and [0, 1])."""

_MAN_HEAD: dict[str, Any] = {
    "kind": "infopro", "classifier": "2c2f", "feature_dim": 128, "loss": "cross_entropy",
    "lambda1": (5.0, 0.0), "lambda2": (0.5, 0.0), "schedule": "stage",
}  # fmt: skip
"""MAN's heads on the mixed copies (its README: `--aux_net_config 2c2f --local_loss_mode
cross_entropy --ixx_1 5 --ixy_1 0.5 --ixx_2 0 --ixy_2 0`, weights by stage)."""


def expand(preset: str, blocks: int | None) -> dict[str, Any]:
    """`aux.default` of `preset` for a split into `blocks` blocks (None: not known yet)."""
    if preset in ("man", "infopro+man", "man++"):
        return {"kind": "momentum", "learnable_scale": preset == "man++", "head": _MAN_HEAD}
    if preset == "infopro":
        found: dict[str, Any] = {
            "kind": "infopro", "classifier": "1c2f", "feature_dim": 128, "loss": "supcon",
            "temperature": 0.07, "schedule": "index",
        }  # fmt: skip
        if blocks in INFOPRO_LAMBDAS:
            found["lambda1"], found["lambda2"] = INFOPRO_LAMBDAS[blocks]
        return found
    if preset == "dgl":
        return {"kind": "conv", "variant": "mlp-sr"}
    if preset == "dgl+man++":
        return {"kind": "momentum", "head": {"kind": "conv", "variant": "auxdgl"}}
    return {"kind": "augmented" if preset == "auglocal" else "mlaan"}


def expanded(aux: dict[str, Any], partition: object) -> dict[str, Any]:
    """A raw `aux` section with its `preset` expanded into `default` (for the block count the
    raw `partition` gives) and, where the preset sets them, per-block settings into `blocks`:
    every key the section sets itself wins."""
    given = aux.get("default", {})
    if not isinstance(given, dict):
        return aux
    default = merged(expand(aux["preset"], blocks_asked(partition)), given)
    blocks = aux.get("blocks", {})
    per_block = expand_blocks(aux["preset"], partition)
    if per_block and isinstance(blocks, dict):
        base = {k: merged(default, v) for k, v in per_block.items()}
        blocks = {**base, **{k: merged(base.get(k, default), v) for k, v in blocks.items()}}
    return {**aux, "default": default, "blocks": blocks}


def expand_blocks(preset: str, partition: object) -> dict[int, dict[str, Any]]:
    """Per-block settings of `preset` on a raw `partition` section: MLAAN's leap lists when the
    split is its own published one (`paper: {name: mlaan, k: 8}`)."""
    paper = partition.get("paper") if isinstance(partition, dict) else None
    if preset != "mlaan" or not isinstance(paper, dict) or paper.get("name") != "mlaan":
        return {}
    leaps = mlaan_leaps(int(paper.get("k", 0)), int(paper.get("depth", 32)))
    return {k: {"kind": "mlaan", "leap": leap} for k, leap in enumerate(leaps or [])}


def merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `base`, mapping by mapping: every key `given` sets wins."""
    out = dict(base)
    for key, value in given.items():
        inner = out.get(key)
        out[key] = (
            merged(inner, value) if isinstance(inner, dict) and isinstance(value, dict) else value
        )
    return out


def blocks_asked(partition: object) -> int | None:
    """The number of blocks a raw `partition` section asks for, when it says."""
    if not isinstance(partition, dict):
        return None
    cuts, auto, paper = partition.get("cuts"), partition.get("auto"), partition.get("paper")
    if isinstance(cuts, list):
        return len(cuts) + 1
    if isinstance(auto, dict) and isinstance(auto.get("blocks"), int):
        return int(auto["blocks"])
    if isinstance(paper, dict):
        try:
            return (
                len(paper_cuts(paper.get("name", ""), paper.get("k", 0), paper.get("depth", 32)))
                + 1
            )
        except (KeyError, ValueError):
            return None
    return None
