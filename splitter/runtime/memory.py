"""The peak memory of training: the CUDA allocator's, or the bytes autograd saves on CPU."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class PeakMemory:
    """The peak memory of training. CUDA: the allocator's peak. CPU: the most bytes autograd
    held for backward at once (tensors saved since the last backward, de-duplicated by
    storage, parameters left out), counted with saved-tensor hooks."""

    def __init__(self, device: torch.device, params: Sequence[torch.Tensor]) -> None:
        self.cuda = device.type == "cuda"
        self.method = "cuda_max_memory_allocated" if self.cuda else "saved_tensor_bytes"
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

    def peak(self, device: torch.device) -> int:
        return torch.cuda.max_memory_allocated(device) if self.cuda else self.peak_bytes
