"""Where Triton kernels run: compiled on a CUDA device, or in Triton's CPU interpreter.

The interpreter is chosen by the environment variable ``TRITON_INTERPRET=1``, which must
be set before ``triton`` is first imported.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import torch
import triton
import triton.language as tl

from segtriton.reference._common import P, R, checks_flags

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def release(version: str) -> tuple[int, int]:
    """The major and minor numbers of a version string ('2.14.1+cu130' -> (2, 14))."""
    major, minor = re.findall(r"\d+", version)[:2]
    return int(major), int(minor)


# Triton before 3.7 (3.6 is the GPU image's) cannot build some walks over class rows that
# compare each class with 8- or 16-bit labels: its TritonGPURemoveLayoutConversions pass
# moves a value from one loop into another ("operand #0 does not dominate this use").
# Triton 3.9 builds them; `segtriton compile` under Triton 3.6 on a CPU shows the failures.
WALK_LABEL_BUG = release(triton.__version__) < (3, 7)

# A load whose pointers are contiguous along no axis (a column tile over channels_last
# logits: pixels C apart, classes marked non-contiguous) takes the layout that Triton's
# coalescing pass picks on a tie: threads along the first axis before Triton 3.7, along
# the last from 3.7 on. A column tile wants them along the pixels, so it reads
# [pixels, classes] and transposes before 3.7, and reads [classes, pixels] straight from
# it (``_tiles.load_column``). The other way round, the classes go across the lanes:
# compiled for sm_90 at 8x19x512x1024 bf16, CE took 239 registers under 3.6 and 216 to
# 240 under 3.7.1, 3.8.0 and 3.9.0, against 40 to 48, and CE + Dice spilled.
COLUMN_READ_TRANSPOSED = release(triton.__version__) < (3, 7)


def interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the segtriton kernels, or None.

    Triton before 3.7 turns a loop bound into a Python int with ``int()`` of a one-element
    array, which NumPy 2.4 rejects, so every kernel with a loop over a runtime count fails
    there (triton-lang/triton#9171)."""
    if release(triton.__version__) >= (3, 7) or release(np.__version__) < (2, 4):
        return None
    return (
        f"Triton {triton.__version__}'s interpreter cannot run loops with NumPy "
        f"{np.__version__} (triton-lang/triton#9171): install triton>=3.7 or numpy<2.4"
    )


_cpu_launches = False  # set by cpu_launches()


@contextlib.contextmanager
def cpu_launches() -> Iterator[None]:
    """Within the block, :func:`launch_on` lets CPU tensors through: for
    ``segtriton.bench.aot``, whose launches compile for a GPU that is not there."""
    global _cpu_launches
    before, _cpu_launches = _cpu_launches, True
    try:
        yield
    finally:
        _cpu_launches = before


def _check_launchable(tensor: torch.Tensor, name: str, arg: str) -> None:
    """Refuse a CPU tensor on a machine without a CUDA device unless Triton runs in its
    interpreter: compiled Triton kernels launch on a GPU only, and Triton's own error there
    ("0 active drivers") names neither the tensor nor the way out. Beside a GPU, Triton
    itself says "Pointer argument cannot be accessed from Triton (cpu tensor?)"."""
    if (
        tensor.device.type == "cpu"
        and not (interpreter_enabled() or _cpu_launches)
        and not torch.cuda.is_available()
    ):
        from segtriton import reference

        other = f", or call segtriton.reference.{name}" if hasattr(reference, name) else ""
        raise ValueError(
            f"segtriton.kernels.{name}: {arg} is on the CPU and there is no GPU here: "
            "Triton kernels then run only in Triton's interpreter (TRITON_INTERPRET=1, set "
            f"before triton is imported){other}"
        )


def on_device_of(tensor: object) -> contextlib.AbstractContextManager:
    """A context in which ``tensor``'s CUDA device is the current one. Triton launches on
    the current device and its stream, whatever device the arguments are on: a loss on
    ``cuda:1`` called while ``cuda:0`` is current (no ``torch.cuda.set_device``) would
    fail with "Pointer argument cannot be accessed from Triton". The backward needs none:
    autograd runs it on a thread whose current device is the gradient's. Under
    ``torch.compile`` the generated code sets the device itself."""
    if (
        isinstance(tensor, torch.Tensor)
        and tensor.device.type == "cuda"
        and not torch.compiler.is_compiling()
        and tensor.device.index != torch.cuda.current_device()
    ):
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def launch_on(tensor: torch.Tensor, name: str, arg: str) -> contextlib.AbstractContextManager:
    """The context in which the public entry ``name`` launches kernels on the tensor
    ``arg``: that tensor's device current (:func:`on_device_of`), once a CPU tensor that no
    GPU or interpreter can run has been refused (:func:`_check_launchable`)."""
    _check_launchable(tensor, name, arg)
    return on_device_of(tensor)


def kernel_api(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public kernel function: its bool options pass ``checks_flags``, its first
    argument (positional or by name) must be a tensor, of a dtype in ``KERNEL_DTYPES`` if
    it is float, and it runs in that tensor's :func:`launch_on` context. The kernels
    compute in float32, so float64 logits are refused rather than rounded without a word
    (``segtriton.reference`` computes in float64)."""
    checked: Callable[..., R] = checks_flags(fn)
    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def entry(*args: object, **kwargs: object) -> object:
        if not args and first not in kwargs:
            return checked(*args, **kwargs)  # Python's own error for the missing argument
        x = args[0] if args else kwargs[first]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{first} must be a torch.Tensor, got {type(x).__name__}")
        if x.is_floating_point() and x.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"segtriton.kernels.{fn.__name__} takes float32, float16 or bfloat16 logits "
                f"(it computes in float32), got {x.dtype}; "
                f"segtriton.reference.{fn.__name__} computes in float64"
            )
        with launch_on(x, fn.__name__, first):
            return checked(*args, **kwargs)

    return cast("Callable[P, R]", entry)


def compiled_apart(fn: Callable[P, R]) -> Callable[P, R]:
    """``torch.compiler.disable(fn)`` (a graph break around ``fn`` under torch.compile),
    made at the first call: the decorator imports torch._dynamo, about 1.5 s that
    ``import segtriton.kernels`` then need not pay."""
    disabled: list[Callable[P, R]] = []

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call


def kernel_jit(fn: Callable) -> triton.runtime.jit.KernelInterface:
    """``triton.jit`` for a kernel that segtriton launches: where the environment does not
    set ``TRITON_DEFAULT_FP_FUSION``, each launch asks for FMA contraction
    (``enable_fp_fusion=True``), Triton's default up to 3.9, which 3.10 turns off. A
    training script then runs the kernels as the benchmark built them, on any Triton, and
    Triton 3.9 does not warn that the default will change; where the variable is set (0
    or 1), the launches follow it.

    In Triton's interpreter a launch runs under ``np.errstate(all="ignore")``: the
    interpreter computes masked-off lanes too (exp of padding, 0/0 past a tile's tail, a
    class walk's first step from the lowest finite float, which overflows on purpose), and
    NumPy's warnings about values no result reads would reach the user's script. Other
    Triton kernels keep NumPy's settings."""
    kernel = triton.jit(fn)
    interpreted = type(kernel).__name__ == "InterpretedFunction"  # triton.jit's choice

    def run(*args: object, **kwargs: object) -> object:
        if "TRITON_DEFAULT_FP_FUSION" not in os.environ:
            kwargs.setdefault("enable_fp_fusion", True)
        # the class's run, looked up per call: `segtriton compile` swaps it
        if not interpreted:
            return type(kernel).run(kernel, *args, **kwargs)
        with np.errstate(all="ignore"):
            return type(kernel).run(kernel, *args, **kwargs)

    kernel.run = run
    return kernel


@kernel_jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
    """``out = a x + y`` in one program that loops over blocks (a runtime trip count, as in
    the loss kernels)."""
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, a * x + y, mask=mask)


def run_smoke_kernel(device: str | torch.device) -> float:
    """Run a tiny kernel on ``device`` and return its max abs error against torch."""
    n = 1000
    x = torch.randn(n, device=device)
    y = torch.randn(n, device=device)
    out = torch.empty_like(x)
    with on_device_of(x):
        _axpy_kernel[(1,)](x, y, out, 2.0, n, BLOCK=256)
    return float((out - (2.0 * x + y)).abs().max())
