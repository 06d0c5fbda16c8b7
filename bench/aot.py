"""Compile every Triton kernel for an NVIDIA architecture on a machine without that GPU.

Inside :func:`compile_only`, launching a ``triton.jit`` kernel compiles it for ``sm_<arch>``
(Triton's own specialisation of the launch arguments, so the same binary a GPU run would
build) and records its resources instead of running it; nothing is launched, and the
tensors the kernels would have written stay unwritten. :func:`compile_registry` drives
every registry loss (forward and backward), the metrics and the distance transform through
their public functions, so a kernel that does not compile for the GPU, or needs more
shared memory than the GPU has, is found on a CPU machine in CI.

Registers and local memory come from the cubin (``cuobjdump -res-usage``, bundled with
Triton). ``local_bytes`` is the larger of the stack frame and the local memory per thread;
these kernels call no functions, so anything above 0 is registers spilled to memory, a
speed risk worth reading before a GPU run. Triton must not be in interpreter mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when cases are built, not for `segtriton --help`
    import pandas as pd
    import torch

# Per-SM limits by compute capability (CUDA programming guide): registers, warps, blocks,
# shared memory bytes. One block may use the shared memory less the 1 KiB reserved per block.
SM_LIMITS = {
    80: (65536, 64, 32, 167936),
    86: (65536, 48, 16, 102400),
    89: (65536, 48, 24, 102400),
    90: (65536, 64, 32, 233472),
    100: (65536, 64, 32, 233472),
    120: (65536, 48, 32, 102400),
}
BLOCK_RESERVED_SHARED = 1024


def shared_limit(arch: int) -> int:
    """Shared memory bytes one block may use on ``sm_<arch>``."""
    return SM_LIMITS[arch][3] - BLOCK_RESERVED_SHARED


@dataclasses.dataclass
class CompiledKernel:
    """One compiled specialisation of a kernel."""

    kernel: str
    case: str
    signature: str
    num_warps: int
    registers: int
    local_bytes: int
    shared_bytes: int
    barriers: int = 0  # bar.sync instructions in the PTX: static syncs across the warps
    approx_divisions: int = 0  # div.full / div.approx in the PTX: float32 / within 2 ulp
    loop_instructions: str = ""  # SASS instructions of each innermost loop that loads (--targets)
    other_instructions: int | None = None  # the SASS instructions outside those loops (--targets)
    loop_loads: str = ""  # per such loop, its LDGs before its first STG (--targets)


class _CompileOnlyDriver:
    """The few driver calls a ``JITFunction`` launch makes, answered for a GPU that is not here."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def _cuobjdump() -> str:
    import triton

    with contextlib.suppress(AttributeError):
        return triton.knobs.nvidia.cuobjdump.path
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _cuobjdump_of(cubin: bytes, flag: str) -> str:
    """``cuobjdump <flag>`` of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [_cuobjdump(), flag, f.name], capture_output=True, text=True, check=True
        ).stdout


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """``(registers, max(stack, local) bytes)`` per thread of the one kernel in ``cubin``."""
    out = _cuobjdump_of(cubin, "-res-usage")
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    if found is None:
        raise RuntimeError(f"no resource line in cuobjdump output:\n{out}")
    regs, stack, local = map(int, found.groups())
    return regs, max(stack, local)


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);", re.M)
_BRANCH = re.compile(r"\bBRA\b[^;]*?(0x[0-9a-f]+)")


def sass_loops(sass: str) -> tuple[list[int], int, list[int]]:
    """Instructions in each innermost loop of a SASS listing that loads from global memory
    (``LDG``), in address order, the instructions outside them, and each such loop's
    ``LDG`` before its first ``STG`` (all of them in a loop that stores nothing): a loop
    is the span from a branch's target back to the branch; innermost ones hold no other.
    Per logit, a class walk costs its count over (pixels per thread x unroll factor): the
    figure that bounds these memory-bound kernels when instruction issue, not bandwidth,
    runs out first. The rest (a static count) is what a tile costs besides its walks at
    most: the per-pixel work between them, once per tile, with the prologue and epilogue
    once per program. The loads before the first store are what a thread can have in
    flight at the top of the loop: a load after a store stays after it unless the
    compiler knows the two do not overlap."""
    code = [(int(a, 16), text.strip()) for a, text in _SASS_LINE.findall(sass)]
    loops = []
    for addr, text in code:
        target = _BRANCH.search(text)
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    inner = [
        (lo, hi) for lo, hi in loops
        if not any((lo, hi) != (a, b) and lo <= a and b <= hi for a, b in loops)
    ]  # fmt: skip
    counts, loads = [], []
    for lo, hi in sorted(inner):
        body = [text for addr, text in code if lo <= addr <= hi]
        if any("LDG" in text for text in body):
            counts.append(len(body))
            stores = [i for i, text in enumerate(body) if "STG" in text]
            loads.append(sum("LDG" in text for text in body[: stores[0] if stores else None]))
    return counts, len(code) - sum(counts), loads


@contextlib.contextmanager
def compile_only(arch: int = 90, loops: bool = False) -> Iterator[list[CompiledKernel]]:
    """Within the block, kernel launches compile for ``sm_<arch>`` and are recorded in the
    yielded list (one row per new specialisation; set ``case`` on rows as you go). With
    ``loops``, each row also gets :func:`sass_loops` of its cubin (a disassembly per
    specialisation: about 0.3 s each on a CPU machine)."""
    from segtriton.kernels import interpreter_enabled
    from segtriton.kernels._runtime import cpu_launches

    if interpreter_enabled():
        raise RuntimeError("compile_only needs compiled Triton: unset TRITON_INTERPRET")
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    rows: list[CompiledKernel] = []
    seen: set[str] = set()
    launch = JITFunction.run
    touched: dict[int, JITFunction] = {}

    def compile_instead(self, *args, grid, warmup, **kwargs):
        touched[id(self)] = self
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        if kernel.hash not in seen:
            seen.add(kernel.hash)
            regs, local = resource_usage(kernel.asm["cubin"])
            sig = ",".join(f"{k}:{v}" for k, v in kernel.src.signature.items() if v != "constexpr")
            meta = kernel.metadata
            ptx = kernel.asm["ptx"]
            barriers = len(re.findall(r"\bbar(?:rier)?\.sync\b", ptx))
            approx = len(re.findall(r"\bdiv\.(?:full|approx)\.", ptx))
            loop_counts, other, loop_loads = (
                sass_loops(_cuobjdump_of(kernel.asm["cubin"], "-sass")) if loops else ([], None, [])
            )
            rows.append(
                CompiledKernel(
                    self.__name__,
                    "",
                    sig,
                    meta.num_warps,
                    regs,
                    local,
                    meta.shared,
                    barriers,
                    approx,
                    ",".join(map(str, loop_counts)),
                    other,
                    ",".join(map(str, loop_loads)),
                )  # fmt: skip
            )
        return kernel

    previous = driver._active  # None until a real driver was first asked for
    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.run = compile_instead
    try:
        with cpu_launches():
            yield rows
    finally:
        JITFunction.run = launch
        driver.set_active(previous)
        for fn in touched.values():
            fn.device_caches.clear()


@dataclasses.dataclass(frozen=True)
class CompileCase:
    """One call of a public function: a loss (forward and backward) or a metric."""

    name: str
    options: dict
    shape: tuple[int, ...]
    dtype: torch.dtype
    label_dtype: torch.dtype
    channels_last: bool
    empty: bool = False  # uninitialised inputs (a compile reads only shapes and dtypes)

    def describe(self) -> str:
        layout = " channels_last" if self.channels_last else ""
        opts = f" {self.options}" if self.options else ""
        return (
            f"{self.name} {'x'.join(map(str, self.shape))} {str(self.dtype)[6:]}"
            f" labels {str(self.label_dtype)[6:]}{layout}{opts}"
        )


def compile_cases(quick: bool = False, dtypes: tuple[str, ...] | None = None) -> list[CompileCase]:
    """Every registry loss variant (per-class vectors repeated to C) and the metrics over
    class counts and logits dtypes (``dtypes``: names of ``spec.DTYPES``; unset, all three,
    or bf16 and fp32 with ``quick``); layout (NCHW or channels_last, 2-D or 3-D),
    reduction and label dtype take turns along the list.

    ``quick`` keeps one class count per path a loss takes under the default knobs: 3 (a
    column tile, 4 pixels a thread), 19 (a column tile of 32 class rows, 2 pixels a
    thread) and 300 (classes streamed in chunks). The confusion matrix also runs at 59,
    150 (and 300): its integer atomics with a diagonal of 64, 256 (and 512) bins, where 3
    and 19 take private histograms of every cell."""
    import torch

    from segtriton.registry import LOSSES, fit_variant

    from .spec import DTYPES

    counts = (3, 19, 300) if quick else (1, 2, 3, 19, 150, 300, 1000)
    if dtypes is None:
        dtypes = ("bf16", "fp32") if quick else ("bf16", "fp16", "fp32")
    logits = [DTYPES[name] for name in dtypes]
    spatial = ((9, 13), (3, 5, 7))
    # seven label dtypes in turn: prime to the layout's period (3) and the shape's (4)
    label_dtypes: tuple[torch.dtype, ...] = (torch.int64, torch.uint8, torch.int32, torch.int16)
    label_dtypes += (torch.uint16, torch.uint32, torch.uint64)
    plans: list[tuple[str, dict, int, tuple[str, ...]]] = []
    for entry in LOSSES:
        for variant in entry.variants:
            for C in (1,) if entry.is_binary(variant) else counts:
                options = fit_variant(variant, C)
                if options is None or entry.min_classes > C:
                    continue
                plans.append((entry.name, options, C, entry.reductions))
    for C in sorted({*counts, 150}):
        plans += [("confusion_logits", {}, C, ()), ("confusion_labels", {"per_image": True}, C, ())]
    plans += [("confusion_masks", {"mode": "multilabel"}, C, ()) for C in (3, 300)]
    plans.append(("surface_dice", {"tolerance": 1.0}, 3, ()))
    # 59 classes: the confusion matrix's atomic path with a 64-bin diagonal
    plans += [("confusion_logits", {}, 59, ()), ("confusion_labels", {}, 59, ())]
    cases: list[CompileCase] = []
    for (name, options, C, reductions), dtype in itertools.product(plans, logits):
        k = len(cases)
        labels = label_dtypes[k % len(label_dtypes)]
        if C > 255 and labels == torch.uint8:
            labels = torch.int64
        opts = dict(options)
        if reductions and not options.get("gamma_after_mean"):
            opts["reduction"] = reductions[k % len(reductions)]
        shape = (2, C, *spatial[(k // 2) % len(spatial)])
        cases.append(CompileCase(name, opts, shape, dtype, labels, k % 3 == 1))
    return cases


def target_cases(channels_last: bool = False) -> list[CompileCase]:
    """The loss cases of the ``targets`` sweep preset at their real shapes (logits, and
    masks of their shape, in channels_last with ``channels_last``), as a GPU run of it
    compiles them: sizes divisible by 16 let Triton vectorise the tile loads and (with
    ``SEGTRITON_STAGES`` > 1) pipeline them, which the small odd shapes of
    :func:`compile_cases` do not show.
    Masks are in the logits' dtype, as in every case here and in a sweep. Lovasz is left
    out (its ``torch.sort`` would run on the CPU). Then the confusion-matrix targets (from
    int64 labels, and from bf16 logits), which ``pytest --benchmark`` times."""
    import torch

    from segtriton.registry import get

    from .spec import DTYPES
    from .targets import TARGETS, sweep_cases

    losses = [
        CompileCase(name, dict(get(name).variants[0]), tuple(shape), DTYPES[dtype],
                    torch.int64, channels_last, empty=True)
        for name, shape, dtype in sweep_cases()
        if not name.startswith("lovasz")
    ]  # fmt: skip
    metrics = [
        CompileCase(t.loss, {}, t.shape, torch.bfloat16, torch.int64, channels_last, empty=True)
        for t in TARGETS
        if t.loss in ("confusion_labels", "confusion_logits")
    ]
    return losses + metrics


def confusion_cases(classes: list[int]) -> list[CompileCase]:
    """The confusion matrix at each class count, from int64 labels and from bf16 logits,
    at ``[8, C, 512, 1024]`` (uninitialised): which of its paths (a private histogram of
    every cell, or integer atomics, ``kernels/metrics.py``) a class count takes, and what
    each costs per pixel (``segtriton compile --confusion``)."""
    import torch

    return [
        CompileCase(name, {}, (8, C, 512, 1024), torch.bfloat16, torch.int64, False, empty=True)
        for C in classes
        for name in ("confusion_labels", "confusion_logits")
    ]


def run_case(case: CompileCase) -> None:
    """Call the case's public function with small random inputs (forward and backward)."""
    import torch

    from segtriton import kernels
    from segtriton.registry import get, make_inputs

    from .spec import channels_last

    gen = torch.Generator().manual_seed(0)
    B, C, *spatial = case.shape
    if case.name == "confusion_masks":  # multilabel: logits against uint8 masks
        target = torch.randint(0, 2, case.shape, generator=gen).to(torch.uint8)
        preds = torch.randn(case.shape, generator=gen).to(case.dtype)
        if case.channels_last:
            preds, target = channels_last(preds, target)
        kernels.confusion_matrix(preds, target, C, ignore_index=255, validate=False, **case.options)
        return
    if case.name.startswith("confusion"):
        labels = (B, *spatial)
        if case.empty:
            target = torch.empty(labels, dtype=case.label_dtype)
        else:
            target = torch.randint(0, C, labels, generator=gen).to(case.label_dtype)
        if case.name == "confusion_logits":
            if case.empty:
                preds = torch.empty(case.shape, dtype=case.dtype)
            else:
                preds = torch.randn(case.shape, generator=gen).to(case.dtype)
            if case.channels_last:
                preds, target = channels_last(preds, target)
        else:
            preds = target if case.empty else torch.randint(0, C, labels, generator=gen)
            preds = preds.to(case.label_dtype)
        kernels.confusion_matrix(
            preds, target, C, ignore_index=None, validate=False, **case.options
        )
        return
    if case.name == "surface_dice":  # the EDT over label maps, and the per-class sums
        preds, target = (torch.randint(0, C, (B, *spatial), generator=gen) for _ in range(2))
        kernels.surface_dice(preds, target, C, validate=False, **case.options)
        return
    entry = get(case.name)
    opts = entry.ignoring(case.options)
    if case.empty:
        x = torch.empty(case.shape, dtype=case.dtype)
        if entry.target_kind(opts) == "labels":
            t = torch.zeros((B, *spatial), dtype=case.label_dtype)
        else:
            t = torch.zeros(case.shape, dtype=case.dtype)
    else:
        x, t = make_inputs(
            entry, case.shape, opts, case.dtype, gen, 0.1,
            label_dtype=case.label_dtype, mask_dtype=case.dtype,
        )  # fmt: skip
    if case.channels_last:
        x, t = channels_last(x, t)
    x.requires_grad_(True)
    loss = entry.triton()(x, t, **opts)
    loss.sum().backward()


def compile_registry(
    arch: int = 90,
    quick: bool = False,
    show_progress: bool = True,
    targets: bool = False,
    channels_last: bool = False,
    confusion: list[int] | None = None,
    dtypes: tuple[str, ...] | None = None,
) -> tuple[list[CompiledKernel], list[tuple[str, str]]]:
    """Compile every kernel the cases of :func:`compile_cases` (or, with ``targets``,
    :func:`target_cases`, ``channels_last`` there; with ``confusion``,
    :func:`confusion_cases` of those class counts; both count their hot loops too)
    launch, for ``sm_<arch>`` (``quick`` and ``dtypes`` as :func:`compile_cases` takes
    them). Returns the compiled specialisations and ``(case, error)`` for each case that
    failed."""
    from .runner import progress

    failures = []
    if confusion:
        cases = confusion_cases(confusion)
    else:
        cases = target_cases(channels_last) if targets else compile_cases(quick, dtypes)
    started = time.perf_counter()
    with compile_only(arch, loops=targets or bool(confusion)) as rows:
        for i, case in enumerate(cases):
            label = case.describe()
            if show_progress:
                progress(i, len(cases), started, label)
            n = len(rows)
            try:
                run_case(case)
            except Exception as exc:  # a kernel that does not compile is a finding, go on
                failures.append((label, f"{type(exc).__name__}: {exc}"))
            for row in rows[n:]:
                row.case = label
    return rows, failures


def _fwd_bwd_seconds(fn: Callable, x: torch.Tensor, t: torch.Tensor, opts: dict) -> float:
    """Seconds of one forward + backward call of ``fn(x, t, **opts)``."""
    import torch

    start = time.perf_counter()
    torch.autograd.grad(fn(x, t, **opts), x)
    return time.perf_counter() - start


def host_overhead(
    names: list[str] | None = None,
    shape: tuple[int, ...] = (2, 19, 32, 32),
    calls: int = 200,
    arch: int = 90,
) -> list[dict]:
    """Host microseconds of one fwd+bwd call of each registry loss's Triton path (bf16
    logits, int64 labels), with every launch compiled for ``sm_<arch>`` but not run: the
    Python, dispatch and launch-preparation time a GPU run pays per call, measured on any
    machine. ``host_us``: the median over ``calls`` calls as users make them (the eager
    path of :mod:`segtriton.kernels._ops`); ``custom_op_us``: the same calls through the
    custom-op dispatcher, alternated with the first so that both see the same machine
    load; ``*_min``: the fastest of those calls, which other work on a shared machine
    moves least; ``no_launch_us``: the median of ``calls`` more eager calls with every
    Triton launch a no-op, so ``host_us - no_launch_us`` is what the launches' preparation
    takes (binding, specialisation key, cache lookup). Inputs are small CPU tensors; what
    the kernels would write stays unwritten (the Lovasz losses still sort on the CPU)."""
    import statistics

    import torch
    from triton.runtime.jit import JITFunction

    from segtriton.kernels import _ops
    from segtriton.registry import get, kernel_names, make_inputs

    entries = [get(n) for n in kernel_names(names)]
    out = []
    fast = _ops.fast_eager
    with compile_only(arch):
        for entry in entries:
            opts = entry.ignoring(entry.variants[0])
            case = entry.fit_shape(shape, opts)
            gen = torch.Generator().manual_seed(0)
            bf16 = torch.bfloat16
            x, t = make_inputs(entry, case, opts, bf16, gen, 0.05, mask_dtype=bf16)
            x.requires_grad_(True)
            times: dict[bool, list[float]] = {True: [], False: []}
            call = (entry.triton(), x, t, opts)
            launch = JITFunction.run  # compile_only's
            try:
                for k in range(2 * calls + 6):  # the first 6 compile and warm up
                    _ops.fast_eager = k % 2 == 0
                    seconds = _fwd_bwd_seconds(*call)
                    if k >= 6:
                        times[_ops.fast_eager].append(seconds)
                _ops.fast_eager = True
                JITFunction.run = lambda self, *args, **kwargs: None
                bare = statistics.median(_fwd_bwd_seconds(*call) for _ in range(calls))
            finally:
                _ops.fast_eager = fast
                JITFunction.run = launch
            us = {k: round(statistics.median(v) * 1e6, 1) for k, v in times.items()}
            fastest = {k: round(min(v) * 1e6, 1) for k, v in times.items()}
            out.append({"loss": entry.name, "shape": "x".join(map(str, case)),
                        "host_us": us[True], "custom_op_us": us[False],
                        "host_us_min": fastest[True],
                        "custom_op_us_min": fastest[False],
                        "no_launch_us": round(bare * 1e6, 1)})  # fmt: skip
    return out


def blocks_per_sm(row: CompiledKernel, arch: int) -> int:
    """Resident blocks per SM allowed by registers (allocated per warp in units of 256),
    warps, the block limit and shared memory (1 KiB reserved per block), as in the CUDA
    occupancy calculator."""
    regs, warps, blocks, shared = SM_LIMITS[arch]
    per_warp = -(-max(row.registers, 1) * 32 // 256) * 256
    by_regs = (regs // per_warp) // row.num_warps
    by_shared = shared // (row.shared_bytes + BLOCK_RESERVED_SHARED)
    return min(by_regs, warps // row.num_warps, blocks, by_shared)


def frame(rows: list[CompiledKernel], arch: int) -> pd.DataFrame:
    """The rows as a DataFrame, with the resident warps per SM of each."""
    import pandas as pd

    df = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    df["warps_per_sm"] = [blocks_per_sm(r, arch) * r.num_warps for r in rows]
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One line per kernel of a :func:`frame`: specialisations, worst registers / local
    memory / shared memory and the fewest resident warps per SM over its specialisations."""
    return (
        df.groupby("kernel")
        .agg(
            specialisations=("case", "size"),
            max_registers=("registers", "max"),
            max_local_bytes=("local_bytes", "max"),
            spilling=("local_bytes", lambda s: int((s > 0).sum())),
            max_shared_bytes=("shared_bytes", "max"),
            min_warps_per_sm=("warps_per_sm", "min"),
            max_barriers=("barriers", "max"),
        )
        .reset_index()
    )


def write_report(
    rows: list[CompiledKernel],
    failures: list[tuple[str, str]],
    out: Path,
    arch: int,
    command: str,
) -> Path:
    """``kernels.csv`` (every specialisation) and ``compile.md`` (summary, spills,
    failures) under ``out``; returns the path of ``compile.md``."""

    from .env import provenance
    from .report import md_table

    out.mkdir(parents=True, exist_ok=True)
    df = frame(rows, arch)
    df.to_csv(out / "kernels.csv", index=False)
    lines = [
        f"# Triton kernels compiled for sm_{arch} (no GPU involved)",
        "",
        provenance(command),
        "Registers and stack/local (spill) bytes per thread from `cuobjdump -res-usage` of each "
        "cubin; warps per SM from those by the occupancy calculator's rules; barriers: the "
        "`bar.sync` instructions in the PTX (a static count of syncs across a block's warps, "
        "which a reduction across them needs). These are compiler figures, not GPU timings.",
        "",
        f"{len(rows)} specialisations compiled, {len(failures)} case(s) failed.",
        "",
        md_table(summarize(df)),
        "",
    ]
    totals = df.loop_instructions.map(lambda v: sum(int(n) for n in v.split(",") if n))
    heavy = df.assign(loop_total=totals).sort_values("loop_total", ascending=False)
    heavy = heavy[heavy.loop_total > 0]
    if len(heavy):
        lines += [
            "## Hot loops",
            "",
            "SASS instructions of each innermost loop that loads from global memory (in "
            "code order), for the 20 specialisations with the most; a class walk's count "
            "over (pixels per thread x unroll) is its instructions per logit. "
            "`other_instructions`: the kernel's instructions outside those loops (static: "
            "the per-pixel work between the walks runs once per tile, the prologue and "
            "epilogue once per program). `loop_loads`: each loop's global loads before its "
            "first global store, what a thread can have in flight at the loop's top (a "
            "load after a store stays after it unless the compiler knows they do not "
            "overlap).",
            "",
            md_table(
                heavy[
                    [
                        "kernel",
                        "case",
                        "num_warps",
                        "loop_instructions",
                        "loop_loads",
                        "other_instructions",
                    ]
                ].head(20)
            ),
            "",
        ]
    spills = df[df.local_bytes > 0].sort_values("local_bytes", ascending=False)
    if len(spills):
        lines += [
            "## Spilling specialisations",
            "",
            md_table(spills[["kernel", "case", "num_warps", "registers", "local_bytes"]].head(40)),
            "",
        ]
    if failures:
        lines += ["## Failed cases", ""]
        lines += [f"- {case}: `{error.splitlines()[0][:300]}`" for case, error in failures]
    path = out / "compile.md"
    path.write_text("\n".join(lines) + "\n")
    return path
