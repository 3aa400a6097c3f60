"""Training recipes: each paper's CIFAR training settings by name (`training.recipe`)."""

from __future__ import annotations

from typing import Any, Literal

Recipe = Literal[
    "default", "man-cifar", "infopro-cifar", "dgl-cifar", "auglocal-cifar", "mlaan-cifar"
]
_PAPERS_CIFAR: dict[str, Any] = {
    "optimizer": {
        "name": "sgd",
        "lr": 0.8,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
    },
    "optimizer_scope": "global",
    "schedule": {"name": "cosine", "warmup_epochs": 10, "warmup_start_lr": 0.01},
    "epochs": 400,
    "batch_size": 1024,
    "data": {"padding": "reflect", "flip": True},
}
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "man-cifar": _PAPERS_CIFAR,
    "auglocal-cifar": _PAPERS_CIFAR,
    "mlaan-cifar": _PAPERS_CIFAR,
    "infopro-cifar": {**_PAPERS_CIFAR, "epochs": 160},
    "dgl-cifar": {
        "optimizer": {
            "name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4
        },
        "optimizer_scope": "block",
        "schedule": {"name": "step", "warmup_epochs": 0, "step_size": 15, "gamma": 0.2},
        "epochs": 50,
        "batch_size": 128,
        "data": {"padding": "zero", "flip": True},
    },
}  # fmt: skip
"""The training settings of each paper's CIFAR code (`training_configurations` of InfoPro's,
MAN's, MAN++'s, AugLocal's and MLAAN's `train.py`; DGL's `cifar_dgl.py`)."""


def describe(training: dict[str, Any]) -> str:
    """A resolved `training` section (`TrainingSection.model_dump()`) in a sentence: the recipe's
    name and the settings in force."""
    o, sc, d = training["optimizer"], training["schedule"], training["data"]
    if o["name"] == "sgd":
        nesterov = ", Nesterov" if o["nesterov"] else ""
        opt = f"SGD lr {o['lr']:g}, momentum {o['momentum']:g}{nesterov}"
    else:
        opt = f"AdamW lr {o['lr']:g}, betas {o['betas'][0]:g}/{o['betas'][1]:g}"
    warm = ""
    if sc["warmup_epochs"]:
        start = f" from {sc['warmup_start_lr']:g}" if sc["warmup_start_lr"] else ""
        warm = f"{sc['warmup_epochs']}-epoch linear warm-up{start}, then "
    shape = {
        "cosine": "cosine annealing",
        "step": f"x{sc['gamma']:g} every {sc['step_size']} epochs",
        "constant": "a constant rate",
    }[sc["name"]]
    per_block = training["optimizer_scope"] != "global"
    scope = "one optimizer per block" if per_block else "one optimizer"
    flip = " and flips" if d["flip"] else ""
    return (
        f"`{training['recipe']}` ({opt}, weight decay {o['weight_decay']:g}, batch "
        f"{training['batch_size']}, {training['epochs']} epochs, {warm}{shape}, {scope}; "
        f"{d['padding']}-padded crops{flip} for CIFAR, SVHN and STL-10)"
    )
