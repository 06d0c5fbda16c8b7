"""Triton segmentation metrics: a one-pass confusion matrix, the metrics from it, and a
streaming accumulator that can be synchronised across processes.

Semantics of ``segtriton.reference.metrics`` (rows: target, columns: prediction; NaN for
a class with an empty denominator, left out of means). How the matrix is built:

- One pass over predictions and targets. Predictions are integer labels, or logits whose
  argmax over classes is taken in the same pass with ``torch.argmax``'s order (ties to
  the lowest class, -0.0 equal to 0.0, the first NaN above everything), read in place
  through strides (NCHW, NCDHW, channels_last).
- Counts are exact integers: for ``C * C + 2 <= 1024`` (C up to 31; the bins are
  ``SEGTRITON_HIST_BINS``, ``HIST_BINS``) each program keeps a private
  histogram of the bins and the partial histograms are added in a fixed order; for
  larger C each pixel adds 1 to its bin with a relaxed integer atomic (C up to
  46340), except in a pixel tile whose diagonal holds an eighth of its pixels or more
  (for C < 4096): there the diagonal is counted per program first, so the few hot bins
  of a good model take one atomic per class per program instead of one per pixel.
  Either way the result is deterministic. Triton's histogram costs each pixel work in
  proportion to the bins (ballots per bin bit, masks per bin a lane owns): compiled for
  sm_90 (Triton 3.6, int64 labels, 8 pixels a thread) it takes about 128 SASS
  instructions a pixel at 512 bins, 185 at 1024, 276 at 2048 and 554 at 4096 (with
  272 bytes of spill), where the atomic path takes 58 at C = 150 (118 in a tile whose
  diagonal is counted apart; ``segtriton compile --confusion``, results/sm90-compile/
  2026-12-06-confusion-*). Where the limit sits is read from those counts, not timed:
  below it the atomics, though fewer instructions, would land on fewer addresses, and
  C = 19 kept the histogram that the H200 run timed.
- A label outside ``[0, C)`` (target not ``ignore_index``, or a predicted label) is
  counted apart: ``validate=True`` (the default) reads that count (one scalar host sync)
  and raises ``ValueError``; with ``validate=False`` such pixels are left out silently.
- ``mode='multilabel'`` (overlapping masks ``[B, C, *S]``): one pass over predictions and
  targets, each program counting true positives, target, predicted and counted entries
  per channel of one run of pixel tiles; the int32 partial rows are summed in a fixed
  order into int64. A target other than 0, 1 or ``ignore_index``, or an integer prediction other
  than 0 / 1, is counted apart as above (``validate=False``: such a target entry is
  counted in no mask, and such a prediction is in its mask, as
  ``segtriton.reference.metrics.mask_values`` reads them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from segtriton.reference._common import (
    check_choice,
    check_ignore_index,
    check_label_dtype,
    check_num_classes,
    check_real_tensor,
)
from segtriton.reference.metrics import (
    MODES,
    PROBABILITY_PREDS,
    check_mask_inputs,
    class_counts,
    measured_classes,
    metrics_from_confusion,
    metrics_from_counts,
    multilabel_matrix,
)

from ._metrics_kernels import _confusion_kernel, _multilabel_counts_kernel
from ._runtime import kernel_api, launch_on
from ._tiles import (
    HIST_BINS,
    cdiv,
    class_blocks,
    ignore_arg,
    ignore_value,
    label_view,
    next_pow2,
    num_warps_for,
    pixel_view,
    softmax_unroll,
    spatial_size,
    tile_chunks,
)

_DIAG_BINS = 4096  # past that, one of the diagonal alone up to this many
_LABEL_TILE = 1024


def _check(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> bool:
    """Validate shapes and dtypes (no value reads); True when ``preds`` are logits."""
    check_num_classes(num_classes)
    check_label_dtype(target)
    if target.dim() < 2:
        raise ValueError(f"target must be [B, *spatial], got shape {tuple(target.shape)}")
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"preds must be a torch.Tensor, got {type(preds).__name__}")
    if preds.device != target.device:
        raise ValueError(f"preds are on {preds.device} but target on {target.device}")
    if preds.is_floating_point():
        expected = (target.shape[0], num_classes, *target.shape[1:])
        if tuple(preds.shape) != expected:
            raise ValueError(
                f"float preds are logits of shape {expected}, got {tuple(preds.shape)}"
            )
        return True
    check_label_dtype(preds)
    if preds.shape != target.shape:
        raise ValueError(
            f"label preds shape {tuple(preds.shape)} does not match target {tuple(target.shape)}"
        )
    return False


def _histogram_bins(num_classes: int) -> tuple[int, int]:
    """``(NB, DIAG_BINS)`` of the confusion kernel for C classes: bins of the private
    histogram of every cell (0: integer atomics instead), and of the diagonal's on the
    atomic path (0: none)."""
    cells = num_classes * num_classes
    if cells + 2 <= HIST_BINS:
        return next_pow2(cells + 2), 0
    return 0, (next_pow2(num_classes + 1) if num_classes + 1 <= _DIAG_BINS else 0)


def _confusion(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None,
    per_image: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cm, bad)``: int64 ``[C, C]`` or ``[B, C, C]``, and the device count of bad labels."""
    logits = _check(preds, target, num_classes)
    check_ignore_index(ignore_index, labels=True)
    C, B = num_classes, target.shape[0]
    t, stb, sts = label_view(target)
    if logits:
        p, spb, spc, sps = pixel_view(preds)
        block_c, block_p, single = class_blocks(C)
    else:
        (p, spb, sps), spc = label_view(preds), 0
        block_c, block_p, single = 1, _LABEL_TILE, True
    S = spatial_size(t)
    tiles_per_chunk, n_chunks = tile_chunks(S, block_p, B)
    cells = C * C
    nb, diag_bins = _histogram_bins(C)
    hist = nb > 0
    if hist:
        out = torch.empty(B * n_chunks * nb, dtype=torch.int32, device=t.device)
    else:
        out = torch.zeros((B if per_image else 1) * (cells + 1), dtype=torch.int64, device=t.device)
    _confusion_kernel[(B * n_chunks,)](
        p,
        t,
        out,
        C,
        S,
        n_chunks,
        tiles_per_chunk,
        spb,
        spc,
        sps,
        stb,
        sts,
        ignore_arg(ignore_index, labels=True)[0],
        LOGITS=logits,
        SINGLE=single,
        HIST=hist,
        PER_IMAGE=per_image,
        NB=max(nb, 1),
        DIAG_BINS=diag_bins,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        UNROLL=softmax_unroll(t, sps) if logits else None,
    )
    if hist:
        counts = out.view(B, n_chunks, nb).sum(1, dtype=torch.int64)[:, : cells + 1]
        if not per_image:
            counts = counts.sum(0, keepdim=True)
    else:
        counts = out.view(-1, cells + 1)
    cm = counts[:, :cells].reshape(-1, C, C)
    return (cm if per_image else cm[0]), counts[:, cells].sum()


def multilabel_counts(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, flags)``: int64 ``[B, 4, C]`` per image and channel (true positives,
    target, predicted and counted entries; ``class_counts``'s multilabel rows) and int64
    ``[2]`` on the device: the count of bad mask values, and 1 if the float preds look
    like probabilities (none outside [0, 1], some strictly inside; see
    :func:`_raise_if_bad`), from one pass over multilabel ``preds`` and ``target``."""
    check_num_classes(num_classes)
    check_mask_inputs(preds, target, num_classes, ignore_index)
    C, B = num_classes, target.shape[0]
    p, spb, spc, sps = pixel_view(preds.view(torch.uint8) if preds.dtype == torch.bool else preds)
    t, stb, stc, sts = pixel_view(
        target.view(torch.uint8) if target.dtype == torch.bool else target
    )
    block_c, block_p, _ = class_blocks(C)
    S = spatial_size(t)
    tiles_per_chunk, n_chunks = tile_chunks(S, block_p, B)
    ign = ignore_value(ignore_index, target, labels=False)
    out = torch.empty(B * n_chunks * 7 * C, dtype=torch.int32, device=t.device)
    _multilabel_counts_kernel[(B * n_chunks, cdiv(C, block_c))](
        p,
        t,
        out,
        C,
        S,
        n_chunks,
        tiles_per_chunk,
        spb,
        spc,
        sps,
        stb,
        stc,
        sts,
        0.0 if ign is None else ign,
        HAS_IGNORE=ign is not None and target.dtype != torch.bool,
        LOGITS=preds.is_floating_point(),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )
    counts = out.view(B, n_chunks, 7, C).sum(1, dtype=torch.int64)
    bad, soft, outside = counts[:, 4:].sum((0, 2)).unbind()
    return counts[:, :4], torch.stack((bad, ((soft > 0) & (outside == 0)).long()))


def _matrix(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None,
    per_image: bool,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cm, bad)`` of :func:`confusion_matrix` for either mode, without a host sync."""
    check_choice("mode", mode, MODES)
    if mode == "multiclass":
        return _confusion(preds, target, num_classes, ignore_index, per_image)
    counts, bad = multilabel_counts(preds, target, num_classes, ignore_index)
    cm = multilabel_matrix(counts)
    return (cm if per_image else cm.sum(0)), bad


def _raise_if_bad(
    bad: torch.Tensor, num_classes: int, ignore_index: float | None, mode: str = "multiclass"
) -> None:
    """Raise for what ``bad`` counted: bad labels (multiclass), or for multilabel the
    flags of :func:`multilabel_counts` (summed over calls: bad mask values, and calls
    whose float preds looked like probabilities). One host sync."""
    if mode == "multilabel":
        n, probability_calls = bad.tolist()
        if n:
            raise ValueError(
                f"{n} entries hold a target mask value other than 0, 1 or "
                f"ignore_index={ignore_index}, or an integer prediction other than 0 / 1: "
                "multilabel metrics need hard {0, 1} masks"
            )
        if probability_calls:
            raise ValueError(PROBABILITY_PREDS)
        return
    n = int(bad)
    if n:
        raise ValueError(
            f"{n} pixel(s) hold a target or predicted label outside [0, {num_classes}) "
            f"that is not ignore_index={ignore_index}"
        )


def distributed(process_group: dist.ProcessGroup | None) -> bool:
    """Whether a streaming metric's ``sync`` has ranks to combine: a group is given, or
    torch.distributed is initialised (its default group). Otherwise one process holds
    every count and ``sync`` leaves them as they are, as torchmetrics' sync does, so the
    same evaluation code runs with and without DDP."""
    return process_group is not None or (dist.is_available() and dist.is_initialized())


def gather_rows(own: torch.Tensor, process_group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's rows of ``own`` (``[n, ...]``; n may differ between ranks), concatenated
    in rank order. Collective; reads the ranks' sizes on the host."""
    world = dist.get_world_size(process_group)
    mine = torch.tensor([own.shape[0]], device=own.device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=process_group)
    n = [int(k) for k in sizes]
    padded = own.new_zeros((max(n), *own.shape[1:]))
    padded[: own.shape[0]] = own
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=process_group)
    return torch.cat([part[:k] for part, k in zip(parts, n, strict=True)])


@kernel_api
def confusion_matrix(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None = None,
    per_image: bool = False,
    mode: str = "multiclass",
    validate: bool = True,
) -> torch.Tensor:
    """Triton confusion matrix; semantics of ``segtriton.reference.confusion_matrix``
    (int64 ``[C, C]``, multilabel ``[C, 2, 2]``; a leading ``B`` dim with ``per_image``).
    ``validate``: see the module docstring."""
    cm, bad = _matrix(preds, target, num_classes, ignore_index, per_image, mode)
    if validate:
        _raise_if_bad(bad, num_classes, ignore_index, mode)
    return cm


@kernel_api
def segmentation_metrics(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None = None,
    average: str = "dataset",
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    """Triton confusion matrix, then the metrics of
    ``segtriton.reference.segmentation_metrics`` computed from it on the device."""
    check_choice("average", average, ("dataset", "image"))
    measured_classes(classes, check_num_classes(num_classes))
    per_image = average == "image"
    cm = confusion_matrix(preds, target, num_classes, ignore_index, per_image, mode, validate)
    return metrics_from_confusion(cm, mode, classes)


class StreamingMetrics:
    """Accumulates confusion matrices over batches (``update``), then ``compute``s the
    metrics of :func:`segmentation_metrics`; ``reset`` starts again.

    ``update`` never synchronises with the host: bad labels (or mask values) are counted
    on the device and reported by ``compute`` (which reads them, as it reads the
    metrics). Under torch.distributed, call ``sync(process_group)`` before ``compute``: it
    all-reduces the int64 matrix and the bad-label count, so every rank computes the
    metrics of the whole dataset (for average 'image' it gathers the per-image counts).
    The combined counts hold until the next ``update`` or ``reset``; each rank keeps its
    own counts, so ``sync`` may be called again (after more updates, or twice) without
    counting a rank's pixels twice.

    average: 'dataset' (one matrix) or 'image' (per image seen, until ``reset``, the
    counts per class the metrics need: true positives, target and predicted pixels, and
    for multilabel the counted entries, int64 ``[3, C]`` or ``[4, C]``
    (``segtriton.reference.class_counts``), not a ``C x C`` matrix: 24 KB an image at
    C = 1000 instead of 8 MB). Either way ``compute()["confusion_matrix"]`` and
    :attr:`confusion_matrix` are the matrix summed over every image (``[C, C]``;
    multilabel ``[C, 2, 2]``); per-image matrices of one batch come from
    :func:`confusion_matrix` with ``per_image=True``.
    mode: 'multiclass' (label maps or logits) or 'multilabel' (overlapping masks), as
    :func:`confusion_matrix` reads them. classes: the classes reported and averaged, as
    in :func:`segmentation_metrics` (every pixel is still counted).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: float | None = None,
        average: str = "dataset",
        device: str | torch.device | None = None,
        mode: str = "multiclass",
        classes: Sequence[int] | None = None,
    ) -> None:
        check_choice("average", average, ("dataset", "image"))
        check_choice("mode", mode, MODES)
        check_num_classes(num_classes)
        check_ignore_index(ignore_index, labels=mode == "multiclass")
        self.num_classes, self.ignore_index, self.average = num_classes, ignore_index, average
        self.mode = mode
        self.classes = None if classes is None else measured_classes(classes, num_classes)
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        C, labels = self.num_classes, self.mode == "multiclass"
        self._cm = torch.zeros((C, C) if labels else (C, 2, 2), dtype=torch.int64)
        self._counts = torch.zeros((0, 3 if labels else 4, C), dtype=torch.int64)
        self._bad = torch.zeros(() if labels else 2, dtype=torch.int64)
        self._images: list[torch.Tensor] = []
        if self.device is not None:
            self._to(self.device)
        self._synced: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _to(self, device: torch.device) -> None:
        self._counts = self._own_counts().to(device)
        self._cm, self._bad = self._cm.to(device), self._bad.to(device)

    def _own_counts(self) -> torch.Tensor:
        """This process's per-image counts ``[images, 3 or 4, C]`` (empty for 'dataset')."""
        if self._images:
            self._counts = torch.cat([self._counts, *self._images])
            self._images = []
        return self._counts

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        check_real_tensor("target", target)  # launch_on reads its device
        per_image = self.average == "image"
        with launch_on(target, "StreamingMetrics", "target"):  # refused: state not moved
            if self._cm.device != target.device:
                self._to(target.device)
            cm, bad = _matrix(
                preds, target, self.num_classes, self.ignore_index, per_image, self.mode
            )
        if per_image:  # concatenated when read: a cat per update would copy O(n^2)
            self._images.append(class_counts(cm, self.mode))
            cm = cm.sum(0)
        self._cm = self._cm + cm
        self._bad = self._bad + bad
        self._synced = None

    def sync(self, process_group: dist.ProcessGroup | None = None) -> None:
        """Combine the ranks of ``process_group`` (default: world): all-reduce (sum) the
        matrix and the bad-label count, and for 'image' gather every rank's per-image
        counts in rank order (ranks may hold different numbers of images). Collective:
        every rank of the group must call it. Without torch.distributed initialised (and
        no group given) it does nothing (:func:`distributed`)."""
        if not distributed(process_group):
            return
        cm, bad = self._cm.clone(), self._bad.clone()
        dist.all_reduce(cm, group=process_group)
        dist.all_reduce(bad, group=process_group)
        own = self._own_counts()
        if self.average == "dataset":
            self._synced = (cm, own, bad)
            return
        self._synced = (cm, gather_rows(own, process_group), bad)

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics of the counts: all ranks' after ``sync``, else this process's."""
        cm, counts, bad = self._synced or (self._cm, self._own_counts(), self._bad)
        _raise_if_bad(bad, self.num_classes, self.ignore_index, self.mode)
        if self.average == "dataset":
            return metrics_from_confusion(cm, self.mode, self.classes)
        return {"confusion_matrix": cm, **metrics_from_counts(counts, self.classes)}

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The matrix ``compute`` reports (all ranks' after ``sync``)."""
        return self._synced[0] if self._synced else self._cm
