"""Verification of a split on the real model: equivalence, gradient isolation, coverage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from schemas.auxiliary import loss_windows
from splitter.analysis.cuts import CutPoint
from splitter.analysis.outputs import other_outputs, without
from splitter.runtime.root import swapped
from splitter.transform.compare import rel_diff, tree_equal
from splitter.transform.surgery import Block, Surgery, feed

if TYPE_CHECKING:
    from splitter.partitioning.plan import Plan

TRAIN_RTOL = 1e-6


@dataclass(frozen=True)
class BlockCheck:
    """What `verify` found for one block."""

    index: int
    start: str
    end: str
    params: int
    eval_equal: bool
    train_rel_diff: float
    isolated: bool
    input_grad_free: bool
    trained: int
    window: int = 1
    """Blocks its local loss trains, this one and the ones before it (MLAAN's cascade)."""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Verification:
    """The result of `verify`: per block, and for the whole chain."""

    blocks: list[BlockCheck]
    output_equal_eval: bool
    output_rel_diff_train: float
    untrained: list[str] = field(default_factory=list)
    multiply_trained: list[str] = field(default_factory=list)
    model_output_equal_eval: bool | None = None

    @property
    def ok(self) -> bool:
        return (
            all(b.ok for b in self.blocks)
            and self.output_equal_eval
            and self.output_rel_diff_train <= TRAIN_RTOL
            and not self.untrained
            and not self.multiply_trained
            and self.model_output_equal_eval is not False
        )


def verify(
    target: nn.Module,
    graphs: dict[str, fx.GraphModule],
    cuts: Sequence[CutPoint],
    surgery: Surgery,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    whole: tuple[nn.Module, str, Sequence[torch.Tensor]] | None = None,
    seed: int = 0,
    windows: Sequence[int] = (),
    untrained_outputs: frozenset[int | str] = frozenset(),
) -> Verification:
    """Check (a) equivalence in eval and train mode, (b) isolation of every block's local
    backward, (c) that every trainable parameter is trained by exactly one block's own loss, on
    `inputs` (all of them, in order). `whole`: (model, root FQN, its inputs) when a submodule is
    split. `windows[k]` (default 1): how many blocks block k's local loss declares it trains
    (MLAAN's cascade reruns blocks k-w+1..k from the detached input of block k-w+1, so nothing
    outside, nor that input, may get a gradient). `untrained_outputs`: outputs at weight 0."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    spans = [
        max(0, k - (windows[k] if k < len(windows) else 1) + 1) for k in range(len(surgery.blocks))
    ]
    with _restored(target):
        eval_outs, eval_ref, eager_eval = _run_both(
            target, graphs["eval"], cuts, surgery, inputs, "eval", seed
        )
        train_outs, train_ref, eager_train = _run_both(
            target, graphs["train"], cuts, surgery, inputs, "train", seed
        )
        grads = _local_backwards(surgery.blocks, inputs, spans, untrained_outputs)
        trained = _trained(surgery.blocks, inputs, spans, grads, untrained_outputs)
        whole_equal = _whole_model_equal(whole, surgery) if whole else None
    sync = {id(p) for p in _sync_params(surgery)}
    checks = [
        _block_check(
            b,
            eval_outs[k],
            eval_ref[k],
            train_outs[k],
            train_ref[k],
            grads[k],
            trained[k],
            _outside(surgery.blocks, spans[k], k) - sync,
            k - spans[k] + 1,
        )
        for k, b in enumerate(surgery.blocks)
    ]
    untrained, multiple = _coverage(target, surgery.blocks, trained, sync, spans)
    return Verification(
        blocks=checks,
        output_equal_eval=tree_equal(eval_outs[-1], eager_eval),
        output_rel_diff_train=rel_diff(train_outs[-1], eager_train),
        untrained=untrained,
        multiply_trained=multiple,
        model_output_equal_eval=whole_equal,
    )


@contextmanager
def _restored(module: nn.Module) -> Iterator[None]:
    """Undo what the checks do to the model: BatchNorm statistics, gradients, mode."""
    state = {k: v.clone() for k, v in module.state_dict(keep_vars=True).items()}
    training = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in module.state_dict(keep_vars=True).items():
                value.copy_(state[name])
        for m, flag in training:
            m.training = flag
        for p in module.parameters():
            p.grad = None


def _run_both(
    target: nn.Module,
    gm: fx.GraphModule,
    cuts: Sequence[CutPoint],
    surgery: Surgery,
    inputs: Sequence[torch.Tensor],
    mode: str,
    seed: int,
) -> tuple[list[Any], list[Any], Any]:
    """Block outputs, the traced graph's values at the cuts, and the eager model's output,
    each run from the same seed, without gradients."""
    train = mode == "train"
    nodes = [c.node if train else c.eval_node for c in cuts]
    target.train(train)
    for block in surgery.blocks:
        block.train(train)
    with torch.no_grad():
        torch.manual_seed(seed)
        runner = fx.Interpreter(gm, garbage_collect_values=False)
        final = runner.run(*inputs)
        by_name = {n.name: v for n, v in runner.env.items()}
        reference = [by_name[n] for n in nodes] + [final]
        torch.manual_seed(seed)
        eager = target(*inputs)
        torch.manual_seed(seed)
        outs, h = [], inputs[0]
        for block in surgery.blocks:
            h = feed(block, h, inputs)
            outs.append(h)
    return outs, reference, eager


def _trained(
    blocks: Sequence[Block],
    inputs: Sequence[torch.Tensor],
    spans: Sequence[int],
    grads: list[dict[int, float]],
    left_out: frozenset[int | str],
) -> list[dict[int, float]]:
    """The gradients that train: the train-mode pass's, and where it left a parameter's gradient
    at zero, the larger of it and an eval-mode pass's with every all-zero parameter nudged off
    zero. A random draw (dropout, stochastic depth) or a layer that starts at zero (a
    zero-initialised classifier) zeroes gradients that training gives; a loss that never
    reaches a parameter with a nonzero value (a zero weight, a dead branch) stays at zero."""
    own = [{id(p) for p in b.parameters()} for b in blocks]
    if all(g.get(pid, 0.0) > 0 for g, ids in zip(grads, own, strict=True) for pid in ids):
        return grads
    with _nudged([p for b in blocks for p in b.parameters()]):
        calm = _local_backwards(blocks, inputs, spans, left_out, train=False)
    return [
        {pid: max(a.get(pid, 0.0), b.get(pid, 0.0)) for pid in a.keys() | b.keys()}
        for a, b in zip(grads, calm, strict=True)
    ]


@contextmanager
def _nudged(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Give every all-zero parameter small random values for the duration."""
    zero = [p for p in params if p.numel() and not bool(p.detach().any())]
    try:
        with torch.no_grad():
            for p in zero:
                p.normal_(0.0, 1e-2)
        yield
    finally:
        with torch.no_grad():
            for p in zero:
                p.zero_()


def _local_backwards(
    blocks: Sequence[Block],
    inputs: Sequence[torch.Tensor],
    spans: Sequence[int],
    left_out: frozenset[int | str] = frozenset(),
    train: bool = True,
) -> list[dict[int, float]]:
    """For each block k, in the trainer's protocol (blocks spans[k]..k run from the detached
    input of block spans[k]), the parameters of every block its local loss reached, each with
    its gradient's largest magnitude (key -1: the output before the window)."""
    params = [p for b in blocks for p in b.parameters()]
    for block in blocks:
        block.train(train)
    attached, h = [], inputs[0]
    for block in blocks[:-1]:
        h = feed(block, h, inputs)
        if h.requires_grad:
            h.retain_grad()
        attached.append(h)
    results = []
    for k, block in enumerate(blocks):
        for t in (*params, *attached):
            t.grad = None
        first = spans[k]
        h = inputs[0] if first == 0 else attached[first - 1].detach()
        for earlier in blocks[first:k]:
            h = feed(earlier, h, inputs)
        out = feed(block, h, inputs)
        loss = _surrogate_loss(without(out, left_out) if k == len(blocks) - 1 else out)
        if loss.requires_grad:  # a block without parameters has nothing to train
            torch.autograd.backward(loss)
        got = {id(p): float(p.grad.abs().max()) for p in params if p.grad is not None}
        if first > 0 and attached[first - 1].grad is not None:
            got[-1] = float(attached[first - 1].grad.abs().max())
        results.append(got)
    for p in params:
        p.grad = None
    return results


def _surrogate_loss(out: Any) -> torch.Tensor:
    leaves = [
        t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    return sum((t.float().square().mean() for t in leaves), torch.zeros(()))


def _block_check(
    block: Block,
    eval_out: Any,
    eval_ref: Any,
    train_out: Any,
    train_ref: Any,
    grads: dict[int, float],
    trains: dict[int, float],
    others: set[int],
    window: int,
) -> BlockCheck:
    """`others`: parameters (not synced) that this block's local loss must not reach (even
    with a zero gradient); a parameter is trained only by a nonzero gradient."""
    leaked = [pid for pid in others if pid in grads]
    trained = sum(1 for p in block.parameters() if trains.get(id(p), 0.0) > 0)
    check = BlockCheck(
        index=block.index,
        start=block.start,
        end=block.end,
        params=sum(p.numel() for p in block.parameters()),
        eval_equal=tree_equal(eval_out, eval_ref),
        train_rel_diff=rel_diff(train_out, train_ref),
        isolated=not leaked,
        input_grad_free=-1 not in grads,
        trained=trained,
        window=window,
    )
    return _with_problems(check, len(leaked))


def _outside(blocks: Sequence[Block], first: int, last: int) -> set[int]:
    """Parameters of the blocks outside first..last."""
    return {id(p) for k, b in enumerate(blocks) if not first <= k <= last for p in b.parameters()}


def _with_problems(check: BlockCheck, leaked: int) -> BlockCheck:
    problems = []
    if not check.eval_equal:
        problems.append("eval-mode output differs from the original")
    if check.train_rel_diff > TRAIN_RTOL:
        problems.append(f"train-mode output differs by {check.train_rel_diff:.2e} (relative)")
    if not check.isolated:
        where = (
            "other blocks" if check.window == 1 else f"blocks outside its window of {check.window}"
        )
        problems.append(f"its local backward reached {leaked} parameters of {where}")
    if not check.input_grad_free:
        problems.append("its local backward reached the output it takes as input")
    return BlockCheck(**{**check.__dict__, "problems": tuple(problems)})


def _coverage(
    target: nn.Module,
    blocks: Sequence[Block],
    grads: list[dict[int, float]],
    sync: set[int],
    spans: Sequence[int],
) -> tuple[list[str], list[str]]:
    """Parameters no block's own loss trains (sends a nonzero gradient), and those more than one
    loss trains beyond a declared window (a block's parameters also trained by a later block's
    cascade are fine)."""
    names = {id(p): n for n, p in target.named_parameters()}
    untrained, multiple = [], []
    for k, block in enumerate(blocks):
        for name, p in block.named_parameters():
            if not p.requires_grad:
                continue
            label = names.get(id(p), f"{name} (block {k}'s copy)")
            count = sum(
                1 for j, g in enumerate(grads) if g.get(id(p), 0.0) > 0 and not spans[j] <= k < j
            )
            if count == 0:
                untrained.append(label)
            elif count > 1 and id(p) not in sync:
                multiple.append(label)
    covered = {id(p) for b in blocks for p in b.parameters()}
    untrained += [
        f"{n} (not used by the forward)"
        for n, p in target.named_parameters()
        if p.requires_grad and id(p) not in covered
    ]
    return sorted(set(untrained)), sorted(set(multiple))


def _sync_params(surgery: Surgery) -> list[torch.Tensor]:
    shared_names = {n for s in surgery.shared if s.policy == "sync" for n in s.names}
    return [p for b in surgery.blocks for n, p in b.named_parameters() if n in shared_names]


def _whole_model_equal(
    whole: tuple[nn.Module, str, Sequence[torch.Tensor]], surgery: Surgery
) -> bool:
    model, root, inputs = whole
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            original = model(*inputs)
            with swapped(model, root, surgery.chain().eval()):
                chained = model(*inputs)
    finally:
        model.train(training)
    return tree_equal(chained, original)


def verify_plan(plan: Plan, batch_size: int = 2, seed: int = 0) -> Verification:
    """`verify` on a plan's blocks, with real inputs of `batch_size` samples."""
    analysis = plan.analysis
    torch.manual_seed(seed)
    inputs = [i.batch(batch_size) for i in analysis.target_inputs]
    whole = None
    if analysis.root:
        model_inputs = [i.batch(batch_size) for i in analysis.model.inputs]
        whole = (analysis.model.module, analysis.root, model_inputs)
    graphs = {"train": analysis.traced.graph("train"), "eval": analysis.traced.graph("eval")}
    return verify(
        analysis.target,
        graphs,
        plan.cuts,
        plan.surgery,
        inputs,
        whole=whole,
        seed=seed,
        windows=loss_windows([plan.spec.spec.aux.of(k) for k in range(len(plan.cuts))]),
        untrained_outputs=frozenset(
            o.key
            for o in other_outputs(analysis.traced.graph("train"), plan.spec.spec)
            if o.weight == 0 and not analysis.root
        ),
    )
