"""Benchmarks through pytest-benchmark: ``pytest --benchmark`` (skipped otherwise).

The cases are a sweep preset (``SEGTRITON_BENCH_PRESET``, default 'quick'); each round is
one call timed by CUDA events after an L2 flush in setup (on a CPU: the wall clock around
synchronous calls, and Triton cases are not timed). The case, GB/s and the fraction of the
measured copy bandwidth go to ``extra_info`` (correctness is the test suite's job, and
``segtriton sweep`` checks every row against float64); groups are loss and shape, so
``--benchmark-json``, ``--benchmark-compare`` and ``--benchmark-compare-fail=median:5%``
work as usual. Beside the presets: the confusion matrix against bincount and
torchmetrics, the distance transform against scipy and CuPy, signed maps from label maps
against the scipy reference, and the Lovasz sort's share.
"""

from __future__ import annotations

import functools
import os
import warnings

import pytest
import torch

from segtriton.bench.env import environment
from segtriton.bench.runner import (
    IGNORE_INDEX,
    case_inputs,
    graph_columns,
    loss_scale,
    make_provider,
    make_step,
)
from segtriton.bench.spec import DTYPES, LABEL_DTYPES, expand, load_spec, provider_options
from segtriton.bench.timing import copy_bandwidth
from segtriton.reference._common import value_checks
from segtriton.registry import confusion_bytes, get, minimal_bytes

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = expand(load_spec(os.environ.get("SEGTRITON_BENCH_PRESET", "quick")))


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    return copy_bandwidth(DEVICE)


@pytest.fixture(scope="session")
def versions() -> dict:
    info = environment()
    keys = ("segtriton", "torch", "triton", "gpu", "driver", "git_commit", "hist_bins")
    return {k: info.get(k) for k in keys}


@pytest.fixture(params=CASES, ids=lambda c: c.key.replace("|", "-"))
def benchmark_case(request):
    return request.param


def _cuda_rounds(benchmark):
    """On a GPU, time rounds with CUDA events and return an L2-flush ``setup`` for them;
    None on a CPU (the wall clock, no flush)."""
    if DEVICE.type != "cuda":
        return None
    from segtriton.bench.pytest_timer import CudaEventClock
    from segtriton.bench.timing import l2_flush

    benchmark._timer = CudaEventClock()
    return l2_flush(DEVICE)


def test_loss(benchmark, benchmark_case, copy_gbps, versions):
    case = benchmark_case
    if case.provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
    entry = get(case.loss)
    options = entry.ignoring(provider_options(case.provider, entry), IGNORE_INDEX)
    x, t = case_inputs(case, entry, options, DEVICE)
    xg = x.requires_grad_(case.mode != "fwd")
    fn = make_provider(case, entry)
    step = make_step(case.mode, lambda: fn(xg, t, **options), xg, loss_scale(case.dtype))
    setup = _cuda_rounds(benchmark)
    benchmark.group = f"{case.loss} {'x'.join(map(str, case.shape))} {case.dtype} {case.mode}"
    benchmark.pedantic(
        step,
        setup=setup,
        rounds=30,
        warmup_rounds=3,
        iterations=1,
    )
    nbytes = minimal_bytes(
        entry, case.shape, DTYPES[case.dtype], LABEL_DTYPES[case.label_dtype], case.mode, options
    )
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(case.as_row())
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(
        bytes=nbytes,
        gbps=nbytes / median / 1e9,
        pct_of_copy_bw=100 * nbytes / median / 1e9 / copy_gbps,
        copy_gbps=copy_gbps,
        device=str(DEVICE),
    )


# the shapes on a GPU; small ones where only the CPU baselines are timed
METRIC_SHAPES = (
    ([8, 19, 1024, 2048], [16, 150, 512, 512], [16, 59, 512, 512])
    if DEVICE.type == "cuda"
    else ([2, 19, 128, 256], [2, 150, 64, 64], [2, 59, 64, 64])
)
# multilabel: BraTS-like volumes, logits against three overlapping uint8 region masks
MASK_SHAPE = [4, 3, 128, 128, 128] if DEVICE.type == "cuda" else [1, 3, 24, 32, 32]
# kinds: random labels or logits; labels90, labels right on 90% of the pixels (a good
# model's matrix: C = 150 takes the Triton kernel's private diagonal, and C = 19 too
# under SEGTRITON_HIST_BINS=0, which the lease times); multilabel masks.
# C = 59 (PASCAL-Context): the atomic path, which took a 4096-bin histogram until 2026-12-06
METRIC_CASES = [  # (provider, preds kind, [B, C, *S], logits dtype)
    (provider, kind, shape, "bf16")
    for shape, kinds in ((METRIC_SHAPES[0], ("labels", "labels90", "logits")),
                         (METRIC_SHAPES[1], ("labels", "labels90", "logits")),
                         (METRIC_SHAPES[2], ("labels",)),
                         (MASK_SHAPE, ("masks",)))
    for kind in kinds
    for provider in ("triton", "bincount", "torchmetrics")
]  # fmt: skip


@pytest.fixture(params=METRIC_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}")
def benchmark_case_metric(request):
    return request.param


def test_confusion_matrix(benchmark, benchmark_case_metric, copy_gbps, versions):
    """The confusion matrix from labels or logits (fused argmax): Triton, the reference
    (argmax + bincount) and torchmetrics (argmax + MulticlassConfusionMatrix); of
    multilabel masks: Triton, the reference (torch ops; provider 'bincount') and
    torchmetrics' MultilabelConfusionMatrix. Triton's calls are also timed as CUDA-graph
    replays (``graph_median_ms``, ``graph_pct_of_copy_bw`` in ``extra_info``): a call
    moves tens of megabytes, so its event timing is mostly the host's launch time."""
    from segtriton import kernels as ker
    from segtriton import reference as ref

    provider, kind, shape, dtype = benchmark_case_metric
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
    B, C, *spatial = shape
    on = {"generator": torch.Generator(DEVICE).manual_seed(0), "device": DEVICE}
    mode = "multilabel" if kind == "masks" else "multiclass"
    if kind == "masks":
        target = (torch.rand(shape, **on) < 0.3).to(torch.uint8)
    else:
        target = torch.randint(0, C, (B, *spatial), **on)
    if kind.startswith("labels"):
        preds = torch.randint(0, C, (B, *spatial), **on)
        if kind == "labels90":
            preds = torch.where(torch.rand(preds.shape, **on) < 0.9, target, preds)
    else:
        preds = torch.randn(shape, **on).to(DTYPES[dtype])
    if provider == "triton":

        def fn():
            return ker.confusion_matrix(preds, target, C, 255, mode=mode, validate=False)

    elif provider == "bincount":

        def fn():
            with value_checks(False):
                return ref.confusion_matrix(preds, target, C, 255, mode=mode)

    elif kind == "masks":
        from torchmetrics.functional.classification import multilabel_confusion_matrix

        def fn():
            return multilabel_confusion_matrix(
                preds, target, C, ignore_index=255, validate_args=False
            )

    else:
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        def fn():
            p = preds.argmax(1) if kind == "logits" else preds
            return multiclass_confusion_matrix(p, target, C, ignore_index=255, validate_args=False)

    setup = _cuda_rounds(benchmark)
    benchmark.group = f"confusion_matrix {kind} {'x'.join(map(str, shape))}"
    benchmark.pedantic(
        fn,
        setup=setup,
        rounds=30,
        warmup_rounds=3,
        iterations=1,
    )
    nbytes = confusion_bytes(preds, target)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(
        provider=provider,
        preds=kind,
        shape="x".join(map(str, shape)),
        bytes=nbytes,
        gbps=nbytes / median / 1e9,
        pct_of_copy_bw=100 * nbytes / median / 1e9 / copy_gbps,
        device=str(DEVICE),
    )
    if provider == "triton":  # the GPU work alone, as the sweep times Triton rows too
        benchmark.extra_info.update(graph_columns(fn, DEVICE, 30, nbytes, copy_gbps))


# the EDT batches on a GPU; small ones where only scipy is timed
EDT_SHAPES = (
    ([8, 512, 512], [4, 1024, 1024], [2, 128, 128, 128])
    if DEVICE.type == "cuda"
    else ([2, 64, 64], [1, 16, 16, 16])
)


@pytest.fixture(
    params=[(p, s) for s in EDT_SHAPES for p in ("triton", "scipy", "cupy")],
    ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}",
)
def benchmark_case_edt(request):
    return request.param


def test_distance_transform(benchmark, benchmark_case_edt, versions):
    """Exact EDT of a batch of masks (the distance to the nearest foreground pixel):
    segtriton's Triton kernels, scipy on the CPU (one call per map) and CuPy (if there)."""
    from segtriton import kernels as ker

    provider, shape = benchmark_case_edt
    gen = torch.Generator().manual_seed(0)
    sites = torch.rand(shape, generator=gen) < 0.01
    if provider == "triton":
        if DEVICE.type != "cuda":
            pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
        masks = sites.to(DEVICE)
        fn = lambda: ker.squared_edt(masks)  # noqa: E731
    elif provider == "scipy":
        from scipy.ndimage import distance_transform_edt

        masks = (~sites).numpy()
        fn = lambda: [distance_transform_edt(m) for m in masks]  # noqa: E731
    else:
        cupyx = pytest.importorskip("cupyx.scipy.ndimage")
        import cupy

        if DEVICE.type != "cuda":
            pytest.skip("CuPy needs a GPU")
        masks = cupy.asarray((~sites).numpy())
        fn = lambda: [cupyx.distance_transform_edt(m) for m in masks]  # noqa: E731
    if provider != "scipy" and DEVICE.type == "cuda":
        from segtriton.bench.pytest_timer import CudaEventClock

        benchmark._timer = CudaEventClock()  # CuPy and torch share the legacy default stream
    benchmark.group = f"edt {'x'.join(map(str, shape))}"
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(provider=provider, shape="x".join(map(str, shape)))


# (labels shape, classes): label maps of smooth regions, as a segmentation target has
SIGNED_MAP_CASES = (
    (([4, 512, 512], 19), ([2, 128, 128, 128], 4))
    if DEVICE.type == "cuda"
    else (([2, 64, 64], 19),)
)


def _region_labels(shape: list[int], C: int, gen: torch.Generator) -> torch.Tensor:
    """int64 labels ``shape`` on DEVICE of regions about 32 pixels across: the argmax of
    coarse noise upsampled (bi- or trilinear)."""
    coarse = torch.randn(shape[0], C, *[max(2, s // 32) for s in shape[1:]], generator=gen)
    mode = "bilinear" if len(shape) == 3 else "trilinear"
    up = torch.nn.functional.interpolate(coarse, size=shape[1:], mode=mode, align_corners=False)
    return up.argmax(1).to(DEVICE)


@pytest.fixture(
    params=[(p, *c) for c in SIGNED_MAP_CASES for p in ("triton", "reference")],
    ids=lambda c: f"{c[0]}-C{c[2]}-{'x'.join(map(str, c[1]))}",
)
def benchmark_case_signed_map(request):
    return request.param


def test_signed_map_from_labels(benchmark, benchmark_case_signed_map, versions):
    """Every class's signed distance map from a batch of label maps: segtriton (labels
    read in place, both transforms, empty slabs skipped) against the reference (scipy on
    the CPU, two transforms per map, and the copies to and from the device)."""
    from segtriton import kernels as ker
    from segtriton import reference as ref

    provider, shape, C = benchmark_case_signed_map
    labels = _region_labels(shape, C, torch.Generator().manual_seed(0)).to(torch.uint8)
    if provider == "triton":
        if DEVICE.type != "cuda":
            pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
        from segtriton.bench.pytest_timer import CudaEventClock

        benchmark._timer = CudaEventClock()
        fn = lambda: ker.signed_distance_map(labels, C)  # noqa: E731
    else:
        fn = lambda: ref.signed_distance_map(labels, C)  # noqa: E731
    benchmark.group = f"signed map C{C} {'x'.join(map(str, shape))}"
    benchmark.pedantic(fn, rounds=10 if provider == "triton" else 3, warmup_rounds=1)
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(provider=provider, shape="x".join(map(str, shape)), classes=C)


SURFACE_METRICS = ("hd95", "assd", "nsd", "all")  # all: surface_metrics (Triton only)


@pytest.fixture(
    params=[
        (p, m, *c)
        for c in SIGNED_MAP_CASES
        for m in SURFACE_METRICS
        for p in ("triton", "reference", "monai")
        if (p != "reference" or m == "hd95")  # scipy per map: the same transforms for each
        and (p == "triton" or m != "all")
    ],
    ids=lambda c: f"{c[0]}-{c[1]}-C{c[3]}-{'x'.join(map(str, c[2]))}",
)
def benchmark_case_surface(request):
    return request.param


def test_surface_metrics(benchmark, benchmark_case_surface, versions):
    """HD95, ASSD and NSD (tolerance 2) of every (image, class) between two label maps of
    smooth regions: segtriton (surfaces from one label map each, the GPU EDT, grouped
    sorts; ``all``: the four metrics of ``surface_metrics`` in one call), the reference
    (scipy per map on the CPU; HD95 only) and MONAI's compute_hausdorff_distance,
    compute_average_surface_distance and compute_surface_dice on one-hot tensors."""
    from segtriton import kernels as ker
    from segtriton import reference as ref

    provider, metric, shape, C = benchmark_case_surface
    gen = torch.Generator().manual_seed(0)
    pred, target = (_region_labels(shape, C, gen) for _ in range(2))
    ours = {
        "hd95": {"fn": "hausdorff_distance", "percentile": 95},
        "assd": {"fn": "average_surface_distance"},
        "nsd": {"fn": "surface_dice", "tolerance": 2.0},
        "all": {"fn": "surface_metrics", "tolerance": 2.0},
    }[metric]
    name = ours.pop("fn")
    if provider == "triton":
        if DEVICE.type != "cuda":
            pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
        from segtriton.bench.pytest_timer import CudaEventClock

        benchmark._timer = CudaEventClock()
        fn = functools.partial(getattr(ker, name), pred, target, C, validate=False, **ours)
    elif provider == "reference":
        fn = functools.partial(getattr(ref, name), pred, target, C, **ours)
    else:
        metrics = pytest.importorskip("monai.metrics")
        one_hot = [torch.nn.functional.one_hot(t, C).movedim(-1, 1) for t in (pred, target)]
        fn = {
            "hd95": functools.partial(
                metrics.compute_hausdorff_distance, *one_hot, True, percentile=95
            ),
            "assd": functools.partial(
                metrics.compute_average_surface_distance, *one_hot, True, symmetric=True
            ),
            "nsd": functools.partial(
                metrics.compute_surface_dice, *one_hot, [2.0] * C, include_background=True
            ),
        }[metric]
    benchmark.group = f"{metric} C{C} {'x'.join(map(str, shape))}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns of every class missing from a map
        benchmark.pedantic(fn, rounds=5 if provider == "triton" else 2, warmup_rounds=1)
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(
        provider=provider, metric=metric, shape="x".join(map(str, shape)), classes=C
    )


LOVASZ_SHAPES = ([8, 19, 512, 1024], [16, 150, 512, 512])


@pytest.fixture(params=LOVASZ_SHAPES, ids=lambda s: "x".join(map(str, s)))
def benchmark_case_lovasz(request):
    return request.param


def test_lovasz_sort_share(benchmark, benchmark_case_lovasz, versions):
    """Triton Lovasz-softmax fwd+bwd (bf16, pooled rows) and, timed alone beside it, the
    loss's own sort calls (``sorted_groups``) on a key tensor of the same ``[C, B*H*W]``
    shape: ``extra_info`` gets ``sort_ms`` and ``sort_share`` (sort / whole step), and
    ``kernels``: ``[ms, launches, name]`` of the ten slowest kernels of one step under the
    profiler, so that the rest of the step is split too."""
    from segtriton import kernels as ker
    from segtriton.bench.timing import kernel_times, time_fn
    from segtriton.kernels.lovasz import sorted_groups

    if DEVICE.type != "cuda":
        pytest.skip("Triton runs in the CPU interpreter here: its speed means nothing")
    B, C, *spatial = shape = benchmark_case_lovasz
    on = {"generator": torch.Generator(DEVICE).manual_seed(0), "device": DEVICE}
    x = torch.randn(shape, **on).to(torch.bfloat16).requires_grad_(True)
    y = torch.randint(0, C, (B, *spatial), **on)
    keys = torch.rand(C, x[:, 0].numel(), device=DEVICE)
    sort = time_fn(lambda: list(sorted_groups(keys)), DEVICE, 10)
    step = lambda: torch.autograd.grad(ker.lovasz_softmax_loss(x, y), x)  # noqa: E731
    setup = _cuda_rounds(benchmark)
    benchmark.group = f"lovasz_softmax sort share {'x'.join(map(str, shape))}"
    benchmark.pedantic(step, setup=setup, rounds=10, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(versions)
    benchmark.extra_info.update(
        shape="x".join(map(str, shape)),
        sort_ms=sort["median_ms"],
        sort_share=sort["median_ms"] / (benchmark.stats.stats.median * 1e3),
        kernels=[[ms, n, name[:80]] for ms, n, name in kernel_times(step, DEVICE)[:10]],
    )
