"""Shared parameters that train: a tied-weight decoder compiled with each `shared_params` policy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import Killed, stopped_at_a_checkpoint

MODEL = '''
import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.relu(self.fc(self.norm(x)))


class Decoder(nn.Module):
    """Token embedding and classifier tied, as GPT-style decoders tie them."""

    def __init__(self, vocab=16, dim=24, depth=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Mlp(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        x = self.wte(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x).mean(1))


def build_model():
    return Decoder()
'''
STEPS = ["--data", "synthetic", "--steps", "3", "--batch-size", "8", "--eval-batches", "1"]


def compiled(tmp_path: Path, policy: str) -> Path:
    (tmp_path / "decoder.py").write_text(MODEL)
    scope = "global" if policy == "sync" else "block"
    (tmp_path / "spec.yaml").write_text(
        "version: 1\n"
        f"partition: {{cuts: [blocks.1, blocks.3], shared_params: {policy}}}\n"
        "aux: {default: {kind: linear}}\n"
        f"training: {{optimizer_scope: {scope}}}\n"
    )
    out = tmp_path / "pkg"
    options = ModelOptions(input_shape=(6,), input_dtype="int64", batch_size=2)
    compile_package(
        str(tmp_path / "decoder.py"), str(tmp_path / "spec.yaml"), options, out=str(out)
    )
    return out


@contextmanager
def prepared(tmp_path: Path, policy: str) -> Iterator[tuple[ModuleType, Any]]:
    """The package compiled with `policy`, and a step ready to run on synthetic batches of 8."""
    with load_package(compiled(tmp_path, policy)) as train:
        step, _ = train.prepare(train.parse_args(["--data", "synthetic", "--batch-size", "8"]))
        yield train, step


def trained(train: ModuleType, tmp_path: Path) -> dict[str, torch.Tensor]:
    export = tmp_path / "w.pt"
    train.train([*STEPS, "--out", str(tmp_path / "run"), "--export", str(export)])
    return torch.load(export, weights_only=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("policy", ["sync", "owner", "replicate"])
def test_a_tied_decoder_trains_and_exports_with_the_tie(policy: str, tmp_path: Path) -> None:
    out = compiled(tmp_path, policy)
    with load_package(out) as train:
        initial = train.build(0).model.wte.weight.detach().clone()
        state = trained(train, tmp_path)
        original = train.model_file.build_model()
    original.load_state_dict(state)
    assert original.lm_head.weight is original.wte.weight
    assert not torch.equal(state["wte.weight"], initial)  # the owner (block 0) trained it
    assert torch.equal(state["wte.weight"], state["lm_head.weight"])


def test_sync_sums_the_gradients_of_every_block_that_uses_it(tmp_path: Path) -> None:
    """One local step under the global optimizer: at the update, the shared tensor's
    gradient is block 0's local-loss gradient plus block 2's task-loss gradient."""
    with prepared(tmp_path, "sync") as (train, step):
        blocks, auxiliaries = step.parts.blocks, step.parts.auxiliaries
        shared = blocks[0].wte.weight
        assert shared is blocks[2].lm_head.weight and len(step.optimizers) == 1
        x, y = next(step.dataset.train_batches(0, 8, 0))
        expected = torch.zeros_like(shared)
        for k in (0, 2):
            h = x
            for block in blocks[:k]:
                h = block(h).detach()
            out_k = blocks[k](h)
            loss = auxiliaries[k](out_k, y, x)[0] if k < 2 else F.cross_entropy(out_k, y)
            (grad,) = torch.autograd.grad(loss, shared)
            expected += grad
        seen = []
        update = step.optimizers[0].step
        step.optimizers[0].step = lambda *a, **k: (seen.append(shared.grad.clone()), update())
        train.local_step(step, x, y)
    torch.testing.assert_close(seen[0], expected, rtol=1e-6, atol=1e-7)


def test_owner_trains_it_in_its_block_and_later_blocks_read_it(tmp_path: Path) -> None:
    with prepared(tmp_path, "owner") as (train, step):
        first, last = step.parts.blocks[0], step.parts.blocks[-1]
        assert "lm_head.weight" not in dict(last.named_parameters())
        assert last.lm_head.weight.data_ptr() == first.wte.weight.data_ptr()
        owned = {id(p) for o in step.optimizers for g in o.param_groups for p in g["params"]}
        assert id(first.wte.weight) in owned
        x, y = next(step.dataset.train_batches(0, 8, 0))
        train.local_step(step, x, y)
        assert torch.equal(last.lm_head.weight, first.wte.weight)


def test_replicate_gives_later_blocks_their_own_copy(tmp_path: Path) -> None:
    with prepared(tmp_path, "replicate") as (train, step):
        first, last = step.parts.blocks[0], step.parts.blocks[-1]
        copy = dict(last.named_parameters())["lm_head.weight"]
        assert copy is not first.wte.weight and torch.equal(copy, first.wte.weight)
        x, y = next(step.dataset.train_batches(0, 8, 0))
        train.local_step(step, x, y)
        assert not torch.equal(copy, first.wte.weight)  # each trained by its own block
        assert step.parts.model.lm_head.weight is step.parts.model.wte.weight


def test_a_resumed_run_keeps_the_replicas_it_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicate copy is saved with the checkpoint: a run stopped at step 3 and resumed
    ends at the uninterrupted run's weights."""
    out = compiled(tmp_path, "replicate")
    steps = [*STEPS[:3], "5", *STEPS[4:]]
    with load_package(out) as train:
        train.train([*steps, "--out", str(tmp_path / "whole"), "--export", str(tmp_path / "a.pt")])
        split = ["--out", str(tmp_path / "split"), "--save-every", "3"]
        with stopped_at_a_checkpoint(train, monkeypatch), pytest.raises(Killed, match="3"):
            train.train([*steps, *split])
        train.train([*steps, *split, "--resume", "--export", str(tmp_path / "b.pt")])
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_owner_and_sync_need_their_blocks_on_one_device(tmp_path: Path) -> None:
    out = compiled(tmp_path, "owner")
    with load_package(out) as train:
        args = train.parse_args(["--data", "synthetic", "--device", "cpu", "cpu"])
        with pytest.raises(train.ConfigError, match=r"share `wte.weight`.*replicate"):
            train.prepare(args)
