"""Runtime memory figures: live tensor bytes counted exactly, the resident-memory peak, and the
allocator setting that hands freed tensor memory back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from splitter.runtime.memory import LiveTensors, Usage, peak_rss_bytes

MIB = 2**20


def test_live_tensors_count_storages_once_until_freed() -> None:
    live = LiveTensors()
    with live:
        a = torch.ones(MIB // 4)  # 1 MiB
        b = a * 2
        view = b.view(-1, 2)  # shares b's storage
        assert live.live == 2 * MIB
        del b
        assert live.live == 2 * MIB  # the view keeps the storage
        del view
        assert live.live == MIB
    c = torch.ones(MIB // 4)  # made outside the mode: not counted
    assert live.live == MIB and live.peak_bytes == 2 * MIB
    with live:
        live.track([c, c])
        assert live.live == 2 * MIB
    del a, c
    assert live.live == 0


def test_live_tensors_see_backward_and_optimizer_state() -> None:
    layer = torch.nn.Linear(256, 256)  # 257 KiB of parameters
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    live = LiveTensors()
    live.track(layer.parameters())
    params = sum(p.numel() * 4 for p in layer.parameters())
    with live:
        x = torch.randn(64, 256)
        layer(x).square().mean().backward()
        optimizer.step()
    # parameters, their gradients and momentum buffers, and the input
    assert live.live == 3 * params + x.numel() * 4
    assert live.peak_bytes >= live.live


def test_usage_reports_every_figure_on_cpu() -> None:
    layer = torch.nn.Linear(8, 8)
    usage = Usage(torch.device("cpu"), list(layer.parameters()))
    x = torch.randn(4, 8)
    with usage.step([x], []), usage.saved.watch():
        layer(x).sum().backward()
    figures = usage.figures()
    assert figures["peak_memory_method"] == "saved_tensor_bytes"
    assert figures["peak_tensor_method"] == "live_tensor_bytes"
    assert figures["peak_tensor_bytes"] >= 2 * (8 * 8 + 8) * 4 + x.numel() * 4
    assert 0 < figures["peak_rss_bytes"] <= peak_rss_bytes()
    assert Usage(torch.device("cpu"), [], live=False).figures()["peak_tensor_bytes"] is None


FRAGMENT = textwrap.dedent(
    """
    import re, sys
    import torch
    sys.path.insert(0, {runtime!r})
    from memory import Allocator

    def rss():
        status = open("/proc/self/status").read()
        return int(re.search(r"VmRSS:\\s+(\\d+) kB", status).group(1)) * 1024

    allocator = Allocator(sys.argv[1], torch.device("cpu"))
    assert allocator.mode == sys.argv[1]
    big = torch.ones(8 * 2**20 // 4)  # glibc: freeing an mmapped 8 MiB block raises the
    del big                            # threshold, so later blocks come from the heap
    before = rss()
    blocks = [torch.ones(4 * 2**20 // 4) for _ in range(64)]  # 256 MiB
    del blocks[:-1]  # the last keeps the heap's top in use: glibc cannot shrink the heap
    allocator.release()
    print(rss() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensor_memory_goes_back_to_the_system() -> None:
    from splitter.runtime import memory

    code = FRAGMENT.format(runtime=str(memory.__file__).rsplit("/", 1)[0])
    kept = {
        mode: int(subprocess.check_output([sys.executable, "-c", code, mode]))
        for mode in ("default", "trim", "mmap")
    }
    assert kept["default"] > 200 * MIB  # glibc's default keeps what was freed
    assert kept["trim"] < 16 * MIB and kept["mmap"] < 16 * MIB


def test_tracker_skips_tensors_without_storage_and_watches_the_first_steps() -> None:
    usage = Usage(torch.device("cpu"), [])
    assert usage.live is not None
    for step in range(1, Usage.TRACKED_STEPS + 2):
        with usage.step([], []):
            index = torch.tensor([[0, 1], [1, 0]])
            sparse = torch.sparse_coo_tensor(index, torch.ones(2), (2, 2), check_invariants=True) * 2  # no storage
            kept = torch.ones(MIB // 4) if step == Usage.TRACKED_STEPS + 1 else None
        assert sparse.layout == torch.sparse_coo
    assert kept is not None and usage.live.live < MIB  # made after the watched steps


def test_allocator_leaves_device_memory_alone() -> None:
    from splitter.runtime.memory import Allocator

    assert Allocator("trim", torch.device("cuda")).mode == "default"
    if sys.platform.startswith("linux"):
        assert Allocator("trim", torch.device("cpu")).mode == "trim"
