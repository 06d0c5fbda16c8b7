"""Test configuration: Triton's interpreter on machines without a GPU, and logged seeds.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so it is decided here,
before any test module imports segtriton.kernels.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
# compiled kernels keep FMA contraction on, as `segtriton` commands do (bench/cli.py)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# In the interpreter each kernel op is a NumPy call, and the default walk over class rows
# (kernels/_tiles.py) makes C of them where a tile of every class makes one: the kernel
# tests ran 4x slower. There the kernels take whole-class tiles (the knobs below) unless
# the environment sets the knobs or SEGTRITON_TEST_DEFAULT_TILES;
# tests/test_kernels_stages.py runs the random-option tests and fourteen fixed cases under
# the defaults in child processes, and on a GPU every test runs the defaults.
if os.environ.get("TRITON_INTERPRET") == "1" and not os.environ.get("SEGTRITON_TEST_DEFAULT_TILES"):
    os.environ.setdefault("SEGTRITON_MAX_SINGLE_C", "256")
    os.environ.setdefault("SEGTRITON_CHUNK", "32,64")
# There a tile costs the same NumPy calls whatever its width, so the column tiles of CE and
# the region passes take 1024 pixels (kernels/_tiles.py), under the default tiles too
if os.environ.get("TRITON_INTERPRET") == "1":
    os.environ.setdefault("SEGTRITON_COLUMN_PIXELS", "1024")

# torch.compile's on-disk cache is keyed on a graph's code, which names each custom op
# but not its fake implementation: after a change to an op's outputs, a graph compiled
# before it was reused and crashed the process (README, "After upgrading segtriton").
# The tests take a cache folder of their own per version of kernels/, where the ops are.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _ops_source = hashlib.sha256()
    for _path in sorted((Path(__file__).resolve().parents[1] / "kernels").glob("*.py")):
        _ops_source.update(_path.read_bytes())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"segtriton-inductor-{_ops_source.hexdigest()[:16]}"
    )

# Under pytest-xdist (`pytest -n auto`) every worker would start one torch thread per core;
# splitting the cores between the workers ran the cldice and region tests 9% faster on CI's
# two cores
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _interpreter():
    """Triton's interpreter module where this run uses it (and triton has one), else None."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        from triton.runtime import interpreter
    except ImportError:
        return None
    return interpreter


def vectorize_min_max_scans() -> bool:
    """Let Triton's interpreter run the distance transform's prefix max / min scans as numpy
    ``accumulate`` calls. The interpreter vectorizes only sum and product scans; any other
    combine function it applies one element at a time in Python, which was most of the
    surface-metric and boundary tests' CPU time. Same results (integer max / min); the
    original runs for every other scan and wherever triton's internals differ. Whether it
    took effect is returned; ``tests/test_kernels_boundary.py`` checks it against the
    interpreter's own scan."""
    scan_ops = getattr(_interpreter(), "ScanOps", None)
    slow = getattr(scan_ops, "generic_scan", None)
    if slow is None or getattr(slow, "vectorized", False):
        return slow is not None
    import numpy as np

    from segtriton.kernels import _edt_kernels

    ufuncs = {id(_edt_kernels._max): np.maximum, id(_edt_kernels._min): np.minimum}

    def generic_scan(self, input):
        ufunc = ufuncs.get(id(self.combine_fn))
        if ufunc is None or len(input) != 1:
            return slow(self, input)
        generic_scan.shortcuts += 1
        data = input[0].handle.data
        return [self.to_tensor(ufunc.accumulate(data, axis=self.axis), input[0].dtype)]

    generic_scan.vectorized = True
    generic_scan.shortcuts = 0
    generic_scan.slow = slow
    scan_ops.generic_scan = generic_scan
    return True


VECTORIZED_SCANS = vectorize_min_max_scans()


def skip_repeated_lang_patches() -> bool:
    """Let a ``@triton.jit`` helper called inside an interpreted kernel run without patching
    triton.language again. The interpreter patches it at each launch (and restores it after),
    then once more at every helper call, through ``inspect.getmembers`` of its modules: 58 of
    132 s of a Dice forward and backward (cProfile, 2x3x512x512 fp16). A helper whose
    triton.language modules the running launch (or a helper in it) patched skips that
    step; any other helper, and every launch, patches as before (the interpreter never
    restores what a helper patches, so within a launch it stays patched). Returns whether
    it took effect; ``tests/test_kernels_stages.py`` checks it is taken and gives the same
    results."""
    interp = _interpreter()
    executor = getattr(interp, "GridExecutor", None)
    function = getattr(interp, "InterpretedFunction", None)
    error = getattr(interp, "InterpreterError", None)
    if executor is None or function is None or error is None:
        return False
    launch, helper = executor.__call__, function.__call__
    if getattr(helper, "shortcut", False):
        return True
    lang = (interp.tl, interp.tl.core)
    running: list[set[int]] = []  # the triton.language modules each running launch patched
    seen: dict[object, frozenset[int]] = {}

    def modules(fn) -> frozenset[int]:
        if fn not in seen:
            seen[fn] = frozenset(
                id(v) for v in fn.__globals__.values() if any(v is m for m in lang)
            )
        return seen[fn]

    def launch_call(self, *args, **kwargs):
        running.append(set(modules(self.fn)))
        try:
            return launch(self, *args, **kwargs)
        finally:
            running.pop()

    def helper_call(self, *args, **kwargs):
        if not running:
            return helper(self, *args, **kwargs)
        if not modules(self.fn) <= running[-1]:
            running[-1] |= modules(self.fn)  # patched now (tl.sum's triton.language.core)
            return helper(self, *args, **kwargs)
        helper_call.shortcuts += 1
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise error(repr(exc)) from exc

    helper_call.shortcut = True
    helper_call.shortcuts = 0
    helper_call.slow, launch_call.slow = helper, launch
    executor.__call__ = launch_call
    function.__call__ = helper_call
    return True


SKIPPED_LANG_PATCHES = skip_repeated_lang_patches()


def exact_bfloat16_casts() -> bool:
    """Let Triton's interpreter cast float32 to bfloat16 and back as compiled kernels do.
    Its own conversion (``_convert_float``, Triton 3.6 to 3.9) truncates where the GPU's
    ``cvt.rn.bf16.f32`` rounds to nearest even, and returns wrong values for float32
    subnormals: 1e-38 stored as 8.2e-39, 9.4e-40 as 3.2e-39. A bf16 gradient below
    bf16's normal range (a label's p near 1e-38 at logits 16 times the usual scale) then
    read 3.4 times its value in the interpreter. Here both directions are bit operations
    (the two formats share the exponent: bf16 is float32's upper half); every other
    conversion runs the interpreter's own. Returns whether it took effect;
    ``tests/test_kernels_float_edges.py`` compares the casts with torch's."""
    interp = _interpreter()
    slow = getattr(interp, "_convert_float", None)
    if slow is None or getattr(slow, "exact_bf16", False):
        return slow is not None
    import numpy as np

    tl, rtz = interp.tl, interp._ir.ROUNDING_MODE.RTZ

    def _convert_float(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.bfloat16 and output_dtype == tl.float32:
            return np.asarray(input).view(np.uint16).astype(np.uint32) << 16
        if input_dtype != tl.float32 or output_dtype != tl.bfloat16:
            return slow(input, input_dtype, output_dtype, rounding_mode)
        bits = np.asarray(input, dtype=np.float32).view(np.uint32).astype(np.uint64)
        if rounding_mode != rtz:  # to nearest, ties to the even upper half
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
        nan = np.isnan(np.asarray(input, dtype=np.float32))
        upper = np.where(nan, 0x7FC0, bits >> 16)
        return upper.astype(np.uint16)

    _convert_float.exact_bf16 = True
    _convert_float.slow = slow
    interp._convert_float = _convert_float
    return True


EXACT_BF16_CASTS = exact_bfloat16_casts()


def flush_like_the_gpu() -> bool:
    """Let Triton's interpreter flush float32 subnormals where compiled kernels do:
    ``tl.exp2`` compiles to ``ex2.approx.ftz.f32`` (a result below 2^-126 is 0) and
    ``tl.sqrt`` to ``sqrt.approx.ftz.f32`` (a subnormal operand reads as a zero of its
    sign), read in the sm_90 PTX of Triton 3.6 and 3.9; the interpreter's NumPy keeps
    subnormals. So followed, it gave the MCC loss inf where a GPU does (see
    ``_finalize_kernels._mcc``). ``tl.exp``, ``tl.sqrt_rn`` and the rest are left as they
    are. Returns whether it took effect; ``tests/test_kernels_float_edges.py`` checks the
    flushes."""
    builder = getattr(_interpreter(), "InterpreterBuilder", None)
    if builder is None or getattr(builder.create_exp2, "ftz", False):
        return builder is not None
    import numpy as np

    tiny = np.float32(np.finfo(np.float32).tiny)

    def flushed(data):
        if data.dtype != np.float32:
            return data
        return np.where(np.abs(data) < tiny, np.copysign(np.float32(0.0), data), data)

    exp2, sqrt = builder.create_exp2, builder.create_sqrt

    def create_exp2(self, arg):
        out = exp2(self, arg)
        out.data = flushed(out.data)
        return out

    def create_sqrt(self, arg):
        return sqrt(self, type(arg)(flushed(arg.data), arg.dtype))

    for fn, slow in ((create_exp2, exp2), (create_sqrt, sqrt)):
        fn.ftz, fn.slow = True, slow
    builder.create_exp2, builder.create_sqrt = create_exp2, create_sqrt
    return True


FLUSHED_LIKE_THE_GPU = flush_like_the_gpu()


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, so a failure shows it); SEGTRITON_SEED fixes it."""
    value = int(os.environ.get("SEGTRITON_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={value} (rerun with SEGTRITON_SEED={value})")
    return value


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark tests (tests/test_benchmarks.py) with pytest-benchmark",
    )


# Files whose tests run child processes for minutes (a child pytest under the default
# tiles, one child per kernel knob, the sm_90 builds of every case, mypy): collected first,
# xdist starts them first, so that none of them runs alone on one worker at the end
RUN_FIRST = ("test_kernels_stages.py", "test_compile.py", "test_types.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-xdist (bench/gpu_run.sh uses it on the GPU) needs the same test ids in every
    # worker: an id built from an object's repr holds its address and differs per process
    unstable = [item.nodeid for item in items if " at 0x" in item.nodeid]
    if unstable:
        raise pytest.UsageError(f"test ids hold memory addresses (give ids=): {unstable[:3]}")
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: same order everywhere
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="a benchmark: run with pytest --benchmark")
    for item in items:
        if any(name.startswith("benchmark_case") for name in item.fixturenames):
            item.add_marker(skip)
