"""Surface-distance metrics on the GPU: Hausdorff distance (HD, HD95), average surface
distance (ASD / ASSD) and normalised surface Dice (NSD), with the semantics of
``segtriton.reference.surface`` and float32 results.

How they are computed, with no Python loop over images or classes and no float atomics
(deterministic):

- Labels (``mode='multiclass'``): the surfaces of all classes come from one label map
  per input (a pixel is on the surface of its own class at most, ``_surface_labels``),
  and each surface pixel gets the slot of its class among the K distinct measured
  classes (K for none). Masks (``'multilabel'``, which may overlap): each measured
  channel's surface is a uint8 map of its own.
- The distance from every pixel to each measured class's surface of the other input is
  the GPU EDT of ``boundary.py`` (float32 ``[B, K, *S]`` squared distances, exact
  integers for unit spacing); at most two such buffers are live (one transform at a
  time), so ``classes`` bounds the memory as well as the work.
- Each surface pixel's distance (float32) is gathered from its class's map, then sorted
  per image and stably by slot, so each class's distances lie together in ascending
  order (``_sorted_distances``; for masks, each (image, class) row is sorted on its own).
  A percentile interpolates between two of them (in float64); sums (float64) and counts
  within a tolerance come from one program per (image, class) that adds its run in a
  fixed order (``_surface_stats_kernel``).
- ``validate`` (default True) reads whether any label lies outside ``[0, C)``, or any
  mask value is not 0, 1 (or ``ignore_index``) (one scalar host sync) and raises
  ``ValueError``; with ``validate=False`` such a pixel belongs to no class (a nonzero
  integer prediction to its mask) and nothing waits for the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from segtriton.reference import surface as ref_surface
from segtriton.reference._common import (
    check_choice,
    check_flag,
    check_ignore_index,
    check_num_classes,
    check_number,
    device_constant,
    in_classes,
    not_ignored,
)
from segtriton.reference.boundary import check_spacing
from segtriton.reference.metrics import MODES, check_mask_inputs, mask_values, measured_classes

from ._runtime import kernel_api
from ._surface_kernels import _surface_stats_kernel
from .boundary import _class_map_op, _distinct
from .metrics import _check as _metric_check
from .metrics import _raise_if_bad, distributed, gather_rows, multilabel_counts

_STATS_BLOCK = 1024


def _surface_labels(cls: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, *S]`` from class labels ``cls`` (-1: no class): a pixel's class where it
    lies on that class's surface (a face neighbour of another class, of no class or
    outside the image), else -1."""
    padded = torch.nn.functional.pad(cls, [1, 1] * (cls.dim() - 1), value=-1)
    edge = torch.zeros_like(cls, dtype=torch.bool)
    for axis in range(1, cls.dim()):
        for start in (0, 2):
            window = [slice(None)] + [slice(1, n + 1) for n in cls.shape[1:]]
            window[axis] = slice(start, start + cls.shape[axis])
            edge |= padded[tuple(window)] != cls
    return torch.where(edge, cls, -1)


def _groups(key: torch.Tensor, K: int) -> torch.Tensor:
    """int64 ``[B, K]``: how many pixels of each row of ``key`` (``[B, P]``, values in
    ``[0, K]``, K for none) hold each value below K, from the sorted keys (no
    ``bincount``, whose output size would need a host sync)."""
    values = torch.arange(K + 1, device=key.device).expand(key.shape[0], K + 1).contiguous()
    return torch.searchsorted(key.sort(dim=1).values, values).diff(dim=1)


def _sorted_distances(key: torch.Tensor, to_map: torch.Tensor) -> torch.Tensor:
    """float32 ``[B, P]``: the distance of each surface pixel (``key``: its slot, K for
    none) to the other surface, whose squared distances are ``to_map [B, K, *S]``
    (inf where that surface is empty), sorted, then stably by slot: each slot's
    distances lie together in ascending order, those of no surface (inf) last."""
    B, K = to_map.shape[:2]
    d2 = to_map.reshape(B, K, -1).gather(1, key.clamp(max=K - 1).unsqueeze(1)).squeeze(1)
    d, order = torch.where(key < K, d2.sqrt(), math.inf).sort(dim=1)
    return d.gather(1, key.gather(1, order).sort(dim=1, stable=True).indices)


def _percentile(
    d: torch.Tensor, first: torch.Tensor, count: torch.Tensor, percentile: float | None
) -> torch.Tensor:
    """float64 ``[B, K]``: the ``percentile`` (the maximum for None) of each slot's run of
    ``d`` (ascending, ``count[b, k]`` values from ``first[b, k]``), interpolated linearly
    between ranks as ``numpy.percentile`` (any value for an empty run)."""
    top = (count - 1).clamp(min=0)  # the last rank of a run
    pos = top * ((100.0 if percentile is None else percentile) / 100)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, top)
    last = d.shape[1] - 1
    below, above = (d.gather(1, (first + k).clamp(max=last)).double() for k in (lo, hi))
    return below + (pos - lo) * (above - below)


def _stats(
    d: torch.Tensor, first: torch.Tensor, count: torch.Tensor, tol: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, within)`` ``[B, K]`` of each slot's run of ``d`` (as in
    :func:`_percentile`): float64 sum of the distances and int64 count of those at most
    ``tol[k]``."""
    B, K = count.shape
    total = torch.empty(B, K, dtype=torch.float64, device=d.device)
    within = torch.empty(B, K, dtype=torch.int64, device=d.device)
    _surface_stats_kernel[(B * K,)](
        d, first.contiguous(), count.contiguous(), tol, total, within, d.shape[1], K,
        BLOCK=_STATS_BLOCK,
    )  # fmt: skip
    return total, within


@dataclass
class _Surfaces:
    """The surfaces of prediction (side 0) and target (side 1) for the measured classes:
    ``idx`` (the result's columns), ``uniq`` the distinct ones (the slots), ``counts``
    surface pixels per side ``[B, K]``, and ``to_other(side)``: ``(d, first)``, the
    distances of that side's surface pixels to the other surface, each slot's run
    ascending (``d`` float32 ``[B, *]``, ``first`` int64 ``[B, K]``; see
    :func:`_percentile`)."""

    idx: list[int]
    uniq: list[int]
    counts: list[torch.Tensor]
    to_other: Callable[[int], tuple[torch.Tensor, torch.Tensor]]

    def finish(self, value: torch.Tensor, one_sided: float) -> torch.Tensor:
        """float32 ``[B, len(idx)]``: ``value`` where both surfaces of a class have pixels,
        ``one_sided`` where one has, NaN where neither has."""
        n_p, n_g = (c > 0 for c in self.counts)
        out = torch.where(n_p & n_g, value, torch.where(n_p | n_g, one_sided, math.nan))
        out = out.float()
        if self.idx == self.uniq:
            return out
        rank = {c: k for k, c in enumerate(self.uniq)}
        columns = device_constant([rank[c] for c in self.idx], torch.int64, out.device)
        return out.index_select(1, columns)


def _label_surfaces(preds, target, num_classes, ignore_index, idx, spacing, validate):
    """:class:`_Surfaces` of label maps (or logits' argmax): the surfaces of all classes
    in one int32 map per side, each surface pixel keyed by its class's slot."""
    logits = _metric_check(preds, target, num_classes)
    check_ignore_index(ignore_index, labels=True)
    pred = preds.argmax(dim=1) if logits else preds
    valid = not_ignored(target, ignore_index)
    t_in, p_in = in_classes(target, num_classes), in_classes(pred, num_classes)
    if validate:
        _raise_if_bad((valid & ~t_in).sum() + (~p_in).sum(), num_classes, ignore_index)
    spacing = list(check_spacing(spacing, target.dim() - 1))
    uniq = _distinct(idx)
    K, B = len(uniq), target.shape[0]
    rank = {c: k for k, c in enumerate(uniq)}
    lookup = [rank.get(c, K) for c in range(num_classes)] + [K]
    slot = device_constant(lookup, torch.int64, target.device)
    labels, keys, counts = [], [], []
    for x, ok in ((pred, p_in), (target, t_in)):
        labels.append(_surface_labels(torch.where(valid & ok, x.to(torch.int32), -1)))
        keys.append(slot[labels[-1].reshape(B, -1).long()])  # -1 (none) reads slot[C] = K
        counts.append(_groups(keys[-1], K))

    def to_other(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        to_map = _class_map_op(labels[1 - side], uniq, True, spacing, None, 0)
        return _sorted_distances(keys[side], to_map), counts[side].cumsum(1) - counts[side]

    return _Surfaces(idx, uniq, counts, to_other)


def _mask_surfaces(preds, target, num_classes, ignore_index, idx, spacing, validate):
    """:class:`_Surfaces` of multilabel masks: the measured channels' surfaces as uint8
    ``[B, K, *S]`` masks; each (image, class) row of distances is sorted on its own."""
    check_mask_inputs(preds, target, num_classes, ignore_index)
    if validate:  # one counting pass over both inputs, then one scalar read
        _raise_if_bad(
            multilabel_counts(preds, target, num_classes, ignore_index)[1],
            num_classes,
            ignore_index,
            "multilabel",
        )
    spacing = list(check_spacing(spacing, target.dim() - 2))
    uniq = _distinct(idx)
    K, (B, _, *spatial) = len(uniq), target.shape
    if uniq != list(range(num_classes)):  # the masks of the measured channels only
        channels = device_constant(uniq, torch.int64, target.device)
        preds, target = preds.index_select(1, channels), target.index_select(1, channels)
    surfaces, counts = [], []
    for m in mask_values(preds, target, ignore_index):
        cls = torch.where(m, 0, -1).to(torch.int32, memory_format=torch.contiguous_format)
        surface = _surface_labels(cls.view(B * K, *spatial)) == 0
        surfaces.append(surface.view(torch.uint8).view(B, K, *spatial))
        counts.append(surface.view(B, K, -1).sum(-1))
    P = math.prod(spatial)
    first = (torch.arange(K, device=target.device) * P).expand(B, K)

    def to_other(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        to_map = _class_map_op(surfaces[1 - side], list(range(K)), False, spacing, None, 0)
        on = surfaces[side] != 0
        d = torch.where(on, to_map.sqrt(), math.inf).view(B * K, P).sort(dim=1).values
        return d.view(B, K * P), first

    return _Surfaces(idx, uniq, counts, to_other)


def _surfaces(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None,
    ignore_index: float | None,
    classes: Sequence[int] | None,
    mode: str,
    validate: bool,
) -> _Surfaces:
    """The checks every surface metric makes, then the surfaces of both inputs."""
    check_num_classes(num_classes)
    check_choice("mode", mode, MODES)
    idx = measured_classes(classes, num_classes)
    build = _label_surfaces if mode == "multiclass" else _mask_surfaces
    return build(preds, target, num_classes, ignore_index, idx, spacing, validate)


def _hausdorff(
    s: _Surfaces, sides: list[tuple[torch.Tensor, torch.Tensor]], percentile: float | None
) -> torch.Tensor:
    """The larger over ``sides`` (``s.to_other`` of side 0, or of both) of the percentile."""
    one_way = [_percentile(*side, s.counts[i], percentile) for i, side in enumerate(sides)]
    return s.finish(functools.reduce(torch.fmax, one_way), math.inf)


def _mean_distance(s: _Surfaces, stats: list) -> torch.Tensor:
    """Mean distance over the surface pixels of the sides of ``stats`` (``_stats`` each)."""
    total = sum(stat[0] for stat in stats)
    return s.finish(total / sum(s.counts[: len(stats)]), math.inf)


def _surface_dice(s: _Surfaces, stats: list) -> torch.Tensor:
    """Fraction of both sides' surface pixels within the tolerance ``stats`` counted."""
    return s.finish((stats[0][1] + stats[1][1]) / (s.counts[0] + s.counts[1]), 0.0)


@kernel_api
def hausdorff_distance(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    percentile: float | None = None,
    directed: bool = False,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
    validate: bool = True,
) -> torch.Tensor:
    """Hausdorff distance (HD, or HD95 with ``percentile=95``) of every image and measured
    class, float32 ``[B, K]``; semantics of ``segtriton.reference.hausdorff_distance``,
    computation in the module docstring."""
    percentile = ref_surface.check_percentile(percentile)
    s = _surfaces(preds, target, num_classes, spacing, ignore_index, classes, mode, validate)
    sides = [s.to_other(i) for i in ((0,) if directed else (0, 1))]
    return _hausdorff(s, sides, percentile)


@kernel_api
def average_surface_distance(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    directed: bool = False,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
    validate: bool = True,
) -> torch.Tensor:
    """Average (symmetric) surface distance of every image and measured class, float32
    ``[B, K]``; semantics of ``segtriton.reference.average_surface_distance``, computation
    in the module docstring."""
    s = _surfaces(preds, target, num_classes, spacing, ignore_index, classes, mode, validate)
    zero = device_constant([0.0] * len(s.uniq), torch.float64, target.device)
    stats = [_stats(*s.to_other(i), s.counts[i], zero) for i in ((0,) if directed else (0, 1))]
    return _mean_distance(s, stats)


@kernel_api
def surface_dice(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float | Sequence[float],
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
    validate: bool = True,
) -> torch.Tensor:
    """Normalised surface Dice of every image and measured class, float32 ``[B, K]``;
    semantics of ``segtriton.reference.surface_dice``, computation in the module
    docstring."""
    tau = ref_surface.check_tolerance(tolerance, num_classes)
    s = _surfaces(preds, target, num_classes, spacing, ignore_index, classes, mode, validate)
    tol = device_constant([tau[c] for c in s.uniq], torch.float64, target.device)
    return _surface_dice(s, [_stats(*s.to_other(i), s.counts[i], tol) for i in (0, 1)])


@kernel_api
def surface_metrics(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float | Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    """HD, HD95, ASSD and (given a ``tolerance``) NSD of every image and measured class,
    float32 ``[B, K]`` each; semantics of ``segtriton.reference.surface_metrics``. One
    distance transform per side serves all four (the single-metric functions run the
    same computation, so each value equals theirs bitwise)."""
    tau = None if tolerance is None else ref_surface.check_tolerance(tolerance, num_classes)
    s = _surfaces(preds, target, num_classes, spacing, ignore_index, classes, mode, validate)
    tol = device_constant([tau[c] if tau else 0.0 for c in s.uniq], torch.float64, target.device)
    sides = [s.to_other(i) for i in (0, 1)]
    stats = [_stats(*side, s.counts[i], tol) for i, side in enumerate(sides)]
    out = {
        "hd": _hausdorff(s, sides, None),
        "hd95": _hausdorff(s, sides, 95.0),
        "assd": _mean_distance(s, stats),
    }
    if tau is not None:
        out["nsd"] = _surface_dice(s, stats)
    return out


class StreamingSurfaceMetrics:
    """The surface metrics of every image seen (``update``), summarised by ``compute``;
    ``reset`` starts again.

    ``update(preds, target)`` runs :func:`surface_metrics` on the batch with this object's
    options and keeps each image's values on the device (``K`` floats per metric and
    image). ``compute()`` returns, for each metric (``hd``, ``hd95``, ``assd``, and ``nsd``
    given a ``tolerance``), the per-class mean over images (``[K]``; NaN values, a class
    in neither mask, are left out) and under ``"m" + name`` the mean of those over
    classes (NaN left out). A distance is inf where a class is in only one mask; it makes
    the means inf unless ``missing`` gives the value to count instead (such as the
    volume's diagonal: 373.13 mm for BraTS's 240 x 240 x 155 grid). ``values`` holds the
    per-image ``[images, K]`` tensors. Under torch.distributed, ``sync(process_group)``
    gathers every rank's images (rank order) for ``compute``, until the next ``update``
    or ``reset``. ``validate`` is
    :func:`surface_metrics`'s: it reads one scalar per ``update``.
    """

    def __init__(
        self,
        num_classes: int,
        tolerance: float | Sequence[float] | None = None,
        spacing: Sequence[float] | None = None,
        ignore_index: float | None = None,
        classes: Sequence[int] | None = None,
        mode: str = "multiclass",
        missing: float | None = None,
        validate: bool = True,
    ) -> None:
        check_num_classes(num_classes)
        check_choice("mode", mode, MODES)
        if tolerance is not None:
            ref_surface.check_tolerance(tolerance, num_classes)
        measured_classes(classes, num_classes)
        self.missing = check_number("missing", missing, none_ok=True)
        self.options: dict[str, Any] = {
            "num_classes": num_classes, "tolerance": tolerance, "spacing": spacing,
            "ignore_index": ignore_index, "classes": classes, "mode": mode,
            "validate": check_flag("validate", validate),
        }  # fmt: skip
        self.reset()

    def reset(self) -> None:
        self._batches: list[dict[str, torch.Tensor]] = []
        self._synced: dict[str, torch.Tensor] | None = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self._batches.append(surface_metrics(preds, target, **self.options))
        self._synced = None

    @property
    def values(self) -> dict[str, torch.Tensor]:
        """Per-image values ``[images, K]`` of each metric: all ranks' after ``sync``."""
        if self._synced is not None:
            return self._synced
        if not self._batches:
            raise RuntimeError("no images yet: call update() before reading the metrics")
        if len(self._batches) > 1:  # concatenated when read: a cat per update is O(n^2)
            self._batches = [
                {k: torch.cat([b[k] for b in self._batches]) for k in self._batches[0]}
            ]
        return self._batches[0]

    def sync(self, process_group: dist.ProcessGroup | None = None) -> None:
        """Gather every rank's per-image values (collective: every rank of the group calls
        it; each must have seen at least one batch). Without torch.distributed
        initialised (and no group given) it does nothing (:func:`.metrics.distributed`)."""
        if not distributed(process_group):
            return
        own = self.values
        self._synced = {k: gather_rows(v, process_group) for k, v in own.items()}

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, v in self.values.items():
            if self.missing is not None and name != "nsd":
                v = torch.where(v == math.inf, self.missing, v)
            per_class = v.nanmean(0)
            out[name], out["m" + name] = per_class, per_class.nanmean()
        return out
