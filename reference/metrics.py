"""Segmentation metrics from a C x C confusion matrix.

``cm[t, p]`` counts pixels whose target is t and prediction p (rows: target, columns:
prediction, the torchmetrics convention). Every metric is a ratio of counts; a ratio
whose denominator is 0 (for IoU and Dice: a class absent from both target and
prediction; for class accuracy: a class absent from the target) is NaN and is left out
of means (``nanmean``).
"""

from __future__ import annotations

import torch

from ._common import check_choice, check_num_classes, checks_flags, label_mask


def _pred_labels(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"preds must be a torch.Tensor, got {type(preds).__name__}")
    if preds.is_floating_point():
        expected = (target.shape[0], num_classes, *target.shape[1:])
        if tuple(preds.shape) != expected:
            raise ValueError(
                f"float preds are logits of shape {expected}, got {tuple(preds.shape)}"
            )
        return preds.argmax(dim=1)
    if preds.shape != target.shape:
        raise ValueError(
            f"label preds shape {tuple(preds.shape)} does not match target {tuple(target.shape)}"
        )
    label_mask(preds, num_classes, None)
    return preds


@checks_flags
def confusion_matrix(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    per_image: bool = False,
) -> torch.Tensor:
    """int64 confusion matrix ``[C, C]`` (or ``[B, C, C]`` with ``per_image=True``).

    preds: integer labels ``[B, *S]`` or logits ``[B, C, *S]`` (``torch.argmax`` over dim 1:
    ties go to the lowest class, and a pixel with a NaN logit predicts its first NaN's
    class). Pixels whose target is ``ignore_index`` are not counted.
    """
    check_num_classes(num_classes)
    valid = label_mask(target, num_classes, ignore_index)
    if target.dim() < 2:
        raise ValueError(f"target must be [B, *spatial], got shape {tuple(target.shape)}")
    pred = _pred_labels(preds, target, num_classes)
    C, B = num_classes, target.shape[0]
    idx = target.long() * C + pred.long()
    if per_image:
        idx = idx + torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * C * C
    counts = torch.bincount(idx[valid], minlength=(B if per_image else 1) * C * C)
    return counts.view(B, C, C) if per_image else counts.view(C, C)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def class_counts(cm: torch.Tensor) -> torch.Tensor:
    """int64 ``[..., 3, C]``: per class, true positives (``diag``), target pixels (row
    sums) and predicted pixels (column sums); every metric here is a ratio of these."""
    return torch.stack((cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)), dim=-2)


def _iou(tp: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return _ratio(tp, target + pred - tp)


def _dice(tp: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return _ratio(2 * tp, target + pred)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``IoU_c = TP / (TP + FP + FN)``: ``diag / (row + col - diag)``, float64 ``[..., C]``."""
    return _iou(*class_counts(cm).unbind(-2))


def dice_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``Dice_c = 2 TP / (2 TP + FP + FN)``: ``2 diag / (row + col)``, float64 ``[..., C]``."""
    return _dice(*class_counts(cm).unbind(-2))


def class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy (recall) ``TP / (TP + FN)``: ``diag / row``, float64 ``[..., C]``."""
    return _ratio(cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1))


def precision_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Per-class precision ``TP / (TP + FP)``: ``diag / col``, float64 ``[..., C]`` (NaN for
    a class never predicted)."""
    return _ratio(cm.diagonal(dim1=-2, dim2=-1), cm.sum(-2))


def pixel_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Correct pixels over counted pixels: ``trace / total`` (NaN when nothing is counted)."""
    return _ratio(cm.diagonal(dim1=-2, dim2=-1).sum(-1), cm.sum((-2, -1)))


def segmentation_metrics(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    average: str = "dataset",
) -> dict[str, torch.Tensor]:
    """IoU, mIoU, Dice (the F1 score), mean Dice, precision, mean precision, pixel accuracy,
    class accuracy (recall) and mean class accuracy.

    average='dataset': one confusion matrix over every pixel of the batch; per-class
      values come from it and means are ``nanmean`` over classes (mmseg's IoUMetric,
      torchmetrics' MulticlassJaccardIndex with average='macro').
    average='image': one matrix per image; per-class values are ``nanmean`` over images,
      ``miou`` / ``mdice`` / ``mean_class_accuracy`` are the mean over images of each
      image's ``nanmean`` over classes (images where all are NaN are left out), and
      ``pixel_accuracy`` is the mean of per-image accuracies.
    Returns float64 tensors and the int64 ``confusion_matrix`` (``[C, C]`` or ``[B, C, C]``).
    """
    check_choice("average", average, ("dataset", "image"))
    cm = confusion_matrix(preds, target, num_classes, ignore_index, per_image=average == "image")
    return metrics_from_confusion(cm)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metrics of :func:`segmentation_metrics` from a ``[C, C]`` matrix (average
    'dataset') or ``[B, C, C]`` per-image matrices (average 'image'), on cm's device."""
    return {"confusion_matrix": cm, **metrics_from_counts(class_counts(cm))}


def metrics_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metrics of :func:`metrics_from_confusion` (but the matrix) from
    :func:`class_counts`: ``[3, C]`` (average 'dataset') or ``[B, 3, C]`` (average
    'image', the same rules of means)."""
    tp, target, pred = counts.unbind(-2)
    iou, dice, acc = _iou(tp, target, pred), _dice(tp, target, pred), _ratio(tp, target)
    precision = _ratio(tp, pred)
    out = {
        "iou": iou,
        "miou": iou.nanmean(-1),
        "dice": dice,
        "mdice": dice.nanmean(-1),
        "class_accuracy": acc,
        "mean_class_accuracy": acc.nanmean(-1),
        "precision": precision,
        "mean_precision": precision.nanmean(-1),
        "pixel_accuracy": _ratio(tp.sum(-1), target.sum(-1)),
    }
    if counts.dim() == 3:
        for key in ("iou", "dice", "class_accuracy", "precision"):
            out[key] = out[key].nanmean(0)
        for key in ("miou", "mdice", "mean_class_accuracy", "mean_precision", "pixel_accuracy"):
            out[key] = out[key].nanmean()
    return out
