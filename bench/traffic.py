"""Bytes a loss asks memory for, counted in Triton's CPU interpreter, beside its byte model.

The benchmark reports speed as a fraction of a floor: the loss's minimal bytes
(:func:`segtriton.registry.minimal_bytes`) over the measured copy bandwidth. Here each
load, store and atomic of every Triton launch is attributed to the first tensor argument
that holds the address (a tensor passed twice is counted once), and every other torch op
the loss runs is charged the bytes of its tensor inputs and outputs. Two totals per call:

- **requested**: every access counted (re-reads included);
- **unique**: per launch, each byte once: what the launch must fetch from DRAM at least
  once. DRAM traffic lies between the two (caches serve some re-reads).

``model / unique`` bounds the fraction of the floor a kernel can reach. No timing; sectors,
caches and launch overheads are not modelled. Runs only with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:  # the registry is imported where it is used (it loads every loss)
    from segtriton.registry import LossEntry

_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
# torch ops that move no tensor data (views, allocations, metadata)
_FREE_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach"}


@dataclass
class _Arg:
    name: str
    start: int
    end: int
    read: np.ndarray = field(repr=False)
    written: np.ndarray = field(repr=False)


@dataclass
class Traffic:
    """Per ``(kernel, argument)``: requested and unique bytes read and written.

    Torch ops other than segtriton's custom ops appear as kernel ``torch:<op>`` with
    argument ``-``; all their bytes (inputs and outputs) are booked as read, and counted
    once as unique."""

    bytes: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0])
    )
    launches: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def totals(self) -> tuple[int, int]:
        """``(requested, unique)`` bytes over everything counted."""
        req = sum(v[0] + v[1] for v in self.bytes.values())
        uniq = sum(v[2] + v[3] for v in self.bytes.values())
        return req, uniq

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "kernel": k,
                "argument": a,
                "launches": self.launches[k],
                "read": v[0],
                "written": v[1],
                "unique_read": v[2],
                "unique_written": v[3],
            }
            for (k, a), v in sorted(self.bytes.items(), key=lambda kv: -sum(kv[1]))
        ]


class _Launch:
    """Address ranges of one launch's tensor arguments and the bytes they saw."""

    def __init__(self, record: Traffic, kernel: str, names: list[str], values: list) -> None:
        self.record = record
        self.kernel = kernel
        self.args: list[_Arg] = []
        for name, value in zip(names, values, strict=False):
            if isinstance(value, torch.Tensor) and value.numel() > 0:
                lo, hi = _extent(value)
                n = hi - lo
                self.args.append(_Arg(name, lo, hi, np.zeros(n, bool), np.zeros(n, bool)))

    def access(self, addrs: np.ndarray, mask: np.ndarray, size: int, write: bool) -> None:
        addrs, mask = np.broadcast_arrays(np.asarray(addrs, np.uint64), np.asarray(mask, bool))
        active = addrs[mask]
        for arg in self.args:  # an address is charged to the first argument holding it
            held = (active >= arg.start) & (active < arg.end)
            inside, active = active[held], active[~held]
            if inside.size == 0:
                continue
            seen = arg.written if write else arg.read
            for k in range(size):
                seen[(inside - arg.start + k).clip(max=arg.end - arg.start - 1)] = True
            self.record.bytes[(self.kernel, arg.name)][1 if write else 0] += inside.size * size

    def close(self) -> None:
        for arg in self.args:
            read, written = int(arg.read.sum()), int(arg.written.sum())
            if read or written:
                entry = self.record.bytes[(self.kernel, arg.name)]
                entry[2] += read
                entry[3] += written
        self.record.launches[self.kernel] += 1


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` a strided tensor spans."""
    span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True)) + 1
    lo = t.data_ptr()
    return lo, lo + span * t.element_size()


def _element_size(ptrs) -> int:
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


class _TorchOps(TorchDispatchMode):
    """Charges every torch op outside segtriton's custom ops the bytes of its tensors."""

    def __init__(self, record: Traffic) -> None:
        super().__init__()
        self.record = record
        self.paused = False  # inside a Triton launch: the interpreter's own copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "segtriton":
            # run the op's CPU implementation with this mode on, so that the torch ops
            # inside it are counted too (its Triton launches are counted by the hooks)
            with self:
                return func.redispatch(_CPU, *args, **kwargs)
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _FREE_OPS or func.is_view or self.paused:
            return out
        # each tensor once: an ``out=`` tensor is both an argument and the result
        extents = {
            (t.data_ptr(), t.numel() * t.element_size())
            for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
            if isinstance(t, torch.Tensor)
        }
        moved = sum(size for _, size in extents)
        entry = self.record.bytes[(f"torch:{name}", "-")]
        entry[0] += moved
        entry[2] += moved
        self.record.launches[f"torch:{name}"] += 1
        return out


@contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Count the bytes of every Triton launch and torch op run inside the block."""
    from triton.runtime import interpreter as interp

    from segtriton.kernels import interpreter_enabled

    if not interpreter_enabled():
        raise RuntimeError("counting traffic needs Triton's interpreter (TRITON_INTERPRET=1)")
    record = Traffic()
    current: list[_Launch] = []
    builder = interp.InterpreterBuilder
    saved = {
        name: getattr(builder, name)
        for name in ("create_masked_load", "create_masked_store", "create_atomic_rmw")
    }
    saved_call = interp.GridExecutor.__call__

    def call(self, *args, **kwargs):
        named = dict(zip(self.arg_names, args, strict=False))
        named.update((k, v) for k, v in kwargs.items() if k in self.arg_names)
        current.append(_Launch(record, self.fn.__name__, list(named), list(named.values())))
        paused, ops.paused = ops.paused, True
        try:
            return saved_call(self, *args, **kwargs)
        finally:
            ops.paused = paused
            current.pop().close()

    def load(self, ptrs, mask, other, *rest):
        current[-1].access(ptrs.data, mask.data, _element_size(ptrs), write=False)
        return saved["create_masked_load"](self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):
        current[-1].access(ptrs.data, mask.data, _element_size(ptrs), write=True)
        return saved["create_masked_store"](self, ptrs, value, mask, *rest)

    def atomic(self, op, ptr, val, mask, *rest):
        for write in (False, True):
            current[-1].access(ptr.data, mask.data, _element_size(ptr), write=write)
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *rest)

    for name, fn in (
        ("create_masked_load", load),
        ("create_masked_store", store),
        ("create_atomic_rmw", atomic),
    ):
        setattr(builder, name, fn)
    interp.GridExecutor.__call__ = call
    ops = _TorchOps(record)
    try:
        with ops:
            yield record
    finally:
        for name, fn in saved.items():
            setattr(builder, name, fn)
        interp.GridExecutor.__call__ = saved_call


def loss_traffic(
    entry: LossEntry,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.bfloat16,
    label_dtype: torch.dtype = torch.int64,
    options: dict | None = None,
    seed: int = 0,
    ignore_frac: float = 0.1,
) -> tuple[Traffic, int]:
    """Count one fwd+bwd call of ``entry``'s kernel at ``shape`` (integer labels in
    ``label_dtype``, masks in the logits' dtype, as a sweep draws them; a fraction
    ``ignore_frac`` of them ignored, with ``ignore_index`` 255 passed where the loss has
    it, unless ``options`` names an ``ignore_index``: that one, and none ignored where it
    is None); also return the byte model of that call."""
    from segtriton.registry import make_inputs, minimal_bytes

    options = dict(entry.variants[0] if options is None else options)
    ignore_index = options.get("ignore_index", 255)
    if ignore_index is None:
        ignore_frac = 0.0
    elif ignore_frac > 0:
        options = entry.ignoring(options, ignore_index)
    gen = torch.Generator().manual_seed(seed)
    x, t = make_inputs(
        entry, shape, options, dtype, gen, ignore_frac, ignore_index, label_dtype, mask_dtype=dtype
    )
    x.requires_grad_(True)
    with count_traffic() as record:
        loss = entry.triton()(x, t, **options)
        torch.autograd.grad(loss, x)
    return record, minimal_bytes(entry, shape, dtype, t.dtype, "fwd+bwd", options)


METRICS = ("confusion_labels", "confusion_logits", "confusion_masks")


def confusion_traffic(
    shape: tuple[int, ...],
    kind: str,
    dtype: torch.dtype = torch.bfloat16,
    label_dtype: torch.dtype = torch.int64,
    seed: int = 0,
) -> tuple[Traffic, int]:
    """Count one confusion matrix at ``shape`` (``[B, C, *S]``) from predicted labels,
    from logits, or (``kind`` 'masks') multilabel: logits against uint8 masks of that
    shape; the model is reading the predictions (or logits) and targets once."""
    from segtriton.kernels import confusion_matrix
    from segtriton.registry import confusion_bytes

    B, C, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    if kind == "masks":
        target = torch.randint(0, 2, shape, generator=gen).to(torch.uint8)
    else:
        target = torch.randint(0, C, (B, *spatial), generator=gen).to(label_dtype)
    if kind == "labels":
        preds = torch.randint(0, C, (B, *spatial), generator=gen).to(label_dtype)
    else:
        preds = torch.randn(shape, generator=gen).to(dtype)
    mode = "multilabel" if kind == "masks" else "multiclass"
    with count_traffic() as record:
        confusion_matrix(preds, target, C, mode=mode, validate=False)
    return record, confusion_bytes(preds, target)


def traffic_table(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.bfloat16,
    label_dtype: torch.dtype = torch.int64,
    losses: list[str] | None = None,
    options: dict | None = None,
) -> tuple[list[dict[str, object]], list[dict[str, Any]]]:
    """Per registry loss with a kernel (default variant updated with ``options``, fwd+bwd;
    C = 1 where the loss is binary) and per confusion-matrix input (:data:`METRICS`):
    totals over the byte model, and the per-kernel, per-argument breakdown."""
    from segtriton.registry import get, kernel_names

    from .runner import progress

    names = kernel_names(losses, METRICS)
    summary, detail = [], []
    started = time.perf_counter()
    for i, name in enumerate(names):
        progress(i, len(names), started, name)
        if name in METRICS:
            case = tuple(shape)
            kind = name.removeprefix("confusion_")
            record, model = confusion_traffic(case, kind, dtype, label_dtype)
        else:
            entry = get(name)
            opts = {**entry.variants[0], **(options or {})}
            case = entry.fit_shape(shape, opts)
            record, model = loss_traffic(entry, case, dtype, label_dtype, opts)
        req, uniq = record.totals()
        rows = record.rows()
        torch_ops = sum(r["unique_read"] for r in rows if r["argument"] == "-")
        summary.append(
            {
                "loss": name,
                "shape": "x".join(map(str, case)),
                "model_bytes": model,
                "requested_over_model": round(req / model, 3),
                "unique_over_model": round(uniq / model, 3),
                "torch_ops_share": round(torch_ops / uniq, 3),
                "floor_bound_pct": round(100 * min(1.0, model / uniq), 1),
                "launches": sum(record.launches.values()),
            }
        )
        detail += [{"loss": name, **r} for r in rows]
    return summary, detail


def write_report(
    summary: list[dict[str, object]], detail: list[dict[str, Any]], out: Path, command: str
) -> Path:
    """``traffic.csv`` (per loss), ``traffic_kernels.csv`` (per kernel and argument) and
    ``traffic.md`` under ``out``; returns the path of ``traffic.md``."""
    import pandas as pd

    from .env import provenance
    from .report import md_table

    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(summary)
    table.to_csv(out / "traffic.csv", index=False)
    pd.DataFrame(detail).to_csv(out / "traffic_kernels.csv", index=False)
    lines = [
        "# Bytes each loss asks for, against its byte model (Triton interpreter, no GPU)",
        "",
        provenance(command),
        "",
        "One fwd+bwd call per loss (default options, updated with the command's `--options`). "
        "Every load, store and atomic of each Triton launch is attributed to the tensor it "
        "touches; other torch ops are charged the bytes of their tensors. *requested* counts "
        "every access, *unique* each byte once per launch (what DRAM must deliver at least "
        "once); the model is the one the benchmark divides by "
        "(`segtriton.registry.minimal_bytes`). *floor_bound_pct* = model / unique: the highest "
        "fraction of the copy-bandwidth floor the loss can reach. These are counts, not "
        "timings; caches, sectors and launch overheads are not modelled.",
        "",
        md_table(table),
        "",
    ]
    path = out / "traffic.md"
    path.write_text("\n".join(lines))
    return path
