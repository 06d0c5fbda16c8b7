"""Shared pieces of the NCHW kernels: addressing ``[B, C, *S]`` tensors as ``[B, C, S]`` with
three strides, tile sizes, numerically safe elementwise helpers, and the grad-output scale.

A tile is ``[BLOCK_C classes, BLOCK_P pixels]`` of one image: element ``(c, s)`` of image b
sits at ``b * stride_b + c * stride_c + s * stride_s``. Contiguous NCHW / NCDHW
(``stride_s = 1``) and channels_last (``stride_c = 1``) both qualify, so no copy is made;
only layouts whose spatial dims cannot be merged into one stride are made contiguous.
Offsets are int64 so tensors past 2^31 elements are addressed correctly.
"""

from __future__ import annotations

import functools
import itertools
import math
import os

import torch
import triton
import triton.language as tl

from segtriton.reference._common import RESERVED_IGNORE

from ._runtime import COLUMN_READ_TRANSPOSED, WALK_LABEL_BUG, interpreter_enabled, kernel_jit


def _max_tile() -> int:
    """fp32 elements of one [classes, pixels] tile: 2048 (8 per thread at 8 warps) unless
    ``SEGTRITON_MAX_TILE`` names another power of two, read once at import (to compare tile
    rules on a GPU; the tile fixes the order of the partial sums, so results are bitwise
    reproducible for a given value). At 8192 the region kernels spilled registers on sm_90
    (``segtriton compile`` reports it)."""
    value = int(os.environ.get("SEGTRITON_MAX_TILE", "2048"))
    if value < 256 or value & (value - 1):
        raise ValueError(f"SEGTRITON_MAX_TILE must be a power of two >= 256, got {value}")
    return value


def _knob_in(name: str, default: int, low: int, high: int) -> int:
    """The integer environment variable ``name`` (``default`` when unset), within
    ``[low, high]``; read at import."""
    value = int(os.environ.get(name, str(default)))
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low} to {high}, got {value}")
    return value


def _stages() -> int:
    """Software-pipelining depth of the pixel-tile loops: 1 (the default) loads each tile
    when it is used, one tile per program; 2 to 8 make each program loop over
    ``TILES_PER_PROGRAM`` tiles with ``tl.range(num_stages=STAGES)``, so Triton copies the
    next tiles to shared memory (cp.async) while the current one is computed: more bytes in
    flight per SM than registers alone hold. Read once from ``SEGTRITON_STAGES`` at import,
    to be compared on a GPU (``bench/gpu_run.sh lease``); partial sums, and so results, are
    bitwise reproducible for a given value."""
    return _knob_in("SEGTRITON_STAGES", 1, 1, 8)


def _chunk() -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)`` of a streamed class chunk: (1, 512) unless ``SEGTRITON_CHUNK``
    names two powers of two ``"C,P"`` (P raised to 16 if smaller), read once at import (to
    compare on a GPU). A chunk of one class is a walk over class rows: each thread keeps
    running sums for its own pixels, and no class sum crosses the warps of a tile."""
    value = os.environ.get("SEGTRITON_CHUNK", "1,512")
    parts = value.split(",")
    sizes = [int(v) for v in parts if v.strip().isdigit()]
    if len(parts) != 2 or len(sizes) != 2 or any(v < 1 or v & (v - 1) for v in sizes):
        raise ValueError(f"SEGTRITON_CHUNK must be two powers of two 'C,P', got {value!r}")
    return sizes[0], max(16, sizes[1])


def _max_single_c() -> int:
    """Most classes one ``[classes, pixels]`` tile holds: 1 unless
    ``SEGTRITON_MAX_SINGLE_C`` says (1 to 256, read once at import); above it classes are
    streamed in :data:`CHUNK` tiles. On an H200 (``bench/probe.py``, bf16 fwd+bwd at the
    targets' shapes, 2026-12-04) walking class rows in chunks of one class by 512 pixels
    took CE at C = 19 and 150 from 2.50 and 15.2 ms with whole-class tiles (the old
    default, 256) to 0.67 and 2.14 ms, Dice from 2.49 and 12.9 ms to 1.01 and 4.55 ms:
    the class sums of a whole-class tile are reductions across its warps."""
    return _knob_in("SEGTRITON_MAX_SINGLE_C", 1, 1, 256)


def _unroll() -> tuple[int, int]:
    """Unroll factors of the class walks (``tl.range(loop_unroll_factor=...)``), ``(the CE
    / softmax focal kernel's statistics walk's, every other walk's)``, the walks that write
    the gradient in chunks of :data:`WRITE_ROWS` aside: ``(4, 1)`` unless ``SEGTRITON_UNROLL``
    names one factor for all or the two as ``"A,B"`` (each 1 to 8), read once at import.
    On an H200 (bf16 fwd+bwd at the targets' shapes, CUDA-graph replays, 2026-12-04-lease3)
    unrolling every walk 4 times took CE from 0.252 and 1.93 ms to 0.234 and 1.68 ms and
    Dice from 0.474 and 3.77 ms to 0.537 and 4.22 ms, when the walks that write the
    gradient still loaded a row after storing the last (:data:`WRITE_ROWS`);
    ``bench/probe.py`` had found a plain CE walk 1.02-1.19x faster unrolled. Under Triton
    < 3.7 unrolled walks do not build on 8- or 16-bit labels (``_runtime.WALK_LABEL_BUG``):
    see :func:`softmax_unroll`."""
    value = os.environ.get("SEGTRITON_UNROLL", "4,1")
    parts = value.split(",")
    factors = [int(v) for v in parts if v.strip().isdigit()]
    if len(factors) != len(parts) or len(parts) > 2 or not all(1 <= v <= 8 for v in factors):
        raise ValueError(f"SEGTRITON_UNROLL must be 1 to 8, or two such as 'A,B', got {value!r}")
    return factors[0], factors[-1]


def _write_rows() -> int:
    """Class rows a gradient-writing walk (CE / softmax focal's second walk, the region
    losses' pass 2 on labels) loads at once, as one ``[rows, pixels]`` chunk: 4 unless
    ``SEGTRITON_WRITE_ROWS`` names 1, 2, 4 or 8, read once at import. A walk that loads
    a row and stores its gradient before it loads the next has one load in flight per
    thread: the compiler keeps a load after an earlier store, as nothing tells it the
    gradient is not the logits (sm_90 SASS of the row walk, unrolled or not). A chunk's
    loads are issued before any of its stores. Timed by the lease against 1 and 8."""
    value = os.environ.get("SEGTRITON_WRITE_ROWS", "4")
    if value not in ("1", "2", "4", "8"):
        raise ValueError(f"SEGTRITON_WRITE_ROWS must be 1, 2, 4 or 8, got {value!r}")
    return int(value)


def _column_classes() -> int:
    """Most classes the CE / softmax focal kernel holds as one column in registers
    (:func:`column_tiles`; on NCHW half as many with label smoothing; the region losses'
    two passes on hard labels at most 24 of them, ``region.REGION_COLUMN``): 32 unless
    ``SEGTRITON_COLUMN`` names 0 (never) to 32, read once at import. Above it, and where
    neither pixels nor classes are contiguous, the kernels walk the class rows (CE:
    twice, statistics then gradient; each region pass: twice, the softmax then its sums
    or writes)."""
    return _knob_in("SEGTRITON_COLUMN", 32, 0, 32)


def _column_pixels() -> int:
    """Pixels of a column tile (:func:`column_tiles`): 0, the default, takes ``32 *
    COLUMN_WARPS * VEC`` (256, or 512 up to 4 classes, 128 on channels_last); else
    ``SEGTRITON_COLUMN_PIXELS`` names a power of two from 64 to 2048, read once at
    import, and the warps follow (one at least, 32 at most: past that a thread takes
    more pixels). tests/conftest.py sets 1024 in Triton's interpreter, where a tile costs
    one NumPy call per op whatever its size (Dice at 1x2x256x256 took 5.3 s a fwd+bwd
    there at 512 pixels, 2.8 s at 1024)."""
    value = _knob_in("SEGTRITON_COLUMN_PIXELS", 0, 0, 2048)
    if value and (value < 64 or value & (value - 1)):
        raise ValueError(f"SEGTRITON_COLUMN_PIXELS must be 0 or a power of two >= 64, got {value}")
    return value


def _hist_bins() -> int:
    """Most bins the confusion matrix's private histogram of every cell may take
    (``metrics.py``: ``C * C + 2`` of them, rounded up to a power of two; past that,
    integer atomics): 1024 (C up to 31) unless ``SEGTRITON_HIST_BINS`` names 0 (always
    atomics) to 4096, read once at import. The lease times 0 against the default at
    C = 19."""
    return _knob_in("SEGTRITON_HIST_BINS", 1024, 0, 4096)


def _flat() -> bool:
    """Whether elementwise losses read channels_last logits and masks as flat ranges
    (:func:`flat_layout`): yes unless ``SEGTRITON_FLAT`` is 0, read once at import (the
    lease sets 0 to time the class-row walks against the flat reads)."""
    return bool(_knob_in("SEGTRITON_FLAT", 1, 0, 1))


MAX_TILE = _max_tile()
STAGES = _stages()
TILES_PER_PROGRAM = 1 if STAGES == 1 else 8
CHUNK = _chunk()  # (BLOCK_C, BLOCK_P) when classes are streamed
_NO_LABEL = tl.constexpr(RESERVED_IGNORE)  # ignore_index=None on integer labels (``ignored``)
MAX_SINGLE_C = _max_single_c()  # above this, classes are streamed in chunks (online softmax)
UNROLL = _unroll()  # (the CE / softmax focal statistics walk, every other walk)
WRITE_ROWS = _write_rows()  # class rows per chunk of a walk that writes the gradient
COLUMN_CLASSES = _column_classes()  # most classes of a column tile (CE, softmax focal)
COLUMN_WARPS = 4
COLUMN_PIXELS = _column_pixels()  # 0: 32 * COLUMN_WARPS * VEC
FLAT = _flat()  # channels_last masks and logits as flat ranges (BCE, sigmoid focal)
HIST_BINS = _hist_bins()  # the confusion matrix's private histograms, at most
# the class walks' ``loop_unroll_factor``: None (no attribute, as a plain loop) for 1
WALK_UNROLL = tl.constexpr(None if UNROLL[1] == 1 else UNROLL[1])


def _narrow_walk_bug(labels: torch.Tensor) -> bool:
    """Whether this Triton cannot build a class walk that compares with ``labels``: 8- or
    16-bit labels under Triton < 3.7 (``_runtime.WALK_LABEL_BUG``)."""
    return WALK_LABEL_BUG and labels.element_size() < 4


def write_rows(*pixel_strides: int) -> int:
    """Rows per chunk of a gradient-writing walk (:data:`WRITE_ROWS`) over logits and a
    gradient whose pixels lie ``pixel_strides`` apart: 1 unless all are contiguous (in
    channels_last, a chunk's contiguous axis would be its classes, not its pixels)."""
    return WRITE_ROWS if all(s == 1 for s in pixel_strides) else 1


def softmax_unroll(labels: torch.Tensor, pixel_stride: int) -> int | None:
    """The ``loop_unroll_factor`` of the CE / softmax focal kernel's statistics walk (and of
    the confusion matrix's argmax walk, as light) for a launch reading ``labels`` and
    logits whose pixels lie ``pixel_stride`` apart:
    ``UNROLL[0]`` (None for 1) on contiguous pixels (the layout timed), else None. None
    too where an unrolled walk does not build (8- or 16-bit labels under Triton < 3.7,
    ``_runtime.WALK_LABEL_BUG``). Compiled for sm_90 under Triton 3.6, unrolled
    channels_last walks reached 128 registers and spilled 16-24 bytes."""
    if UNROLL[0] == 1 or pixel_stride != 1 or _narrow_walk_bug(labels):
        return None
    return UNROLL[0]


def _spatial_merges(x: torch.Tensor) -> bool:
    """Whether the spatial dims of ``x [B, C, *S]`` can be walked with one stride: each
    dim's stride is the next one's times its size, size-1 dims (any stride) left out."""
    sizes, strides = x.shape, x.stride()
    dims = [i for i in range(2, x.dim()) if sizes[i] != 1]
    return all(strides[a] == strides[b] * sizes[b] for a, b in itertools.pairwise(dims))


def pixel_view(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """``(x', stride_b, stride_c, stride_s)`` addressing ``x [B, C, *S]`` as ``[B, C, S]``;
    ``x'`` is ``x``, or a contiguous copy when its spatial dims cannot be merged."""
    if not _spatial_merges(x):
        x = x.contiguous()
    sizes, strides = x.shape, x.stride()
    spatial = [i for i in range(2, x.dim()) if sizes[i] > 1]
    stride_s = strides[spatial[-1]] if spatial else 1
    return x, strides[0], strides[1], stride_s


def grad_like(logits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised gradient for ``logits`` (in ``dtype``, by default theirs) that a
    kernel can write through :func:`pixel_view` without a copy: the logits' layout
    (``empty_like``: contiguous NCHW, channels_last, or the dense order of a sliced input)
    when its spatial dims merge, else contiguous (a buffer that pixel_view copied would
    take the kernel's writes and be dropped, as a spatially transposed input once
    showed)."""
    grad = torch.empty_like(logits, dtype=dtype)
    return (
        grad
        if _spatial_merges(grad)
        else torch.empty(logits.shape, dtype=grad.dtype, device=logits.device)
    )


def label_view(y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``(y', stride_b, stride_s)`` addressing labels ``[B, *S]`` as ``[B, S]``."""
    y, sb, _, ss = pixel_view(y.unsqueeze(1))
    return y, sb, ss


def loss_views(
    logits: torch.Tensor, target: torch.Tensor, labels: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int, int, int]]:
    """``(x, t, (sxb, sxc, sxs, stb, stc, sts))``: logits ``[B, C, S]`` and labels ``[B, S]``
    (``stc`` 0) or masks ``[B, C, S]`` (bool read as uint8) as a kernel addresses them."""
    x, sxb, sxc, sxs = pixel_view(logits)
    if labels:
        t, stb, sts = label_view(target)
        stc = 0
    else:
        t, stb, stc, sts = pixel_view(
            target.view(torch.uint8) if target.dtype == torch.bool else target
        )
    return x, t, (sxb, sxc, sxs, stb, stc, sts)


def walk_labels(
    t: torch.Tensor, strides: tuple[int, int, int, int, int, int]
) -> tuple[torch.Tensor, tuple[int, int, int, int, int, int]]:
    """Labels ``t`` and the strides from :func:`loss_views` for a kernel that walks class
    rows where Triton < 3.7 cannot build that walk on 8- or 16-bit labels
    (``_runtime.WALK_LABEL_BUG``): there such labels widened to int32 (a copy of the
    labels, never of the logits), else as given. The caller says where it is needed."""
    if not _narrow_walk_bug(t):
        return t, strides
    t, stb, sts = label_view(t.squeeze(1).to(torch.int32))
    return t, (*strides[:3], stb, 0, sts)


def ignore_arg(ignore_index: float | None, labels: bool) -> tuple[int | float, bool]:
    """``(value, has_ignore)`` to pass a kernel: an int for integer labels (``RESERVED_IGNORE``
    for None; ``check_ignore_index`` refuses it as a user value), a float for masks
    (``has_ignore`` False for None)."""
    if ignore_index is None:
        return (RESERVED_IGNORE if labels else 0.0), False
    return (int(ignore_index) if labels else float(ignore_index)), True


@functools.lru_cache(maxsize=64)
def _rounded(value: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def ignore_value(
    ignore_index: float | None, target: torch.Tensor, labels: bool
) -> int | float | None:
    """``ignore_index`` as the kernels compare it with the target: an int for labels; for
    masks (read as float32) a float, rounded to an fp16/bf16 mask's dtype first, as torch
    compares ``target != ignore_index`` in the mask's dtype (fp16 masks holding 0.3 match
    0.3)."""
    if ignore_index is None:
        return None
    if labels:
        return int(ignore_index)
    if target.dtype in (torch.float16, torch.bfloat16):
        return _rounded(float(ignore_index), target.dtype)
    return float(ignore_index)


def tile_pixels(block_c: int, least: int = 16) -> int:
    """BLOCK_P of a tile of ``block_c`` classes: MAX_TILE elements, within [least, 1024]."""
    return max(least, min(1024, MAX_TILE // block_c))


def class_blocks(C: int) -> tuple[int, int, bool]:
    """``(BLOCK_C, BLOCK_P, single)``: one tile holds every class when C <= MAX_SINGLE_C."""
    if C <= MAX_SINGLE_C:
        block_c = next_pow2(C)
        return block_c, tile_pixels(block_c), True
    return (*CHUNK, False)


def num_warps_for(block_c: int, block_p: int) -> int:
    """About 8 fp32 tile elements per thread, 4 to 16 warps. At C = 150 the [256, 16] tile
    thus gets 16 warps, which on sm_90 took the region gradient from 190 registers to at
    most 104 (every variant)."""
    return min(16, max(4, block_c * block_p // 256))


def walk_vector(block_c: int, block_p: int) -> int:
    """Pixels a thread holds in a one-row walk of ``block_p`` pixels in a launch of
    ``[block_c, block_p]`` tiles (:func:`num_warps_for`): the VEC of :func:`runs_of`."""
    return max(1, block_p // (32 * num_warps_for(block_c, block_p)))


@triton.jit
def runs_of(offs, VEC: tl.constexpr):
    """``offs`` (contiguous pixel offsets), the same values written as ``offs // VEC * VEC
    + offs % VEC``, which Triton's axis analysis reads as contiguous in runs of VEC only.
    A chunk of several class rows addressed from them is then loaded VEC pixels a thread,
    as a one-row walk of the same pixels is (:func:`walk_vector`), and keeps that walk's
    layout: the per-pixel values of the walk reach it with no layout conversion, and no
    warp splits the rows (from its own 16-byte runs the compiler would give a [4, 512]
    bf16 chunk 8 pixels a thread and 2 warps along the rows: on sm_90 CE's gradient walk
    then took 92 registers, against 56)."""
    return offs // VEC * VEC + offs % VEC


def sum_partials(partials: torch.Tensor) -> torch.Tensor:
    """Fixed-order sum of per-program partial sums (deterministic, no float atomics)."""
    return partials.sum(dtype=torch.float32)


@triton.jit
def label_values(y):
    """Loaded integer labels in a dtype that holds them and the bounds they are tested
    against (negative ones too): 64-bit and uint32 labels become int64 (uint64 read as int64,
    as the reference reads it), narrower ones int32."""
    if y.dtype == tl.int64 or y.dtype == tl.uint64 or y.dtype == tl.uint32:
        return y.to(tl.int64)
    else:
        return y.to(tl.int32)


@triton.jit
def ignored(y, ignore_index):
    """Which labels ``y`` (from :func:`label_values`) equal ``ignore_index`` (none for
    ``RESERVED_IGNORE``, which no user value equals): int64 labels past int32 are not truncated
    into classes. Both tests are on ``y``: ``ignore_index`` may be a constexpr."""
    return (y == ignore_index) & (y != _NO_LABEL)


@triton.jit
def pixel_block(pid, n_pblocks, S, BLOCK_P: tl.constexpr, VEC: tl.constexpr = 1):
    """Program ``pid`` of a ``B * n_pblocks`` grid: its image b (int64, so that ``b`` times
    an image stride past 2^31 does not wrap) and int64 pixel offsets, and their mask
    (``offs_p < S``); with VEC > 1 the offsets are :func:`runs_of` VEC. The quotient is
    taken in int32, where a tile index fits (2^31 tiles would be 2^40 pixels): a 64-bit
    division is a subroutine call in SASS."""
    p = pid.to(tl.int32)
    b = p // n_pblocks
    offs = tl.arange(0, BLOCK_P)
    if VEC > 1:
        offs = runs_of(offs, VEC)
    offs_p = (p % n_pblocks).to(tl.int64) * BLOCK_P + offs.to(tl.int64)
    return b.to(tl.int64), offs_p, offs_p < S


def spatial_size(x: torch.Tensor) -> int:
    """Pixels per map of ``x [B, C, *S]`` (or of a ``[B, R, S]`` view): ``prod(S)``,
    without the host cost of making the ``x[0, 0]`` view to count them."""
    return math.prod(x.shape[2:])


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for b > 0. ``triton.cdiv`` is a constexpr function that costs
    microseconds per host call; the launch wrappers call this many times per loss."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (``triton.next_power_of_2`` without its
    host-call cost)."""
    return 1 << (n - 1).bit_length()


PROBS_IN = 2  # added to an activation code for an input of probabilities (from_logits=False)


def activation(multiclass: bool, from_logits: bool) -> int:
    """An activation code for the ops: 1 for a softmax over the classes (multiclass), 0 for
    a sigmoid per channel, plus ``PROBS_IN`` for none (the input is ``p`` itself)."""
    return int(multiclass) + (0 if from_logits else PROBS_IN)


def activation_flags(act: int) -> tuple[bool, bool, bool]:
    """``(multiclass, softmax, probabilities)`` of an :func:`activation` code: the kernels'
    SOFTMAX is a multiclass input of logits."""
    multiclass, probs = act % PROBS_IN == 1, act >= PROBS_IN
    return multiclass, multiclass and not probs, probs


CHUNK_PROGRAMS = 1024  # programs of a chunked reduction (each sums a run of pixel tiles)
FINALIZE_BLOCK = 1024  # widest class or image block of a finalize kernel


def finalize_block(n: int) -> int:
    """Block of ``n`` classes or images in a finalize kernel (the region losses' single
    program, the Wasserstein loss's program per image): ``next_pow2(n)`` up to
    ``FINALIZE_BLOCK``, past which the kernel loops over blocks."""
    return min(FINALIZE_BLOCK, next_pow2(n))


def tile_chunks(S: int, block_p: int, B: int, more: int = 1) -> tuple[int, int]:
    """``(tiles_per_chunk, n_chunks)``: the ``cdiv(S, block_p)`` pixel tiles of an image
    cut into runs, so that about ``more * CHUNK_PROGRAMS`` programs cover the batch."""
    n_tiles = cdiv(S, block_p)
    tiles_per_chunk = cdiv(n_tiles, min(n_tiles, max(1, more * CHUNK_PROGRAMS // B)))
    return tiles_per_chunk, cdiv(n_tiles, tiles_per_chunk)


def program_count(n_blocks: int) -> int:
    """Programs that cover ``n_blocks`` pixel tiles, ``TILES_PER_PROGRAM`` each."""
    return cdiv(n_blocks, TILES_PER_PROGRAM)


def tile_grid(x: torch.Tensor) -> tuple[int, int, int, int, int, tuple[int, int, bool]]:
    """``(C, S, n_pblocks, n_blocks, n_programs, class_blocks(C))`` of a launch over
    logits ``x`` viewed as ``[B, C, S]``: pixel tiles holding every class (or its chunks),
    ``TILES_PER_PROGRAM`` of them per program (:func:`program_tile`)."""
    B, C = x.shape[:2]
    S = spatial_size(x)
    blocks = class_blocks(C)
    n_pblocks = cdiv(S, blocks[1])
    n_blocks = B * n_pblocks
    return C, S, n_pblocks, n_blocks, program_count(n_blocks), blocks


def walk_tiles(x: torch.Tensor) -> tuple[int, int, int, int, int, tuple[int, int, bool], int, int]:
    """:func:`tile_grid` of a launch over logits ``x`` with the ``VEC`` of its walks
    (:func:`walk_vector`) and its warps (:func:`num_warps_for`) appended."""
    grid = tile_grid(x)
    block_c, block_p, _ = grid[-1]
    return (*grid, walk_vector(block_c, block_p), num_warps_for(block_c, block_p))


def column_tiles(
    x: torch.Tensor, smooth: bool, class_stride: int, pixel_stride: int, most: int = COLUMN_CLASSES
) -> tuple[int, int, int, int, int, tuple[int, int, bool], int, int] | None:
    """:func:`tile_grid` of a launch over logits ``x`` with these strides (the gradient
    takes their layout, :func:`grad_like`; any layout is correct, this picks the fast
    one), with its ``VEC`` and warps appended (as :func:`walk_tiles`), when a tile holds
    the whole class column of its pixels: contiguous pixels (NCHW) or contiguous classes
    (channels_last, :func:`class_fast`), and C at most ``most`` (CE / softmax focal:
    :data:`COLUMN_CLASSES`); on NCHW half that with label smoothing, ``smooth``, whose
    class sum over the logits kept a second copy of them live (CE: 167 registers at C =
    32 on sm_90, against 96; on channels_last, one pixel a thread, 122 in bf16 with
    class weights, where the walks took 128 and spilled in fp32); else None.

    Such a tile is ``[next_pow2(C), 32 * COLUMN_WARPS * VEC]``: each thread holds all
    classes of VEC pixels (:func:`runs_of`), so every sum over the classes stays in its
    registers, and the logits are read once for the loss and the gradient. On NCHW, VEC
    is 4 up to 4 classes, else 2: compiled for sm_90, a thread's per-pixel state cost
    more registers than its classes did (at C = 8, 40 registers with 2 pixels, 72 with
    4). On channels_last it is 1: neighbouring threads then read pixels ``C`` elements
    apart, not ``VEC C``. ``SEGTRITON_COLUMN_PIXELS`` sets another width
    (:data:`COLUMN_PIXELS`)."""
    B, C = x.shape[:2]
    fast = class_fast(C, class_stride)
    if smooth and not fast:
        most //= 2
    if most < C or not (pixel_stride == 1 or fast):
        return None
    vec = 1 if fast else 4 if C <= 4 else 2
    warps = COLUMN_WARPS
    if COLUMN_PIXELS:
        warps = min(32, max(1, COLUMN_PIXELS // (32 * vec)))
        vec = max(vec, COLUMN_PIXELS // (32 * warps))
    block_c, block_p = next_pow2(C), 32 * warps * vec
    S = spatial_size(x)
    n_pblocks = cdiv(S, block_p)
    n_blocks = B * n_pblocks
    return (
        C, S, n_pblocks, n_blocks, program_count(n_blocks), (block_c, block_p, True), vec,
        warps,
    )  # fmt: skip


def class_fast(C: int, class_stride: int) -> bool:
    """Whether a column tile (:func:`column_tiles`) reads ``[pixels, classes]``, each
    pixel's classes contiguous (channels_last: class stride 1, more than one class); the
    kernels' ``CLASS_FAST`` (:func:`column_classes`)."""
    return C > 1 and class_stride == 1


def flat_layout(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether an elementwise kernel can read logits ``x [B, C, *S]`` and ``others`` (of
    their shape, or None) as one flat range each (:func:`flat_view`): ``x`` dense with its
    classes fastest (:func:`class_fast`: channels_last, any spatial order), every other in
    the same strides. Element i of each is then class ``i mod C``, and runs of them load
    whole vectors, where a walk over class rows reads elements ``C`` apart. Never with
    ``SEGTRITON_FLAT=0`` (:data:`FLAT`)."""
    return (
        FLAT
        and class_fast(x.shape[1], x.stride(1))
        and is_dense(x)
        and all(o.stride() == x.stride() for o in others if o is not None)
    )


def is_dense(x: torch.Tensor) -> bool:
    """Whether ``x`` fills ``x.numel()`` consecutive elements, each once: its strides, in
    increasing order, are 1 and the running products of the sizes (size-1 dims left out)."""
    expected = 1
    dims = zip(x.stride(), x.shape, strict=True)
    for stride, size in sorted((stride, size) for stride, size in dims if size != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_view(x: torch.Tensor) -> torch.Tensor:
    """A dense tensor's storage as ``[1, 1, numel]``, in storage order (``flat_layout``)."""
    n = x.numel()
    return x.as_strided((1, 1, n), (n, n, 1))


_READ_TRANSPOSED = tl.constexpr(COLUMN_READ_TRANSPOSED)


@triton.jit
def column_classes(BLOCK_C: tl.constexpr, CLASS_FAST: tl.constexpr):
    """int64 class offsets of a column tile (``c * stride_c`` can pass 2^31). With
    CLASS_FAST they are marked as not contiguous: the compiler then lays a tile out as
    it does on NCHW, a pixel's classes in one thread (the read order of
    :func:`load_column` settles the tie), where contiguous classes made it spread them
    over a warp's lanes and sum them with shuffles (sm_90, CE at C = 19 bf16: 255
    registers and 712 bytes of spill, against 47)."""
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    if CLASS_FAST:
        offs_c = tl.max_contiguous(offs_c, 1)
    return offs_c


@triton.jit
def load_column(ptr, b, offs_c, offs_p, cmask, pmask, sb, sc, ss, CLASS_FAST: tl.constexpr):
    """The ``[classes, pixels]`` tile of image b at ``offs_c`` (:func:`column_classes`),
    ``offs_p``, 0 where masked. With CLASS_FAST under Triton < 3.7 it is read as
    ``[pixels, classes]`` and transposed (free in registers), so that the compiler puts
    the pixels, not the classes, across the threads; from 3.7 the straight read does
    that (``_runtime.COLUMN_READ_TRANSPOSED``)."""
    if CLASS_FAST and _READ_TRANSPOSED:
        ptrs = ptr + b * sb + offs_p[:, None] * ss + offs_c[None, :] * sc
        tile = tl.trans(tl.load(ptrs, mask=pmask[:, None] & cmask[None, :], other=0.0))
    else:
        ptrs = ptr + b * sb + offs_c[:, None] * sc + offs_p[None, :] * ss
        tile = tl.load(ptrs, mask=cmask[:, None] & pmask[None, :], other=0.0)
    return tile


@triton.jit
def store_column(
    ptr, value, b, offs_c, offs_p, cmask, pmask, sb, sc, ss, CLASS_FAST: tl.constexpr
):  # fmt: skip
    """Stores a ``[classes, pixels]`` tile as :func:`load_column` reads one."""
    value = value.to(ptr.dtype.element_ty)
    if CLASS_FAST and _READ_TRANSPOSED:
        ptrs = ptr + b * sb + offs_p[:, None] * ss + offs_c[None, :] * sc
        tl.store(ptrs, tl.trans(value), mask=pmask[:, None] & cmask[None, :])
    else:
        ptrs = ptr + b * sb + offs_c[:, None] * sc + offs_p[None, :] * ss
        tl.store(ptrs, value, mask=cmask[:, None] & pmask[None, :])


@triton.jit
def program_tile(
    pid, i, n_blocks, n_pblocks, S, TILES: tl.constexpr, BLOCK_P: tl.constexpr,
    VEC: tl.constexpr = 1,
):  # fmt: skip
    """Tile ``i`` of program ``pid`` (tiles ``pid * TILES ..`` of the ``n_blocks = B *
    n_pblocks`` grid): its image, pixel offsets (:func:`pixel_block`, VEC) and mask. A
    tile past the last one takes the last one's image and offsets, so loads indexed by
    image alone stay in bounds, and an empty mask."""
    blk = pid * TILES + i
    b, offs_p, pmask = pixel_block(tl.minimum(blk, n_blocks - 1), n_pblocks, S, BLOCK_P, VEC)
    # tested per pixel: Triton's interpreter rejects a vector mask & a scalar one
    return b, offs_p, pmask & (tl.zeros_like(offs_p) + blk < n_blocks)


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def fast_exp(x):
    """``e^x`` as ``2^(x log2(e))``. Compiled, that is one multiply and one MUFU.EX2, which
    flushes results below 2^-126 (1.2e-38) to 0; ``tl.exp`` takes four more instructions to
    keep them (sm_90 SASS). The kernels' exponentials are probabilities and softmax sums,
    where such a value changes nothing, and their hot loops are bound by instruction issue."""
    return tl.exp2(x * LOG2E)


_INTERPRETED = tl.constexpr(interpreter_enabled())  # no inline PTX there


@triton.jit
def _ptx_f32(x, ASM: tl.constexpr):
    """The float32 PTX instruction ``ASM`` (``$0`` its result, ``$1`` its operand) on x."""
    return tl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def fast_rcp(x):
    """``1 / x`` for normal ``x`` below 2^126: one MUFU.RCP (``rcp.approx.ftz.f32``, within
    1 ulp), where Triton's ``1.0 / x`` (``div.full.f32``) adds seven instructions that
    rescale huge and tiny divisors (sm_90 SASS). Compiled, a subnormal ``x`` gives inf and
    ``x`` past 2^126 gives 0; a plain division in Triton's interpreter (the kernels'
    divisors are softmax sums and the like, from 1 to a few hundred)."""
    if _INTERPRETED:
        r = 1.0 / x
    else:
        r = _ptx_f32(x, "rcp.approx.ftz.f32 $0, $1;")
    return r


@triton.jit
def fast_log2(x):
    """``log2(x)``: one MUFU.LG2 (``lg2.approx.ftz.f32``, absolute error about 2^-22),
    where ``tl.log2`` is a polynomial of some thirty instructions (sm_90 SASS). For logs
    whose size dwarfs that error, or that only shift an exponent: a softmax sum's (s >= 1),
    ``log(1 + r)`` past r = 1 (:func:`log1p_pos`), a power's base. Compiled, a subnormal
    ``x`` gives -inf; ``tl.log2`` in Triton's interpreter keeps it (of the arguments above
    only a focal power's base, ``1 - p``, can be one)."""
    if _INTERPRETED:
        r = tl.log2(x)
    else:
        r = _ptx_f32(x, "lg2.approx.ftz.f32 $0, $1;")
    return r


@triton.jit
def log1p_pos(r):
    """``log(1 + r)`` for ``r >= 0`` (NaN stays NaN, inf gives inf): up to r = 1 the atanh
    series of :func:`log1p_atanh` (a few ulps, however small r is), above it
    ``ln 2 log2(1 + r)`` by :func:`fast_log2`, whose absolute error is then tiny against
    the result (> ln 2). Both are evaluated and one picked: about fifteen instructions,
    where :func:`log1p` takes some forty (a precise log and a division)."""
    return tl.where(r <= 1.0, log1p_atanh(r * fast_rcp(2.0 + r)), fast_log2(1.0 + r) * LN2)


@triton.jit
def log1p(r):
    """``log(1 + r)`` for ``r > -1``, accurate where ``1 + r`` rounds (Kahan's trick)."""
    u = 1.0 + r
    same = u == 1.0
    return tl.where(same, r, tl.log(u) * r / tl.where(same, 1.0, u - 1.0))


@triton.jit
def log1p_atanh(u):
    """``log(1 + r)`` for ``0 <= r <= 1``, given ``u = r / (2 + r)`` in [0, 1/3], without a
    log: ``2 atanh(u)`` by its odd series to ``u^13`` (the next term is below 2e-8 of the
    sum), eight multiply-adds where :func:`log1p` takes about thirty instructions on
    sm_90 (the log alone is a 22-instruction polynomial)."""
    u2 = u * u
    h = u2 * (1.0 / 13.0) + (1.0 / 11.0)
    h = h * u2 + (1.0 / 9.0)
    h = h * u2 + (1.0 / 7.0)
    h = h * u2 + (1.0 / 5.0)
    h = h * u2 + (1.0 / 3.0)
    return (u + u) * (h * u2 + 1.0)


@triton.jit
def grad_divisor(denom_ptr, DEFER_MEAN: tl.constexpr):
    """What the forward divides a 'mean' gradient by: the mean's denominator, or with
    DEFER_MEAN (see :func:`defers_mean`) 1, the backward dividing instead. 0 stays 0, so an
    entry of weight 0 under an all-zero denominator gets NaN, as 0/0 gives in torch."""
    d = tl.load(denom_ptr)
    if DEFER_MEAN:
        d = tl.where(d == 0, 0.0, 1.0)
    return d


def defers_mean(logits: torch.Tensor, reduction: str) -> bool:
    """Whether the forward writes a 'mean' gradient undivided (fp16 logits).

    Divided by the mean's denominator N, an fp16 gradient falls below fp16's normal range
    (6.1e-5) once N passes about 16K entries and loses its low bits; a loss scale applied
    later (``torch.amp.GradScaler``, 65536 at first) cannot restore them. Undivided, it
    keeps them, and the backward applies ``grad_output / N`` in fp32 (one more pass over
    the gradient, which a loss scale other than 1 costs anyway). bf16 has fp32's range."""
    return reduction == "mean" and logits.dtype == torch.float16


def applied_scale(grad: torch.Tensor, denom: torch.Tensor | None, defer: bool) -> torch.Tensor:
    """The factor by which a gradient the forward wrote exceeds dL/dz for grad_output 1:
    the mean's denominator (fp32 ``[1]``) where :func:`defers_mean`, else empty, which
    reads as 1 (nothing to allocate or fill per call) and, with no gradient written, as
    nothing to scale."""
    if grad.numel() and defer and denom is not None:
        return denom
    return grad.new_empty(0, dtype=torch.float32)


@kernel_jit
def _scale_kernel(
    g_ptr, out_ptr, gout_ptr, applied_ptr, kept_ptr, n, BLOCK: tl.constexpr,
    IN_PLACE: tl.constexpr, APPLIED: tl.constexpr,
):  # fmt: skip
    gout = tl.load(gout_ptr).to(tl.float32)
    factor = gout
    if APPLIED:
        applied = tl.load(applied_ptr)
        factor = gout / tl.where(applied == 0, 1.0, applied)
    if IN_PLACE and tl.program_id(0) == 0:
        tl.store(kept_ptr, gout)  # the factor the buffer holds from now on
    if not IN_PLACE or factor != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, (g * factor).to(out_ptr.dtype.element_ty), mask=mask)


def scale_grad(
    grad: torch.Tensor, grad_output: torch.Tensor, applied: torch.Tensor, first: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient buffer written in the forward, as ``grad_output`` times dL/dz, without a
    host sync, and the factor the buffer holds afterwards.

    ``applied`` (see :func:`applied_scale`: empty reads as 1, and so does a 0, for the
    buffer then holds only zeros and NaNs) is the factor the buffer holds, divided out
    first. The first backward through a graph (``first``) scales the buffer in place and
    returns it; programs exit at once when the factor is 1, and the same launch copies
    ``grad_output`` into a new 1-element tensor, returned as the buffer's factor from then
    on (a copy: the caller may change its grad_output later). Later backwards
    (``retain_graph=True``) write a new tensor and leave the buffer as it is, since the
    first one handed it out; they return ``applied``. A first grad_output of exactly 0
    zeroes the buffer, so later backwards through that graph give zeros too (telling
    would take a host sync or a recompute in every backward). The buffer is ours and
    dense (``empty_like`` of a dense input), so its storage is scaled as one flat range
    whatever its memory format, and ``empty_like`` keeps that format for a new one.
    """
    gout = grad_output.reshape(1)
    n = grad.numel()
    out = grad if first else torch.empty_like(grad)
    kept = torch.empty(1, dtype=torch.float32, device=grad.device) if first else applied
    grid = (cdiv(n, 4096),)
    _scale_kernel[grid](
        grad, out, gout, applied if applied.numel() else gout, kept, n, BLOCK=4096,
        IN_PLACE=first, APPLIED=applied.numel() > 0, num_warps=8,
    )  # fmt: skip
    return out, kept
