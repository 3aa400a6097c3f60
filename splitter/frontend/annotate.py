"""Per-node costs under FakeTensorMode: shapes, saved-activation bytes, parameters, FLOPs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from splitter.errors import AnnotationError
from splitter.frontend.inputs import InputSpec
from splitter.frontend.modelref import Precision

META_KEY = "splitter"
# Under bf16/fp16 the graph runs in that dtype: autocast keeps most activations in half
# precision. CUDA's autocast policy cannot run without a GPU, so this is the estimate.
HALF_DTYPES: dict[Precision, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class NodeCost:
    """What one node costs. Saved bytes are attributed to the node that first saves a storage."""

    shape: tuple[int, ...] | None
    dtype: str | None
    saved_bytes: int
    saved_param_bytes: int
    params: int
    param_bytes: int
    buffer_bytes: int
    flops: int
    measured: bool
    storage: int = 0
    """An id of the output's storage (0 when the output is not a tensor)."""
    out_bytes: int = 0
    """Bytes of the output's storage."""
    saves: tuple[int, ...] = ()
    """Ids of every activation storage this node saves, first saved here or not."""


def node_cost(node: fx.Node) -> NodeCost:
    """The cost `annotate` wrote on `node`."""
    cost = node.meta.get(META_KEY)
    if not isinstance(cost, NodeCost):
        raise KeyError(f"node `{node.name}` is not annotated; run splitter.frontend.annotate first")
    return cost


def annotate(
    gm: fx.GraphModule,
    inputs: InputSpec | Sequence[InputSpec],
    batch_size: int,
    precision: Precision = "fp32",
) -> int:
    """Run `gm` once on fake tensors, writing a `NodeCost` into every node's meta; return the
    total saved-activation bytes (parameters and buffers not counted)."""
    usage = _state_usage(gm)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    dtype = HALF_DTYPES.get(precision)
    real_state = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    fake_state = {name: _fake(fake_mode, t, dtype) for name, t in real_state.items()}
    state_keys = {_storage_key(t) for t in [*real_state.values(), *fake_state.values()]}
    runner = _CostInterpreter(gm, usage, state_keys, real_state)
    specs = [inputs] if isinstance(inputs, InputSpec) else list(inputs)
    dtypes = [dtype if dtype and i.dtype.is_floating_point else i.dtype for i in specs]
    with ExitStack() as stack:
        stack.enter_context(_quiet_fake_tensor_log())
        stack.enter_context(fake_mode)
        stack.enter_context(_reparametrize_module(gm, fake_state))
        stack.enter_context(runner.flops)
        runner.run(
            *(
                torch.empty((batch_size, *i.shape), dtype=d)
                for i, d in zip(specs, dtypes, strict=True)
            )
        )
        runner.release()
    return sum(node_cost(n).saved_bytes for n in gm.graph.nodes)


@contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    # A failing meta kernel is logged before the exception we report (or fall back from).
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fake(mode: FakeTensorMode, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    fake = mode.from_tensor(t)
    if dtype is None or not t.is_floating_point():
        return fake
    with mode:
        half = fake.detach().to(dtype)
    return nn.Parameter(half, t.requires_grad) if isinstance(t, nn.Parameter) else half


def _storage_key(t: torch.Tensor) -> int:
    # id() of untyped_storage() is a fresh Python object per call under fake tensors; the C
    # pointer of the storage is stable while the tensor lives.
    return int(t.untyped_storage()._cdata)


def _state_usage(gm: fx.GraphModule) -> dict[fx.Node, tuple[int, int, int]]:
    """Per node: (parameter count, parameter bytes, buffer bytes) of state it first touches."""
    seen: set[int] = set()
    usage: dict[fx.Node, tuple[int, int, int]] = {}
    for node in gm.graph.nodes:
        params, buffers = _state_of(gm, node)
        new_p = [p for p in params if id(p) not in seen]
        new_b = [b for b in buffers if id(b) not in seen]
        seen.update(id(t) for t in [*new_p, *new_b])
        usage[node] = (
            sum(p.numel() for p in new_p),
            sum(p.numel() * p.element_size() for p in new_p),
            sum(b.numel() * b.element_size() for b in new_b),
        )
    return usage


def _state_of(gm: fx.GraphModule, node: fx.Node) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return list(module.parameters()), list(module.buffers())
    if node.op == "get_attr":
        value = _get_attr(gm, str(node.target))
        if isinstance(value, nn.Parameter):
            return [value], []
        if isinstance(value, torch.Tensor):
            return [], [value]
    return [], []


def _get_attr(gm: nn.Module, target: str) -> object:
    value: object = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


class _SavedBytes:
    """The pack hook: counts each storage autograd saves once, parameters and buffers apart.
    It holds no reference to the model: autograd keeps hooks alive from C++, out of reach of
    Python's cycle collector, so anything the hook refers to could outlive the run."""

    def __init__(self, state_keys: set[int]) -> None:
        self.state_keys = state_keys
        self.seen: set[int] = set()
        self.held: list[torch.Tensor] = []  # keeps saved storages alive so keys stay unique
        self.counts = {"act": 0, "param": 0}
        self.saves: list[int] = []

    def start(self) -> dict[str, int]:
        self.counts = {"act": 0, "param": 0}
        self.saves = []
        return self.counts

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.state_keys and key not in self.saves:
            self.saves.append(key)
        if key not in self.seen:
            self.seen.add(key)
            self.held.append(t)
            kind = "param" if key in self.state_keys else "act"
            self.counts[kind] += t.untyped_storage().nbytes()
        return t


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


class _CostInterpreter(fx.Interpreter):
    """Runs each node under saved-tensor hooks and a FLOP counter, writing `NodeCost`s."""

    def __init__(
        self,
        gm: fx.GraphModule,
        usage: dict[fx.Node, tuple[int, int, int]],
        state_keys: set[int],
        real_state: dict[str, torch.Tensor],
    ) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our errors already name the node
        self.usage = usage
        self.real_state = real_state
        self.flops = FlopCounterMode(display=False)
        self.saved = _SavedBytes(state_keys)

    def run_node(self, n: fx.Node) -> Any:
        flops_before = self.flops.get_total_flops()
        measured = False
        counts = self.saved.start()
        with torch.autograd.graph.saved_tensors_hooks(self.saved.pack, _unpack):
            try:
                out = super().run_node(n)
            except Exception as fake_error:
                out = self._run_real(n, fake_error)
                measured = True
        params, param_bytes, buffer_bytes = self.usage[n]
        tensor = isinstance(out, torch.Tensor)
        if tensor:
            self.saved.held.append(out)  # keeps its storage id unique until the run ends
        n.meta[META_KEY] = NodeCost(
            shape=tuple(out.shape) if tensor else None,
            dtype=str(out.dtype).removeprefix("torch.") if tensor else None,
            saved_bytes=counts["act"],
            saved_param_bytes=counts["param"],
            params=params,
            param_bytes=param_bytes,
            buffer_bytes=buffer_bytes,
            flops=self.flops.get_total_flops() - flops_before,
            measured=measured,
            storage=_storage_key(out) if tensor else 0,
            out_bytes=out.untyped_storage().nbytes() if tensor else 0,
            saves=tuple(self.saved.saves),
        )
        return out

    def release(self) -> None:
        """Drop the fake autograd graph and what it saved once the costs are written."""
        self.saved.held.clear()
        self.env.clear()

    def _run_real(self, n: fx.Node, fake_error: Exception) -> Any:
        """Fallback for code that cannot run on fake tensors (data-dependent control flow):
        run this node alone on real random tensors of the recorded shapes."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        with unset_fake_temporarily():
            real_args, real_kwargs = pytree.tree_map(_materialize, (args, kwargs))
            try:
                out = self._call_real(n, real_args, real_kwargs)
            except Exception as real_error:
                raise _annotation_error(n, real_error) from fake_error
            self.saved.state_keys.update(_storage_key(t) for t in self.real_state.values())
        mode = _fake_mode_of(args) or FakeTensorMode(allow_non_fake_inputs=True)
        return pytree.tree_map(lambda v: self._to_fake(mode, v), out)

    def _to_fake(self, mode: FakeTensorMode, value: object) -> object:
        """A fake twin of a real output; a storage already saved stays counted once."""
        if not isinstance(value, torch.Tensor):
            return value
        fake = mode.from_tensor(value.detach())
        if value.is_floating_point():
            fake.requires_grad_(value.requires_grad)
        if _storage_key(value) in self.saved.seen:
            self.saved.seen.add(_storage_key(fake))
            self.saved.held.append(fake)
        return fake

    def _call_real(self, n: fx.Node, args: Any, kwargs: Any) -> Any:
        if n.op != "call_module":
            return getattr(self, n.op)(n.target, args, kwargs)
        prefix = f"{n.target}."
        state = {k[len(prefix) :]: v for k, v in self.real_state.items() if k.startswith(prefix)}
        module = self.module.get_submodule(str(n.target))
        return torch.func.functional_call(module, state, args, kwargs)


def _materialize(value: object) -> object:
    if not isinstance(value, torch.Tensor):
        return value
    if value.dtype.is_floating_point:
        real = torch.randn(value.shape, dtype=value.dtype)
        return real.requires_grad_(value.requires_grad)
    return torch.zeros(value.shape, dtype=value.dtype)


def _fake_mode_of(args: object) -> FakeTensorMode | None:
    for leaf in pytree.tree_leaves(args):
        mode = getattr(leaf, "fake_mode", None)
        if isinstance(mode, FakeTensorMode):
            return mode
    return None


def _annotation_error(n: fx.Node, error: Exception) -> AnnotationError:
    where = f"module `{n.target}`" if n.op == "call_module" else f"`{n.format_node()}`"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return AnnotationError(
        f"running the model failed at node `{n.name}` ({where}): {type(error).__name__}: "
        f"{first}; check that --input-shape and --input-dtype give one sample of what the model "
        "expects (without the batch dimension)"
    )


def measure_saved_bytes(module: nn.Module, *args: torch.Tensor) -> int:
    """Ground truth for `annotate`: the bytes autograd saves on a real forward of `module`,
    counted with the same hooks, de-duplicated by storage, parameters and buffers left out."""
    state = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*args)
    del out
    return sum(n for ptr, n in seen.items() if ptr not in state)


def output_shape(graph: fx.Graph) -> tuple[int, ...] | None:
    """The shape of the graph's (first) output, looking through tuples, dicts and structures
    built from their elements (a namedtuple)."""
    pending: list[object] = [list(graph.nodes)[-1].args[0]]
    while pending:
        value = pending.pop(0)
        if isinstance(value, fx.Node):
            shape = node_cost(value).shape
            if shape is not None:
                return shape
            pending[:0] = list(value.args)
        elif isinstance(value, (tuple, list)):
            pending[:0] = list(value)
        elif isinstance(value, dict):
            pending[:0] = list(value.values())
    return None
