"""The byte counter behind ``segtriton traffic`` (Triton interpreter only), and what it
says of the pixel-wise and region losses: they move what their byte model says, plus
small per-program partials (a few percent at the small shapes the interpreter affords,
less at full size), no torch op beside the kernels touches a logits-sized tensor, and a
forward without grad writes no gradient; and that the distance transform searches
nothing for a map without sites."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import KERNELS

from segtriton import kernels as ker
from segtriton.bench import traffic
from segtriton.bench.cli import main
from segtriton.kernels import interpreter_enabled
from segtriton.kernels._runtime import _axpy_kernel
from segtriton.registry import get, make_inputs

pytestmark = pytest.mark.skipif(
    not interpreter_enabled(), reason="counts bytes in Triton's interpreter"
)

# a sort, a distance transform, a second pass over the logits or the skeletons' iterated
# stencils beyond the model
_BEYOND = ("lovasz", "boundary", "hausdorff", "ohem", "topk", "recall", "cldice")
_MODELLED = [e for e in KERNELS if not e.name.startswith(_BEYOND)]


def test_counts_each_argument_of_a_launch():
    x, y, out = torch.randn(1000), torch.randn(1000), torch.empty(1000)
    with traffic.count_traffic() as record:
        _axpy_kernel[(1,)](x, y, out, 2.0, 1000, BLOCK=256)
    assert record.bytes[("_axpy_kernel", "x_ptr")] == [4000, 0, 4000, 0]
    assert record.bytes[("_axpy_kernel", "y_ptr")] == [4000, 0, 4000, 0]
    assert record.bytes[("_axpy_kernel", "out_ptr")] == [0, 4000, 0, 4000]
    assert record.launches["_axpy_kernel"] == 1 and record.totals() == (12000, 12000)


def test_an_argument_passed_twice_is_counted_once():
    x, out = torch.randn(1000), torch.empty(1000)
    with traffic.count_traffic() as record:
        _axpy_kernel[(1,)](x, x, out, 2.0, 1000, BLOCK=256)
    assert record.bytes[("_axpy_kernel", "x_ptr")] == [8000, 0, 4000, 0]
    assert ("_axpy_kernel", "y_ptr") not in record.bytes
    assert record.totals() == (12000, 8000)


def test_torch_ops_are_charged_their_tensors():
    x = torch.randn(256)
    with traffic.count_traffic() as record:
        x.view(16, 16).t().contiguous()
    # read and written once, all booked as read (requested, then unique)
    assert record.bytes[("torch:clone", "-")] == [2 * 1024, 0, 2 * 1024, 0]
    assert not any(k.startswith("torch:view") or k == "torch:t" for k, _ in record.bytes)


@triton.jit
def _count_kernel(out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.atomic_add(out_ptr + offs, 1, mask=offs < n)


def test_an_atomic_reads_and_writes_its_target():
    out = torch.zeros(100, dtype=torch.int32)
    with traffic.count_traffic() as record:
        _count_kernel[(1,)](out, 100, BLOCK=128)
    assert record.bytes[("_count_kernel", "out_ptr")] == [400, 400, 400, 400]


def test_a_strided_argument_spans_its_strides():
    column = torch.randn(1000, 2)[:, 0]  # 1000 elements over 1999 floats
    lo, hi = traffic._extent(column)
    assert (lo, hi - lo) == (column.data_ptr(), 1999 * 4)


def test_an_out_tensor_is_counted_once_and_counting_stops_after_the_block():
    x, y, z = torch.randn(256), torch.randn(256), torch.empty(256)
    with traffic.count_traffic() as record:
        torch.add(x, y, out=z)
    assert record.bytes[("torch:add", "-")][0] == 3 * 1024
    _axpy_kernel[(1,)](x, y, z, 2.0, 256, BLOCK=256)
    torch.add(x, y, out=z)
    assert dict(record.launches) == {"torch:add": 1}


def test_the_custom_op_path_counts_the_torch_ops_inside_the_op(monkeypatch):
    """Through the custom-op dispatcher (as torch.compile calls it) a loss moves the same
    bytes as on the eager fast path: the torch ops inside the op are counted too."""
    from segtriton.kernels import _ops

    totals = {}
    for fast in (True, False):
        monkeypatch.setattr(_ops, "fast_eager", fast)
        record, _ = traffic.loss_traffic(get("cross_entropy"), (2, 3, 8, 8))
        totals[fast] = record.totals(), sorted(record.launches)
    assert totals[False] == totals[True]


@pytest.mark.parametrize(
    ("unique", "ratio", "bound"), [(100, 0.5, 100.0), (250, 1.25, 80.0)], ids=["capped", "over"]
)
def test_the_floor_bound_is_the_model_over_the_unique_bytes(monkeypatch, unique, ratio, bound):
    """A loss moving 1.25x its model can reach at most 80% of the floor; one moving less
    than its model (a smaller count than the model assumes) is capped at 100%."""
    record = traffic.Traffic()
    record.bytes[("k", "x")] = [unique, 0, unique, 0]
    monkeypatch.setattr(traffic, "loss_traffic", lambda *args, **kwargs: (record, 200))
    (row,), _ = traffic.traffic_table((2, 3, 8, 8), losses=["dice"])
    assert (row["unique_over_model"], row["floor_bound_pct"]) == (ratio, bound)


def test_the_table_row_of_a_loss(monkeypatch):
    """Each ratio of a row from its record: requested bytes count re-reads, the torch ops'
    share is of the unique bytes; the loss runs its first variant updated with the
    options, at the shape it fits."""
    record = traffic.Traffic()
    record.bytes[("k", "x")] = [300, 100, 150, 50]
    record.bytes[("torch:sum", "-")] = [50, 0, 50, 0]
    record.launches.update({"k": 2, "torch:sum": 1})
    calls = []

    def counted(entry, case, dtype, label_dtype, opts):
        calls.append((case, opts))
        return record, 200

    monkeypatch.setattr(traffic, "loss_traffic", counted)
    (row,), _ = traffic.traffic_table(
        (2, 3, 8, 8), losses=["bce"], options={"label_smoothing": 0.1}
    )
    ratios = ("requested_over_model", "unique_over_model", "torch_ops_share", "floor_bound_pct")
    assert [row[k] for k in ratios] == [2.25, 1.25, 0.2, 80.0]
    assert row["launches"] == 3
    entry = get("bce")
    opts = {**entry.variants[0], "label_smoothing": 0.1}
    assert calls == [(entry.fit_shape((2, 3, 8, 8), opts), opts)]
    assert row["shape"] == "x".join(map(str, calls[0][0]))


@pytest.mark.parametrize("entry", _MODELLED, ids=lambda e: e.name)
def test_losses_move_what_their_model_says(entry):
    C = 1 if entry.is_binary(entry.variants[0]) else 19
    # no ignored pixels: a 'mean' with ignore_index counts the valid ones in a pre-pass
    # over the target, beyond the model (the traffic table in results/README.md)
    record, model = traffic.loss_traffic(
        entry, (2, C, 24, 40), label_dtype=torch.uint8, ignore_frac=0.0
    )
    requested, unique = record.totals()
    assert model <= unique <= requested
    slack = 1.10 if entry.name == "mcc" else 1.08  # its partial rows hold a fourth sum
    assert unique <= slack * model, record.rows()[:8]
    for (kernel, _), (read, written, *_rest) in record.bytes.items():
        if kernel.startswith("torch:"):
            moved = read + written
            assert moved < 0.05 * model, f"{kernel} moves {moved} B of a {model} B model"


@pytest.mark.parametrize("name", ["cross_entropy", "softmax_focal"])
def test_a_mean_without_ignore_index_reads_the_labels_once(name):
    """A 'mean' with nothing to ignore and no class weights divides by the label count,
    with no pre-pass over the labels (int64 here: a tenth of the model at C = 19); an
    ``ignore_index`` among the options is the one the count runs with (10% of the labels
    take it)."""
    entry = get(name)
    assert entry.variants[0] == {}  # no class weights
    record, model = traffic.loss_traffic(entry, (2, 19, 24, 40), options={"ignore_index": None})
    assert record.totals()[1] < 1.01 * model, record.rows()[:8]  # partial sums aside
    assert "_valid_sum_kernel" not in record.launches
    record, model = traffic.loss_traffic(entry, (2, 19, 24, 40), options={"ignore_index": -100})
    assert record.launches["_valid_sum_kernel"] == 1
    assert record.totals()[1] > 1.09 * model


@pytest.mark.parametrize("entry", _MODELLED, ids=lambda e: e.name)
def test_a_forward_without_grad_writes_no_gradient(entry):
    """Under torch.no_grad, logits that require grad get no gradient buffer: the bytes
    written stay far below the logits' size (the fused losses write one in a forward
    with grad)."""
    options = entry.variants[0]
    C = 1 if entry.is_binary(options) else 19
    x, t = make_inputs(entry, (2, C, 24, 40), options, torch.float32)
    x.requires_grad_(True)
    with torch.no_grad(), traffic.count_traffic() as record:
        entry.kernel(x, t, **options)
    written = sum(v[1] for v in record.bytes.values())
    assert written < 0.1 * x.numel() * x.element_size(), record.rows()[:4]


@pytest.mark.parametrize("name", ["boundary", "hausdorff_dt"])
def test_distance_losses_map_only_the_selected_classes(name):
    """With one class of five selected, the distance transforms and the loss pass touch
    only its maps: the bytes fall to well under half (most of them are maps)."""
    unique = {}
    for classes in ([0, 1, 2, 3, 4], [3]):
        record, _ = traffic.loss_traffic(
            get(name), (2, 5, 12, 20), options={"classes": classes}, ignore_frac=0.0
        )
        unique[len(classes)] = record.totals()[1]
    assert unique[1] < 0.5 * unique[5], unique


@pytest.mark.parametrize("kind", ["labels", "logits", "masks"])
def test_confusion_matrix_reads_its_inputs_once(kind):
    record, model = traffic.confusion_traffic((2, 5, 12, 20), kind)
    kernel = "_multilabel_counts_kernel" if kind == "masks" else "_confusion_kernel"
    reads = {a: v[0] for (k, a), v in record.bytes.items() if k == kernel}
    assert reads["p_ptr"] + reads["t_ptr"] == model


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "traffic"
    result = subprocess.run(
        [sys.executable, "-m", "segtriton.bench.cli", "traffic", "--shape", "1,3,8,8"]
        + ["--losses", "cross_entropy,dice", "--label-dtype", "uint8", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "traffic.csv")
    assert list(table.loss) == ["cross_entropy", "dice"]
    assert (table.unique_over_model >= 1).all() and (out / "traffic.md").exists()
    assert len(pd.read_csv(out / "traffic_kernels.csv")) > 4


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--losses", "nope"], "no Triton kernel in the registry for ['nope']"),
     (["--shape", "2,a,8"], "--shape needs positive integers"),
     (["--shape", "2,0,8"], "--shape needs positive integers"),
     (["--options", "[1]"], "--options must be a JSON object"),
     (["--options", "{classes"], "--options is not JSON"),
     (["--losses", "cross_entropy", "--options", '{"classes": [1]}'],
      "unexpected keyword argument 'classes'")],
)  # fmt: skip
def test_cli_names_bad_arguments(args, message, capsys):
    assert main(["traffic", *args]) == 2
    assert message in capsys.readouterr().err


def _edt_axis_reads(fn, t: torch.Tensor) -> int:
    """Bytes the distance transform's axis passes ask of their input maps in ``fn(t)``."""
    with traffic.count_traffic() as record:
        fn(t)
    return record.bytes[("_edt_axis_kernel", "f_ptr")][0]


def test_the_distance_transform_skips_maps_without_sites():
    """The first pass flags the lines that hold a site (and, for a signed map, a non-site),
    so the axis passes search no candidates for a map with none: an empty map costs fewer
    reads than a map of one site, and a full mask fewer than a mask of one background
    pixel. The lines are 23 long, not a power of two, so the flags must leave out the
    tile's padding."""
    site = torch.zeros(1, 40, 23, dtype=torch.bool)
    site[0, 5, 7] = True
    base = _edt_axis_reads(ker.squared_edt, site)
    empty = _edt_axis_reads(ker.squared_edt, torch.cat([site, torch.zeros_like(site)])) - base
    one = _edt_axis_reads(ker.squared_edt, torch.cat([site, site])) - base
    assert empty < one

    def signed(t):
        return ker.signed_distance_map(t, mode="multilabel")

    mask = site.unsqueeze(0).float()
    almost = torch.ones_like(mask)
    almost[0, 0, 30, 11] = 0.0
    base = _edt_axis_reads(signed, mask)
    full = _edt_axis_reads(signed, torch.cat([mask, torch.ones_like(mask)], 1)) - base
    one_hole = _edt_axis_reads(signed, torch.cat([mask, almost], 1)) - base
    assert full < one_hole
