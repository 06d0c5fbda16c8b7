"""Where a loss's GPU time goes, for one lease call: ``python3 -m segtriton.bench.probe``.

Three measurements, each printed as it finishes (CUDA only):

- ``kernels``: one forward + backward of each (loss, shape) under ``torch.profiler``,
  the time of every kernel launched, against a copy of the logits (``x.clone()``);
- ``work``: plain CE and its gradient as two kernels, one that sums over classes with
  reductions across a ``[classes, pixels]`` tile (as the loss kernels do) and one whose
  threads walk the classes one row of pixels at a time (online softmax, then a second
  walk for the gradient), as a fraction of the same floor;
- ``pattern``: a kernel that only copies ``[B, C, S]`` logits the way the loss kernels
  read them, a ``[BLOCK_C, BLOCK_P]`` tile of classes by pixels at a time, per tile shape,
  as a fraction of the measured copy bandwidth: what the tile shape alone allows;
- ``knobs``: forward + backward of each (loss, shape) in a fresh process per setting of
  the tile knobs read at import (``SEGTRITON_MAX_TILE``, ``SEGTRITON_MAX_SINGLE_C``,
  ``SEGTRITON_CHUNK``, ``SEGTRITON_STAGES``, ``SEGTRITON_COLUMN``), against the defaults;
- ``host``: the host's time per forward + backward (calls enqueued back to back, one
  sync at the end) and the CPU ops that take it under ``torch.profiler``: at C = 19 a
  call took 0.9 ms timed with CUDA events and 0.25 ms replayed from a CUDA graph
  (2026-12-04-lease3), so most of it is host time.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from segtriton.bench.timing import copy_bandwidth, kernel_times, time_fn
from segtriton.kernels._pixelwise_kernels import _load_tile
from segtriton.kernels._tiles import pixel_block
from segtriton.registry import get

Shape = tuple[int, int, int]
SHAPES: list[Shape] = [(8, 19, 512 * 1024), (16, 150, 512 * 512)]  # the targets' [B, C, S]
CASES = [
    ("cross_entropy", (8, 19, 512, 1024)),
    ("cross_entropy", (16, 150, 512, 512)),
    ("dice", (8, 19, 512, 1024)),
    ("dice", (16, 150, 512, 512)),
    ("ce_dice", (8, 19, 512, 1024)),
    ("ce_dice", (16, 150, 512, 512)),
]
# 2026-12-04 (H200): walks of one class by 512 pixels (then the default) beat whole-class
# tiles 2.5-7x, walks of 1024 or 2048 pixels and chunks of 2-16 classes. CE holds each
# pixel's class column up to 32 classes by default since 2026-12-05 (untimed), the region
# passes on labels up to 24: SEGTRITON_COLUMN=0 walks there, and the whole-class tiles
# apply to them only past those counts
KNOBS = [
    {},
    {"SEGTRITON_COLUMN": "0"},
    {"SEGTRITON_MAX_SINGLE_C": "256", "SEGTRITON_CHUNK": "32,64"},
    {"SEGTRITON_CHUNK": "1,256"},
    {"SEGTRITON_STAGES": "3"},
]
STAGES = ("kernels", "work", "pattern", "knobs", "host")


def _step(name: str, shape: tuple[int, ...], device: str = "cuda"):
    """A forward + backward of loss ``name`` on bf16 logits of ``shape``, and their bytes."""
    torch.manual_seed(0)  # drawn on the device: a CPU draw of 6e8 logits takes seconds
    x = torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device)
    t.masked_fill_(torch.rand(t.shape, device=device) < 0.05, 255)
    fn = get(name).triton()

    def step():
        return torch.autograd.grad(fn(x, t, ignore_index=255), x)

    return step, x


def kernels() -> None:
    """Per-kernel device time of one forward + backward under the profiler."""
    for name, shape in CASES:
        step, x = _step(name, shape)
        for _ in range(2):
            step()
        copy = time_fn(x.detach().clone, torch.device("cuda"), reps=10)
        rows = kernel_times(step, torch.device("cuda"))
        total = sum(r[0] for r in rows)
        print(f"\n{name} {shape} bf16 fwd+bwd: {total:.3f} ms of kernels per step; "
              f"logits clone {copy['median_ms']:.3f} ms")  # fmt: skip
        for ms, n, key in rows[:8]:
            print(f"  {ms:8.3f} ms  x{n:<3d} {key[:90]}")


@triton.jit
def _tile_copy_kernel(x_ptr, y_ptr, C, S, n_pblocks, BLOCK_C: tl.constexpr,
                      BLOCK_P: tl.constexpr):  # fmt: skip
    b, offs_p, pmask = pixel_block(tl.program_id(0), n_pblocks, S, BLOCK_P)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        m = (offs_c[:, None] < C) & pmask[None, :]
        off = b * C * S + offs_c[:, None] * S + offs_p[None, :]
        tl.store(y_ptr + off, tl.load(x_ptr + off, mask=m), mask=m)


def pattern(bandwidth: float, shapes: Sequence[Shape] = SHAPES, device: str = "cuda") -> None:
    """Copy rate of ``[BLOCK_C, BLOCK_P]`` tiles (classes looped in chunks of BLOCK_C)."""
    print(f"\ntile copy of bf16 logits, % of copy bandwidth ({bandwidth:.0f} GB/s)")
    for B, C, S in shapes:
        x = torch.randn(B, C, S, device=device, dtype=torch.bfloat16)
        y = torch.empty_like(x)
        for block_c in sorted({1, 4, 8, 32, triton.next_power_of_2(C)}):
            for block_p in (16, 64, 256, 1024):
                if block_c * block_p > 16384:
                    continue
                warps = min(16, max(4, block_c * block_p // 256))
                n_pblocks = triton.cdiv(S, block_p)
                run = functools.partial(
                    _tile_copy_kernel[(B * n_pblocks,)], x, y, C, S, n_pblocks,
                    BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
                )  # fmt: skip
                ms = time_fn(run, torch.device(device), reps=10)["median_ms"]
                gbps = 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9
                print(f"  C={C:3d} BLOCK_C={block_c:3d} BLOCK_P={block_p:4d} warps={warps:2d}: "
                      f"{ms:7.3f} ms {100 * gbps / bandwidth:5.1f}%")  # fmt: skip


@triton.jit
def _ce_tile_kernel(x_ptr, y_ptr, g_ptr, part_ptr, C, S, n_pblocks, BLOCK_C: tl.constexpr,
                    BLOCK_P: tl.constexpr):  # fmt: skip
    """Plain CE (labels, no ignore) and its gradient on one ``[BLOCK_C, BLOCK_P]`` tile,
    the class sums as axis-0 reductions, as the loss kernels compute them."""
    b, offs_p, pmask = pixel_block(tl.program_id(0), n_pblocks, S, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    m2 = (offs_c[:, None] < C) & pmask[None, :]
    off = b * C * S + offs_c[:, None] * S + offs_p[None, :]
    x = _load_tile(x_ptr, b, offs_c, offs_p, offs_c < C, pmask, C * S, S, 1)
    y = tl.load(y_ptr + b * S + offs_p, mask=pmask, other=0)
    m = tl.max(x, axis=0)
    e = tl.exp(x - m[None, :])
    s = tl.sum(e, axis=0)
    hit = offs_c[:, None] == y[None, :]
    loss = m + tl.log(s) - tl.sum(tl.where(hit, x, 0.0), axis=0)
    tl.store(g_ptr + off, (e / s[None, :] - hit.to(tl.float32)).to(g_ptr.dtype.element_ty), mask=m2)
    tl.store(part_ptr + tl.program_id(0), tl.sum(tl.where(pmask, loss, 0.0), axis=0))


@triton.jit
def _ce_rows_kernel(x_ptr, y_ptr, g_ptr, part_ptr, C, S, n_pblocks, BLOCK_P: tl.constexpr,
                    UNROLL: tl.constexpr):  # fmt: skip
    """The same CE with each thread's pixels walking the classes one row at a time (an
    online max and sum, then a second walk for the gradient): no reduction across
    threads but the program's final sum."""
    b, offs_p, pmask = pixel_block(tl.program_id(0), n_pblocks, S, BLOCK_P)
    base = b * C * S + offs_p
    y = tl.load(y_ptr + b * S + offs_p, mask=pmask, other=0)
    m = tl.full([BLOCK_P], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_P], tl.float32)
    xy = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, UNROLL):
        for u in tl.static_range(UNROLL):
            c = c0 + u
            ok = pmask & (tl.zeros_like(offs_p) + c < C)  # the interpreter: no scalar mask
            xc = tl.load(x_ptr + base + c * S, mask=ok, other=float("-inf"))
            xc = xc.to(tl.float32)
            m_new = tl.maximum(m, xc)
            s = s * tl.exp(m - m_new) + tl.exp(xc - m_new)
            m = m_new
            xy = tl.where(y == c, xc, xy)
    loss = m + tl.log(s) - xy
    tl.store(part_ptr + tl.program_id(0), tl.sum(tl.where(pmask, loss, 0.0), axis=0))
    for c0 in range(0, C, UNROLL):
        for u in tl.static_range(UNROLL):
            c = c0 + u
            ok = pmask & (tl.zeros_like(offs_p) + c < C)
            xc = tl.load(x_ptr + base + c * S, mask=ok, other=0.0).to(tl.float32)
            g = tl.exp(xc - m) / s - (y == c).to(tl.float32)
            tl.store(g_ptr + base + c * S, g.to(g_ptr.dtype.element_ty), mask=ok)


def ce_launch(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, rows: bool, block_p: int,
              unroll: int = 1, warps: int = 4) -> torch.Tensor:  # fmt: skip
    """Per-program CE partial sums of ``x [B, C, S]`` against ``y [B, S]``; the gradient
    of their sum goes to ``g``. ``rows``: :func:`_ce_rows_kernel`, else one tile of every
    class (padded to a power of two) by ``block_p`` pixels."""
    B, C, S = x.shape
    n_pblocks = triton.cdiv(S, block_p)
    part = torch.empty(B * n_pblocks, dtype=torch.float32, device=x.device)
    if rows:
        _ce_rows_kernel[(B * n_pblocks,)](x, y, g, part, C, S, n_pblocks, BLOCK_P=block_p,
                                          UNROLL=unroll, num_warps=warps)  # fmt: skip
    else:
        _ce_tile_kernel[(B * n_pblocks,)](x, y, g, part, C, S, n_pblocks,
                                          BLOCK_C=triton.next_power_of_2(C), BLOCK_P=block_p,
                                          num_warps=warps)  # fmt: skip
    return part


def work(bandwidth: float, shapes: Sequence[Shape] = SHAPES, device: str = "cuda") -> None:
    """Plain CE forward + gradient, tile reductions against class rows, per launch shape."""
    print(f"\nplain CE + gradient (bf16, int64 labels), % of copy bandwidth ({bandwidth:.0f} GB/s)")
    for B, C, S in shapes:
        x = torch.randn(B, C, S, device=device, dtype=torch.bfloat16)
        y = torch.randint(0, C, (B, S), device=device)
        g = torch.empty_like(x)
        want = torch.nn.functional.cross_entropy(x[:1].float(), y[:1], reduction="sum")
        nbytes = 2 * x.numel() * x.element_size() + y.numel() * y.element_size()
        bc = triton.next_power_of_2(C)
        tile = max(16, 2048 // bc)
        configs = [("tile", False, tile, 1, min(16, max(4, bc * tile // 256)))]
        configs += [("tile", False, tile, 1, w) for w in (4, 16) if w != configs[0][-1]]
        configs += [("rows", True, p, u, w) for p in (256, 1024) for u in (1, 4) for w in (4, 8)]
        for name, rows, block_p, unroll, warps in configs:
            run = functools.partial(ce_launch, x, y, g, rows, block_p, unroll, warps)
            got = float(ce_launch(x[:1], y[:1], g[:1], rows, block_p, unroll, warps).sum())
            ok = abs(got - float(want)) <= 1e-3 * abs(float(want))
            ms = time_fn(run, torch.device(device), reps=10)["median_ms"]
            pct = 100 * nbytes / (ms * 1e-3) / 1e9 / bandwidth
            print(f"  C={C:3d} {name} BLOCK_P={block_p:4d} unroll={unroll} warps={warps:2d}: "
                  f"{ms:7.3f} ms {pct:5.1f}%{'' if ok else ' LOSS OFF'}")  # fmt: skip


def host(cases: Sequence = CASES, device: str = "cuda", calls: int = 20) -> None:
    """Host time of one forward + backward per (loss, shape): the CPU wall time of ``calls``
    steps enqueued back to back over their count, then, over 5 steps each, the CPU ops
    with the most self time under ``torch.profiler`` and the Python functions with the
    most own time under ``cProfile``."""
    from torch.profiler import ProfilerActivity, profile

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    print("\nhost time per fwd+bwd (calls enqueued back to back), top CPU ops by self time")
    for name, shape in cases:
        step, _ = _step(name, shape, device)
        for _ in range(3):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        host_us = (time.perf_counter() - start) / calls * 1e6
        sync()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
            sync()
        print(f"{name} {'x'.join(map(str, shape))}: {host_us:.0f} us per call", flush=True)
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        for ev in ops[:8]:
            print(f"  {ev.self_cpu_time_total / 5:8.1f} us  x{ev.count // 5:<3d} {ev.key[:80]}")
        python = cProfile.Profile()
        for _ in range(5):
            python.runcall(step)
        sync()
        print("  Python functions by own time (us per call, cProfile: slowed by the profiler):")
        for entry in sorted(python.getstats(), key=lambda e: -e.inlinetime)[:8]:
            code = entry.code  # a code object, or a built-in's description
            where = (
                code
                if isinstance(code, str)
                else f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}({code.co_name})"
            )
            own_us = entry.inlinetime / 5 * 1e6
            print(f"  {own_us:8.1f} us  x{entry.callcount // 5:<3d} {where[:80]}")


def knob_case() -> None:
    """One process's share of ``knobs``: each case's median fwd+bwd time, as JSON."""
    out = {}
    for name, shape in CASES:
        step, _ = _step(name, shape)
        out[f"{name} {'x'.join(map(str, shape))}"] = time_fn(
            step, torch.device("cuda"), reps=10, budget_s=3.0
        )["median_ms"]
    print(json.dumps(out))


def knobs(cap_s: float) -> None:
    """``knob_case`` in a fresh process per knob setting (the knobs are read at import)."""
    start = time.monotonic()
    base = None
    for knob in KNOBS:
        left = cap_s - (time.monotonic() - start)
        if left < 15:
            print(f"knobs: stopped at {cap_s:.0f} s")
            return
        env = {**os.environ, **knob}
        cmd = [sys.executable, "-m", "segtriton.bench.probe", "--knob-case"]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            print(f"knobs {knob}: timed out")
            return
        if proc.returncode:
            print(f"knobs {knob}: exit {proc.returncode}\n{proc.stderr[-1500:]}")
            continue
        times = json.loads(proc.stdout.strip().splitlines()[-1])
        base = times if not knob else base  # ratios are to the defaults' run, if it ran
        cells = "  ".join(
            f"{k} {v:.3f} ms" + (f" ({v / base[k]:.2f}x)" if base else "") for k, v in times.items()
        )
        print(f"knobs {knob or 'defaults'}: {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knob-case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--knobs-cap", type=float, default=90.0, help="seconds for 'knobs'")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}"
    )
    args = parser.parse_args()
    if args.knob_case:
        knob_case()
        return
    if not torch.cuda.is_available():
        raise SystemExit("the probe times CUDA kernels: no CUDA device")
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        raise SystemExit(f"unknown probe stages {sorted(unknown)}; choose from {STAGES}")
    if "kernels" in stages:
        kernels()
    bandwidth = copy_bandwidth(torch.device("cuda"))
    if "work" in stages:
        work(bandwidth)
    if "pattern" in stages:
        pattern(bandwidth)
    if "knobs" in stages:
        knobs(args.knobs_cap)
    if "host" in stages:
        host()


if __name__ == "__main__":
    main()
