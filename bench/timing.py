"""Timing and memory: CUDA events with an L2 flush on a GPU, the wall clock on a CPU.

GPU times are medians over many repetitions of one call, each preceded by a write of
a buffer larger than L2 (so no input stays cached), measured with CUDA events around the
call alone. With ``graph=True`` the call is captured once into a CUDA graph and the
replays are timed the same way: launch overhead (Python, dispatch, kernel launches)
drops out, leaving the GPU work. CPU times are ``perf_counter`` around synchronous
calls. Every result says which method produced it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypedDict

import torch


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class Timing(TypedDict):
    """What :func:`time_fn` returns: milliseconds per call, repetitions and the method."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    timer: str


def l2_flush(device: torch.device) -> Callable[[], None]:
    """A call that overwrites 256 MiB on ``device``, so what runs next starts with a cold
    L2 (before each timed call, and as a pytest-benchmark ``setup``). It returns None: a
    setup's return value is taken as the round's ``(args, kwargs)``, and a returned tensor
    made every round fail."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)

    def setup() -> None:
        flush.zero_()

    return setup


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    reps: int = 50,
    warmup: int = 5,
    budget_s: float = 10.0,
    graph: bool = False,
) -> Timing:
    """Median, p20 and p80 of one call of ``fn`` in milliseconds, and the method used.

    Repetitions stop early once ``budget_s`` is spent (at least 5 are kept). ``graph``
    (CUDA only): time replays of ``fn`` captured in a CUDA graph; a call that cannot be
    captured (a host sync, a CPU-to-GPU copy of pageable memory) raises."""
    if graph and device.type == "cuda":
        fn = _captured(fn, warmup)
    else:
        graph = False
        for _ in range(warmup):
            fn()
    times: list[float] = []
    start = time.perf_counter()
    if device.type == "cuda":
        flush = l2_flush(device)
        for _ in range(reps):
            flush()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
            if len(times) >= 5 and time.perf_counter() - start > budget_s:
                break
        method = "cuda-graph+l2-flush" if graph else "cuda-events+l2-flush"
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= 5 and time.perf_counter() - start > budget_s:
                break
        method = "wall-clock (cpu)"
    return {
        "median_ms": statistics.median(times),
        "p20_ms": _quantile(times, 0.2),
        "p80_ms": _quantile(times, 0.8),
        "reps": len(times),
        "timer": method,
    }


def _captured(fn: Callable[[], object], warmup: int) -> Callable[[], object]:
    """``fn`` warmed up on a side stream (as capture requires), captured once; returns the
    graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 2)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read plus bytes written)."""
    n = (1 << 30 if device.type == "cuda" else 1 << 26) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    result = time_fn(lambda: dst.copy_(src), device, reps=30, warmup=3)
    return 2 * src.numel() * src.element_size() / (result["median_ms"] * 1e-3) / 1e9


def kernel_times(
    fn: Callable[[], object], device: torch.device, steps: int = 3
) -> list[tuple[float, int, str]]:
    """``(ms, launches, name)`` per call of ``fn``, slowest first: on a GPU each kernel's
    device time under ``torch.profiler`` over ``steps`` calls (after one unprofiled call);
    on a CPU each op's self time (what the profiler can see there)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync()
    rows = []
    for ev in prof.key_averages():
        if cuda:
            us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        else:
            us = ev.self_cpu_time_total
        if us:
            rows.append((us / steps / 1e3, ev.count // steps, ev.key))
    return sorted(rows, reverse=True)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it
    (CUDA only; None on a CPU, where the caching allocator does not report it)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)
