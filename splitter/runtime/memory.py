"""The peak memory of training: the CUDA allocator's, or on CPU the bytes autograd saves, the
bytes of live tensors, and the resident memory; and the allocator setting that makes resident
memory follow the tensors on Linux."""

from __future__ import annotations

import ctypes
import re
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


class PeakMemory:
    """The peak memory of training. CUDA: the allocator's peak. CPU: the most bytes autograd
    held for backward at once (tensors saved since the last backward, de-duplicated by
    storage, parameters left out), counted with saved-tensor hooks."""

    UNSEEN = "unmeasured_under_checkpoint"
    """The CPU method under `--checkpoint`, whose saved-tensor hooks take every block's saves:
    the tensor-level peak (`LiveTensors`) is the figure to read then."""
    PARTIAL = "saved_tensor_bytes_outside_recomputation"
    """The CPU method when parts of the step recompute their activations in the backward (the
    momentum auxiliaries' EMA copies): their saves exist only then and are not counted."""

    def __init__(
        self,
        device: torch.device,
        params: Sequence[torch.Tensor],
        seen: Literal["all", "partly", "none"] = "all",
    ) -> None:
        self.cuda = device.type == "cuda"
        methods = {"all": "saved_tensor_bytes", "partly": self.PARTIAL, "none": self.UNSEEN}
        self.method = "cuda_max_memory_allocated" if self.cuda else methods[seen]
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.held: dict[int, int] = {}
        self.total = self.peak_bytes = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.held and key not in self.params:
            self.held[key] = storage.nbytes()
            self.total += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.total)
        return t

    @contextmanager
    def watch(self) -> Iterator[None]:
        if self.cuda:
            yield
            return
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield

    def release(self) -> None:
        """A backward ran: what it saved is freed."""
        self.held.clear()
        self.total = 0

    def peak(self, device: torch.device) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(device)
        return None if self.method == self.UNSEEN else self.peak_bytes


class Usage:
    """Every memory figure of a run: autograd's saved bytes (`PeakMemory`), the tensor-level
    peak (CUDA: the allocator's; CPU: `LiveTensors` over the first `TRACKED_STEPS` steps,
    unless `live` is off, e.g. under torch.compile) and the resident-memory peak since the run
    began (Linux)."""

    TRACKED_STEPS = 3
    """Steps the CPU tracker watches: the peak is reached once the optimizers hold their state
    (the first step); later steps repeat it and run without the tracker's per-operator cost."""

    def __init__(
        self,
        device: torch.device,
        tracked: Sequence[torch.Tensor],
        live: bool = True,
        seen: Literal["all", "partly", "none"] = "all",
    ) -> None:
        self.device = device
        self.saved = PeakMemory(device, tracked, seen)
        self.live = LiveTensors() if live and device.type == "cpu" else None
        self.steps = 0
        if self.live is not None:
            self.live.track(tracked)
        reset_peak_rss()

    @contextmanager
    def step(
        self, batch: Sequence[torch.Tensor], optimizers: Sequence[torch.optim.Optimizer]
    ) -> Iterator[None]:
        """Count the live tensors of one training step: the batch, the optimizers' state (which
        a resumed run loaded before any step) and every tensor the step makes."""
        self.steps += 1
        if self.live is None or self.steps > self.TRACKED_STEPS:
            yield
            return
        with self.live:
            self.live.track(batch)
            self.live.track(
                value
                for optimizer in optimizers
                for state in optimizer.state.values()
                for value in state.values()
                if isinstance(value, torch.Tensor)
            )
            yield

    def figures(self) -> dict[str, Any]:
        """The metrics.json fields."""
        cuda = self.device.type == "cuda"
        tensor_peak = (
            torch.cuda.max_memory_allocated(self.device)
            if cuda
            else (self.live.peak_bytes if self.live else None)
        )
        method = (
            "cuda_max_memory_allocated" if cuda else ("live_tensor_bytes" if self.live else None)
        )
        return {
            "peak_memory_bytes": self.saved.peak(self.device),
            "peak_memory_method": self.saved.method,
            "peak_tensor_bytes": tensor_peak,
            "peak_tensor_method": method,
            "peak_rss_bytes": peak_rss_bytes(),
        }


class LiveTensors(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Bytes of live tensor storages (CPU): every storage an operator returns while the mode
    is active, and those `track` is given, counted until Python frees it. Parameters,
    gradients, optimizer state, activations and temporaries all count; `peak_bytes` is the
    most live at once. The counts persist across activations of the mode."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = self.peak_bytes = 0

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu" or t.layout != torch.strided:  # sparse, mkldnn: no storage
            return
        storage = t.untyped_storage()
        if storage in self.seen:
            return
        size = storage.nbytes()
        self.seen[storage] = size
        weakref.finalize(storage, self._free, size)
        self.live += size
        self.peak_bytes = max(self.peak_bytes, self.live)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(  # type: ignore[no-untyped-def]
        self, func, types, args=(), kwargs=None
    ):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def reset_peak_rss() -> None:
    """Start the resident-memory peak afresh (Linux 4.0+), so a run in a process that ran
    others reports its own peak."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory (Linux `VmHWM`), or None where it is unknown."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.M)
    return int(found.group(1)) * 1024 if found else None


class Allocator:
    """How the C allocator hands freed tensor memory back to the system (glibc, Linux).

    glibc serves a large block with mmap only until the first such block is freed; then it
    raises its threshold (up to 32 MiB) and serves later blocks from its heap, keeping what is
    freed there for reuse. Resident memory then stays near the largest step's, whatever local
    training frees between blocks. `trim` (the default) calls `malloc_trim(0)` after each
    block's step, so the pages each block freed go back before the next block runs; `mmap`
    fixes the threshold at 1 MiB so every large tensor has its own mapping, returned the moment
    it is freed (the lowest resident memory, but every allocation faults its pages in again:
    much slower on CPU); `default` leaves glibc as it is."""

    CHOICES = ("trim", "mmap", "default")

    def __init__(self, mode: str, device: torch.device) -> None:
        self.libc = _glibc() if device.type == "cpu" else None  # tensors on the host only
        self.mode = mode if self.libc is not None else "default"
        if self.mode == "mmap" and self.libc is not None:
            # For the rest of the process: glibc has no way back to its dynamic threshold.
            self.libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)

    def release(self) -> None:
        """A block's step is done: with `trim`, return the heap's free pages to the system."""
        if self.mode == "trim" and self.libc is not None:
            self.libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  # musl and others lack them
    except (OSError, AttributeError):
        return None
    return libc
