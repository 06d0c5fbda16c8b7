"""Reference metrics against brute-force counting, per image and over the dataset."""

from __future__ import annotations

import math

import pytest
import torch

from segtriton import reference as ref


def _brute_cm(pred, target, C, ignore):
    cm = torch.zeros(C, C, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != ignore:
            cm[t, p] += 1
    return cm


@pytest.mark.parametrize("C", [1, 2, 3, 19])
@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_confusion_matrix_counts(C, spatial, label_dtype, gen):
    target = torch.randint(0, C, (3, *spatial), generator=gen)
    target = target.masked_fill(torch.rand(target.shape, generator=gen) < 0.2, 255)
    logits = torch.randn(3, C, *spatial, generator=gen)
    pred = logits.argmax(1)
    target = target.to(label_dtype)
    cm = ref.confusion_matrix(logits, target, C, ignore_index=255)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, _brute_cm(pred, target.long(), C, 255))
    per = ref.confusion_matrix(pred, target, C, ignore_index=255, per_image=True)
    for b in range(3):
        assert torch.equal(per[b], _brute_cm(pred[b], target[b].long(), C, 255))
    assert torch.equal(per.sum(0), cm)


def test_metric_formulas_on_a_hand_matrix():
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    iou = ref.iou_per_class(cm)
    assert iou[0].item() == 5 / 8 and iou[1].item() == 3 / 6 and math.isnan(iou[2].item())
    dice = ref.dice_per_class(cm)
    assert dice[0].item() == 10 / 13 and dice[1].item() == 6 / 9
    acc = ref.class_accuracy(cm)
    assert acc[0].item() == 5 / 6 and acc[1].item() == 3 / 5 and math.isnan(acc[2].item())
    precision = ref.precision_per_class(cm)
    assert precision[0].item() == 5 / 7 and precision[1].item() == 3 / 4
    assert math.isnan(precision[2].item())
    # 11 pixels: TN = total - row - col + diag over total - row
    assert ref.specificity_per_class(cm).tolist() == [3 / 5, 5 / 6, 1.0]
    assert ref.pixel_accuracy(cm).item() == 8 / 11
    # frequency-weighted IoU: target pixels 6 and 5 weigh IoU 5/8 and 3/6
    m = ref.metrics_from_confusion(cm)
    assert m["fwiou"].item() == pytest.approx((6 * 5 / 8 + 5 * 3 / 6) / 11, rel=1e-15)
    one = ref.metrics_from_confusion(cm + torch.diag(torch.tensor([0, 0, 1])))  # class 2: 1 px
    assert one["fwiou"].item() == pytest.approx((6 * 5 / 8 + 5 * 3 / 6 + 1) / 12, rel=1e-15)
    # MCC against the rest: class 0 (TP 5, FN 1, FP 2, TN 3): (15 - 2) / sqrt(7 6 5 4);
    # class 1 (TP 3, FN 2, FP 1, TN 5) the same; class 2, in no target or prediction, NaN
    mcc = m["mcc"].tolist()
    assert mcc[:2] == pytest.approx([13 / math.sqrt(840)] * 2, rel=1e-15) and math.isnan(mcc[2])
    assert m["mean_mcc"].item() == pytest.approx(13 / math.sqrt(840), rel=1e-15)
    # two classes in play: the multiclass R_K is their common MCC
    assert m["overall_mcc"].item() == pytest.approx(13 / math.sqrt(840), rel=1e-15)


def test_generalized_dice_by_hand():
    """2 sum w_c TP_c / sum w_c (T_c + P_c), w_c = 1 / T_c^2; a class in no target weighs as
    the heaviest other (rows: target)."""
    cm = torch.tensor([[5, 1, 1], [2, 3, 0], [0, 1, 4]])  # T = P = (7, 5, 5), TP (5, 3, 4)
    got = ref.metrics_from_confusion(cm)["generalized_dice"].item()
    assert got == pytest.approx((10 / 49 + 14 / 25) / (14 / 49 + 20 / 25), rel=1e-15)
    cm = torch.tensor([[2, 0, 1], [0, 2, 0], [0, 0, 0]])  # T (3, 2, 0): w (1/9, 1/4, 1/4)
    m = ref.metrics_from_confusion(cm)
    assert m["generalized_dice"].item() == pytest.approx(0.8, rel=1e-15)
    empty = ref.metrics_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(empty["generalized_dice"])  # nothing counted


def test_overall_mcc_by_hand():
    """R_K = (s c - sum t_k p_k) / sqrt(sum p_k (s - p_k) * sum t_k (s - t_k)); with masks,
    the binary MCC of the pooled (pixel, channel) entries."""
    cm = torch.tensor([[5, 1, 1], [2, 3, 0], [0, 1, 4]])  # s 17, c 12, t = p = (7, 5, 5)
    m = ref.metrics_from_confusion(cm)
    assert m["overall_mcc"].item() == pytest.approx((17 * 12 - 99) / 190, rel=1e-15)
    per_image = ref.metrics_from_confusion(torch.stack([cm, torch.diag(torch.tensor([3, 0, 2]))]))
    assert per_image["overall_mcc"].item() == pytest.approx((21 / 38 + 1) / 2, rel=1e-15)
    # masks [C, 2, 2] = [[TN, FP], [FN, TP]]: pooled TN 7, FP 2, FN 1, TP 4
    masks = torch.tensor([[[3, 1], [0, 2]], [[4, 1], [1, 2]]])
    m = ref.metrics_from_confusion(masks, mode="multilabel")
    want = (4 * 7 - 2 * 1) / math.sqrt(6 * 5 * 9 * 8)
    assert m["overall_mcc"].item() == pytest.approx(want, rel=1e-15)
    one_class = ref.metrics_from_confusion(torch.diag(torch.tensor([4, 0, 0])))
    assert math.isnan(one_class["overall_mcc"])  # one class everywhere: 0 / 0


def test_absent_classes_are_nan_and_left_out_of_means():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    m = ref.segmentation_metrics(pred, target, num_classes=4)
    assert math.isnan(m["iou"][2]) and math.isnan(m["iou"][3])
    assert m["miou"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mean_class_accuracy"].item() == pytest.approx((1 / 2 + 1) / 2)


def test_predicted_but_absent_class_scores_zero():
    target = torch.tensor([[[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 0], [0, 2]]])
    m = ref.segmentation_metrics(pred, target, num_classes=3)
    assert m["iou"][2].item() == 0.0 and math.isnan(m["iou"][1])
    assert math.isnan(m["class_accuracy"][2])
    assert m["precision"][2].item() == 0.0 and math.isnan(m["precision"][1])


def test_image_average_differs_from_dataset_average():
    target = torch.tensor([[[0, 0, 0, 1]], [[1, 1, 1, 1]]])
    pred = torch.tensor([[[0, 0, 1, 1]], [[1, 1, 1, 0]]])
    ds = ref.segmentation_metrics(pred, target, 2, average="dataset")
    im = ref.segmentation_metrics(pred, target, 2, average="image")
    # image 0: IoU = [2/3, 1/2]; image 1: IoU = [0 (predicted, absent), 3/4]
    assert im["miou"].item() == pytest.approx(((2 / 3 + 1 / 2) / 2 + (0 + 3 / 4) / 2) / 2)
    assert im["iou"][0].item() == pytest.approx((2 / 3 + 0) / 2)
    assert ds["iou"][1].item() == pytest.approx(4 / 6)
    assert im["pixel_accuracy"].item() == pytest.approx((3 / 4 + 3 / 4) / 2)


def test_all_ignored_gives_nan_accuracy():
    target = torch.full((1, 2, 2), 255)
    m = ref.segmentation_metrics(torch.zeros_like(target), target, 2, ignore_index=255)
    assert m["confusion_matrix"].sum() == 0 and math.isnan(m["pixel_accuracy"])


def test_detectron2_fwiou_and_pixel_accuracy(gen):
    """detectron2's SemSegEvaluator: fwIoU weighs each class's IoU by its share of the
    target pixels (classes absent from the target weigh 0) and pACC is correct over
    counted pixels: ours. Its mIoU averages only classes in the target; ours also counts a
    predicted but absent class as 0 (mmseg's rule), so they differ exactly there."""
    C = 6
    target = torch.randint(0, C - 1, (2, 9, 10), generator=gen)  # class 5 never in the target
    pred = torch.randint(0, C, (2, 9, 10), generator=gen)
    pred[0, 0, 0] = C - 1
    m = ref.segmentation_metrics(pred, target, C)
    cm = m["confusion_matrix"].double()
    tp, pos_gt, pos_pred = cm.diagonal(), cm.sum(1), cm.sum(0)
    valid = pos_gt > 0
    iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    weights = pos_gt[valid] / pos_gt.sum()
    assert m["fwiou"].item() == pytest.approx((iou * weights).sum().item(), rel=1e-12)
    assert m["pixel_accuracy"].item() == pytest.approx((tp.sum() / pos_gt.sum()).item())
    assert m["iou"][C - 1].item() == 0.0  # predicted, absent: 0 here, left out there
    assert m["miou"].item() == pytest.approx(torch.cat([iou, iou.new_zeros(1)]).mean().item())
