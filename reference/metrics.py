"""Segmentation metrics from a confusion matrix.

``mode='multiclass'`` (default): label maps; ``cm[t, p]`` (``[C, C]``) counts pixels whose
target is t and prediction p (rows: target, columns: prediction, the torchmetrics
convention). ``mode='multilabel'``: one binary mask per channel, which may overlap
(BraTS's whole tumour, tumour core and enhancing tumour); ``cm[c]`` (``[C, 2, 2]``) is
channel c's ``[[TN, FP], [FN, TP]]`` over its (pixel, channel) entries, as torchmetrics'
MultilabelConfusionMatrix. Every metric is a ratio of counts; a ratio whose denominator
is 0 (for IoU and Dice: a class absent from both target and prediction; for class
accuracy: a class absent from the target) is NaN and is left out of means
(``nanmean``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import (
    _checking_values,
    check_choice,
    check_class_indices,
    check_ignore_index,
    check_label_dtype,
    check_num_classes,
    check_real_tensor,
    checks_flags,
    device_constant,
    label_mask,
)

MODES = ("multiclass", "multilabel")


def measured_classes(classes: Sequence[int] | None, C: int) -> list[int]:
    """The classes a metric reports, in order: ``classes`` checked against ``[0, C)``
    (repeats allowed), every class by default."""
    return list(range(C)) if classes is None else check_class_indices("classes", classes, C)


def label_inputs(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, pred)`` of multiclass metric inputs: the not-ignored mask of the labels
    ``target [B, *S]`` and the predicted labels (the argmax of float ``preds``, logits
    ``[B, C, *S]``, else ``preds`` itself, labels of the target's shape). Shapes, dtypes
    and devices are checked before any value is read."""
    check_label_dtype(target)
    if target.dim() < 2:
        raise ValueError(f"target must be [B, *spatial], got shape {tuple(target.shape)}")
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"preds must be a torch.Tensor, got {type(preds).__name__}")
    if preds.device != target.device:
        raise ValueError(f"preds are on {preds.device} but target on {target.device}")
    valid = label_mask(target, num_classes, ignore_index)
    return valid, _pred_labels(preds, target, num_classes)


def _pred_labels(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
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


def check_mask_inputs(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: float | None
) -> None:
    """Multilabel inputs: preds and target of one shape ``[B, C, *S]`` with C =
    ``num_classes``, on one device (no value reads)."""
    check_real_tensor("preds", preds)
    check_real_tensor("target", target)
    check_ignore_index(ignore_index, labels=False)
    if preds.dim() < 3 or preds.shape[1] != num_classes:
        raise ValueError(
            f"multilabel preds must be [B, {num_classes}, *spatial] masks or logits, "
            f"got shape {tuple(preds.shape)}"
        )
    if target.shape != preds.shape:
        raise ValueError(
            f"multilabel target shape {tuple(target.shape)} does not match preds "
            f"{tuple(preds.shape)}"
        )
    if target.device != preds.device:
        raise ValueError(f"preds are on {preds.device} but target on {target.device}")
    if preds.numel() == 0:
        raise ValueError(f"preds are empty (shape {tuple(preds.shape)})")


def mask_valid(target: torch.Tensor, ignore_index: float | None) -> torch.Tensor:
    """Where a multilabel target is not ``ignore_index``, compared as numbers (a uint8
    target must not equal -100 at 156)."""
    if ignore_index is None or target.dtype == torch.bool:
        return torch.ones_like(target, dtype=torch.bool)
    return (target if target.is_floating_point() else target.long()) != ignore_index


def mask_values(
    preds: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, true)``, bool ``[B, C, *S]``: the multilabel masks, a pixel whose target is
    ``ignore_index`` in neither. Float preds are logits (in the mask where positive:
    sigmoid above 1/2); other preds are in it where nonzero; the target where it is 1."""
    valid = mask_valid(target, ignore_index)
    pred = valid & (preds > 0 if preds.is_floating_point() else preds != 0)
    return pred, valid & (target == 1)


def bad_mask_values(
    preds: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bad_pred, bad_true)``, bool ``[B, C, *S]``: where an integer prediction is not 0
    or 1, and where a target is neither 0, 1 nor ``ignore_index``."""
    bad_true = mask_valid(target, ignore_index) & (target != 0) & (target != 1)
    if preds.is_floating_point():
        return torch.zeros_like(bad_true), bad_true
    return (preds != 0) & (preds != 1), bad_true


PROBABILITY_PREDS = (
    "multilabel float preds are read as logits (in the mask where > 0), but every value "
    "lies in [0, 1] and some strictly between, as probabilities do: pass `probs > 0.5` "
    "(or the logits)"
)


def looks_like_probabilities(preds: torch.Tensor) -> bool:
    """Whether float ``preds`` lie in [0, 1] with some strictly between: sigmoid outputs
    passed where logits are read (every value would fall in the mask)."""
    if not preds.is_floating_point():
        return False
    inside = bool(((preds > 0) & (preds < 1)).any())
    return inside and not bool(((preds < 0) | (preds > 1)).any())


def check_mask_values(
    preds: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> None:
    """Raise ``ValueError`` naming the first bad value of :func:`bad_mask_values`, or for
    preds that :func:`looks_like_probabilities` (these reads sync with a GPU: they are
    skipped where ``value_checks(False)`` turns value checks off)."""
    if not _checking_values():
        return
    bad_pred, bad_true = bad_mask_values(preds, target, ignore_index)
    if bool(bad_true.any()):
        value = float(target[bad_true].flatten()[0])
        raise ValueError(
            f"target mask holds {value}: multilabel metrics need hard {{0, 1}} masks "
            f"(or ignore_index={ignore_index})"
        )
    if bool(bad_pred.any()):
        value = int(preds[bad_pred].flatten()[0])
        raise ValueError(f"integer preds must be {{0, 1}} masks, got {value}")
    if looks_like_probabilities(preds):
        raise ValueError(PROBABILITY_PREDS)


def multilabel_matrix(counts: torch.Tensor) -> torch.Tensor:
    """``[..., C, 2, 2]`` ``[[TN, FP], [FN, TP]]`` from ``[..., 4, C]`` counts (true
    positives, target entries, predicted entries, counted entries)."""
    tp, t, p, n = counts.unbind(-2)
    return torch.stack((n - t - p + tp, p - tp, t - tp, tp), -1).unflatten(-1, (2, 2))


def _multilabel_confusion(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None,
    per_image: bool,
) -> torch.Tensor:
    check_mask_inputs(preds, target, num_classes, ignore_index)
    check_mask_values(preds, target, ignore_index)
    pred, true = mask_values(preds, target, ignore_index)
    valid = mask_valid(target, ignore_index)
    dims = tuple(range(2, target.dim()))
    counts = torch.stack([m.sum(dims) for m in (pred & true, true, pred, valid)], dim=1)
    cm = multilabel_matrix(counts)
    return cm if per_image else cm.sum(0)


@checks_flags
def confusion_matrix(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None = None,
    per_image: bool = False,
    mode: str = "multiclass",
) -> torch.Tensor:
    """int64 confusion matrix: ``[C, C]`` (multiclass) or ``[C, 2, 2]`` (multilabel), with a
    leading ``B`` dim when ``per_image``.

    mode='multiclass': preds are integer labels ``[B, *S]`` or logits ``[B, C, *S]``
    (``torch.argmax`` over dim 1: ties go to the lowest class, and a pixel with a NaN
    logit predicts its first NaN's class); target integer labels ``[B, *S]``. Pixels whose
    target is ``ignore_index`` are not counted.
    mode='multilabel': preds ``[B, C, *S]`` are masks (bool, or integers 0/1) or logits
    (float: in the mask where positive, i.e. sigmoid above 1/2); target ``[B, C, *S]`` hard
    masks (0/1, any dtype). An entry whose target is ``ignore_index`` is not counted
    (compared as a number). Any other target value, or an integer prediction other than
    0 / 1, raises ``ValueError``; so do float preds that all lie in [0, 1] with some
    strictly between (probabilities, which as logits would all be in the mask: pass
    ``probs > 0.5``).
    """
    check_num_classes(num_classes)
    check_choice("mode", mode, MODES)
    if mode == "multilabel":
        return _multilabel_confusion(preds, target, num_classes, ignore_index, per_image)
    valid, pred = label_inputs(preds, target, num_classes, ignore_index)
    C, B = num_classes, target.shape[0]
    idx = target.long() * C + pred.long()
    if per_image:
        idx = idx + torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * C * C
    counts = torch.bincount(idx[valid], minlength=(B if per_image else 1) * C * C)
    return counts.view(B, C, C) if per_image else counts.view(C, C)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), float("nan"))


def class_counts(cm: torch.Tensor, mode: str = "multiclass") -> torch.Tensor:
    """int64 counts per class, every metric here being a ratio of them: ``[..., 3, C]``
    from a multiclass ``[..., C, C]`` matrix (true positives ``diag``, target pixels (row
    sums), predicted pixels (column sums)); ``[..., 4, C]`` from a multilabel
    ``[..., C, 2, 2]`` one (the same three, then the counted entries)."""
    check_choice("mode", mode, MODES)
    if mode == "multilabel":
        return torch.stack(
            (cm[..., 1, 1], cm[..., 1, :].sum(-1), cm[..., :, 1].sum(-1), cm.sum((-2, -1))), -2
        )
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


def specificity_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Per-class specificity (true negative rate) ``TN / (TN + FP)`` of a multiclass matrix,
    where ``TN + FP`` are the counted pixels whose target is not c: ``(total - row - col +
    diag) / (total - row)``, float64 ``[..., C]`` (NaN for a class every pixel holds)."""
    tp, target, pred = class_counts(cm).unbind(-2)
    return _specificity(tp, target, pred, target.sum(-1, keepdim=True))


def _specificity(tp, target, pred, n):
    return _ratio(n - target - pred + tp, n - target)


def _mcc(tp, target, pred, n):
    """Matthews correlation of the class against the rest, ``(TP TN - FP FN) / sqrt((TP +
    FP) (TP + FN) (TN + FP) (TN + FN))``, in float64 (the product passes int64); NaN where
    a factor is 0 (the class, or its complement, is in no target or no prediction)."""
    tp, target, pred, n = (x.to(torch.float64) for x in (tp, target, pred, n))
    fp, fn = pred - tp, target - tp
    tn = n - target - fp
    den = torch.sqrt(pred * target) * torch.sqrt((n - target) * (n - pred))
    return _ratio(tp * tn - fp * fn, den)


def _generalized_dice(tp, target, pred):
    """Sudre et al.'s generalized Dice score ``2 sum_c w_c TP_c / sum_c w_c (T_c + P_c)``,
    ``w_c = 1 / T_c^2``, in float64; a class without target pixels weighs as much as the
    heaviest class with some (1 when none has any: MONAI's rule); NaN where the
    denominator is 0."""
    tp, t, p = (x.to(torch.float64) for x in (tp, target, pred))
    w = torch.where(t > 0, 1.0 / torch.where(t > 0, t * t, 1.0), 0.0)
    heaviest = w.amax(-1, keepdim=True)
    w = torch.where(t > 0, w, torch.where(heaviest > 0, heaviest, 1.0))
    return _ratio(2 * (w * tp).sum(-1), (w * (t + p)).sum(-1))


def _overall_mcc(tp, target, pred, n, masks):
    """The MCC of the whole confusion, in float64; NaN where its denominator is 0. Label
    maps: Gorodkin's R_K over the C x C matrix, ``(s c - sum_k t_k p_k) / sqrt(sum_k p_k
    (s - p_k) * sum_k t_k (s - t_k))`` (c correct of s counted pixels; t_k, p_k target and
    predicted pixels of class k; each factor a sum of non-negative terms, since the p_k
    and the t_k each sum to s). Masks: the binary MCC of every counted (pixel, channel)
    entry pooled."""
    if masks:
        return _mcc(*(x.sum(-1) for x in (tp, target, pred, n)))
    tp, t, p = (x.to(torch.float64) for x in (tp, target, pred))
    s, c = t.sum(-1, keepdim=True), tp.sum(-1)
    num = s[..., 0] * c - (t * p).sum(-1)
    den = torch.sqrt((p * (s - p)).sum(-1)) * torch.sqrt((t * (s - t)).sum(-1))
    return _ratio(num, den)


def pixel_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Correct pixels over counted pixels: ``trace / total`` (NaN when nothing is counted)."""
    return _ratio(cm.diagonal(dim1=-2, dim2=-1).sum(-1), cm.sum((-2, -1)))


def segmentation_metrics(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: float | None = None,
    average: str = "dataset",
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """IoU, mIoU, Dice (the F1 score), mean Dice, precision, mean precision, pixel accuracy,
    class accuracy (recall, sensitivity) and mean class accuracy, specificity and mean
    specificity (``TN / (TN + FP)``: of the counted pixels whose target is not the class,
    the fraction not predicted as it; NaN where there are none), the Matthews correlation
    of each class against the rest ``mcc`` and its mean ``mean_mcc`` (``(TP TN - FP FN) /
    sqrt((TP + FP) (TP + FN) (TN + FP) (TN + FN))``; NaN where a factor is 0, as when the
    class is in no target or no prediction), ``overall_mcc``, the MCC of the whole
    confusion (label maps: Gorodkin's multiclass R_K, torchmetrics'
    MulticlassMatthewsCorrCoef; masks: the binary MCC of every (pixel, channel) entry
    pooled, its MultilabelMatthewsCorrCoef; over every class, whatever ``classes``
    selects; NaN where its denominator is 0), the generalized Dice score
    ``generalized_dice`` (Sudre et al.: ``2 sum_c w_c TP_c / sum_c w_c (T_c + P_c)``
    over the reported classes, ``w_c = 1 / T_c^2``, a class without target pixels
    weighted as the heaviest one with some, or 1 if none has any, as MONAI's and
    torchmetrics' GeneralizedDiceScore with weight_type 'square'; NaN where the
    denominator is 0, where MONAI gives 1), and the frequency-weighted
    IoU ``fwiou = sum_c T_c IoU_c / sum_c T_c`` over the reported classes (``T_c``: target
    pixels of class c; detectron2's fwIoU; NaN without target pixels).

    average='dataset': one confusion matrix over every pixel of the batch; per-class
      values come from it and means are ``nanmean`` over classes (mmseg's IoUMetric,
      torchmetrics' MulticlassJaccardIndex with average='macro').
    average='image': one matrix per image; per-class values are ``nanmean`` over images,
      ``miou`` / ``mdice`` / ``mean_class_accuracy`` are the mean over images of each
      image's ``nanmean`` over classes (images where all are NaN are left out), and
      ``pixel_accuracy``, ``overall_mcc`` and ``generalized_dice`` are means of
      per-image values (MONAI's and torchmetrics' generalized Dice average images).
    preds, target, num_classes, ignore_index, mode: as :func:`confusion_matrix` reads
      them (a pixel, or multilabel entry, whose target is ``ignore_index`` is counted
      nowhere: not in any class's TP, FP, FN or TN). 'multilabel' scores each
      channel's mask on its own (true positives, target and predicted entries of that
      channel), so IoU / Dice per channel are those of BraTS's regions, and
      ``pixel_accuracy`` is the fraction of counted (pixel, channel) entries predicted
      right (torchmetrics' MultilabelAccuracy with average='micro').
    classes: the classes reported per class and averaged in the means, column k for
      ``classes[k]`` (every class by default); ``range(1, C)`` leaves the background out
      as MONAI's ``include_background=False``. Every pixel not ignored still counts: the matrix,
      ``pixel_accuracy`` and each class's false positives cover all classes.
    Returns float64 tensors and the int64 ``confusion_matrix`` (``[C, C]`` or
    ``[B, C, C]``; multilabel ``[C, 2, 2]`` or ``[B, C, 2, 2]``).
    """
    check_choice("average", average, ("dataset", "image"))
    check_choice("mode", mode, MODES)
    measured_classes(classes, num_classes)
    cm = confusion_matrix(preds, target, num_classes, ignore_index, average == "image", mode)
    return metrics_from_confusion(cm, mode, classes)


def metrics_from_confusion(
    cm: torch.Tensor, mode: str = "multiclass", classes: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """The metrics of :func:`segmentation_metrics` from a matrix of :func:`confusion_matrix`
    (average 'dataset') or per-image matrices (average 'image'), on cm's device."""
    return {"confusion_matrix": cm, **metrics_from_counts(class_counts(cm, mode), classes)}


def metrics_from_counts(
    counts: torch.Tensor, classes: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """The metrics of :func:`metrics_from_confusion` (but the matrix) from
    :func:`class_counts`: ``[3 or 4, C]`` (average 'dataset') or ``[B, 3 or 4, C]``
    (average 'image', the same rules of means). With the fourth row (multilabel: counted
    entries per channel) ``pixel_accuracy`` is the fraction of counted entries right.
    ``classes``: as in :func:`segmentation_metrics`."""
    tp, target, pred = counts.unbind(-2)[:3]
    if counts.shape[-2] == 4:
        n = counts[..., 3, :]
        pixel = _ratio((n - target - pred + 2 * tp).sum(-1), n.sum(-1))
    else:
        n = target.sum(-1, keepdim=True).expand_as(target)
        pixel = _ratio(tp.sum(-1), target.sum(-1))
    overall_mcc = _overall_mcc(tp, target, pred, n, counts.shape[-2] == 4)
    if classes is not None:
        idx = device_constant(
            measured_classes(classes, counts.shape[-1]), torch.int64, counts.device
        )
        tp, target, pred, n = (x.index_select(-1, idx) for x in (tp, target, pred, n))
    iou, dice, acc = _iou(tp, target, pred), _dice(tp, target, pred), _ratio(tp, target)
    precision = _ratio(tp, pred)
    specificity = _specificity(tp, target, pred, n)
    mcc = _mcc(tp, target, pred, n)
    weighted = torch.where(target > 0, iou * target, 0.0).sum(-1)
    out = {
        "iou": iou,
        "miou": iou.nanmean(-1),
        "fwiou": _ratio(weighted, target.sum(-1)),
        "dice": dice,
        "mdice": dice.nanmean(-1),
        "class_accuracy": acc,
        "mean_class_accuracy": acc.nanmean(-1),
        "precision": precision,
        "mean_precision": precision.nanmean(-1),
        "specificity": specificity,
        "mean_specificity": specificity.nanmean(-1),
        "mcc": mcc,
        "mean_mcc": mcc.nanmean(-1),
        "overall_mcc": overall_mcc,
        "generalized_dice": _generalized_dice(tp, target, pred),
        "pixel_accuracy": pixel,
    }
    if counts.dim() == 3:
        for key in ("iou", "dice", "class_accuracy", "precision", "specificity", "mcc"):
            out[key] = out[key].nanmean(0)
        for key in (
            "miou",
            "fwiou",
            "mdice",
            "mean_class_accuracy",
            "mean_precision",
            "mean_specificity",
            "mean_mcc",
            "overall_mcc",
            "generalized_dice",
            "pixel_accuracy",
        ):
            out[key] = out[key].nanmean()
    return out
