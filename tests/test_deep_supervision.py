"""DeepSupervisionLoss and its nearest-exact target resampling: the resampling equals
``F.interpolate(mode="nearest-exact")`` for any sizes and keeps integer labels; the
wrapper around a kernel loss equals the wrapper around the reference (loss and the
gradient of every level's output, in the interpreter on CPU); weights and bad calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import DEVICE

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.reference.deep_supervision import resize_nearest


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 3, 17, 9), (9, 5)), ((1, 2, 7, 5), (16, 11)), ((2, 1, 9, 8, 13), (5, 4, 7))],
)
def test_resize_nearest_is_torch_nearest_exact(shape, size, gen):
    x = torch.randn(shape, generator=gen)
    torch.testing.assert_close(
        resize_nearest(x, size), F.interpolate(x, size=size, mode="nearest-exact"), rtol=0, atol=0
    )
    labels = torch.randint(0, 7, (shape[0], *shape[2:]), generator=gen)
    expected = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0]
    for dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
        small = resize_nearest(labels.to(dtype).to(DEVICE), size)
        assert small.dtype == dtype
        assert torch.equal(small.cpu().long(), expected.long())


def _pyramid(gen, C=4, size=(16, 12), levels=3):
    outputs = [
        torch.randn(2, C, size[0] >> k, size[1] >> k, generator=gen).to(DEVICE)
        for k in range(levels)
    ]
    labels = torch.randint(0, C, (2, *size), generator=gen)
    labels = labels.masked_fill(torch.rand(labels.shape, generator=gen) < 0.2, 255)
    return outputs, labels.to(DEVICE)


def _loss_and_grads(loss_fn, outputs, target):
    leaves = [out.detach().requires_grad_(True) for out in outputs]
    loss = loss_fn(leaves, target)
    return loss.double(), [g.double() for g in torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("weight_mode", ["exp", "two", "same"])
def test_kernel_deep_supervision_matches_reference(weight_mode, gen):
    outputs, labels = _pyramid(gen)
    opts = {"ignore_index": 255, "scope": "image", "lambda_ce": 0.5}
    ours = ker.DeepSupervisionLoss(ker.CEDiceLoss(**opts), weight_mode)
    oracle = ref.DeepSupervisionLoss(ref.CEDiceLoss(**opts), weight_mode)
    loss, grads = _loss_and_grads(ours, outputs, labels)
    ref_loss, ref_grads = _loss_and_grads(oracle, [o.double() for o in outputs], labels)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-6)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max())


def test_levels_are_weighted_sums_of_the_loss(gen):
    """Each level is the loss at its size against the resampled (or given) target."""
    outputs, labels = _pyramid(gen, levels=4)
    dice = ref.DiceLoss(ignore_index=255)
    targets = [resize_nearest(labels, out.shape[2:]) for out in outputs]
    parts = [dice(out, tgt) for out, tgt in zip(outputs, targets, strict=True)]
    expected = {
        "exp": parts[0] + parts[1] / 2 + parts[2] / 4 + parts[3] / 8,
        "two": parts[0] + (parts[1] + parts[2] + parts[3]) / 2,
        "same": sum(parts),
    }
    for mode, value in expected.items():
        torch.testing.assert_close(ref.DeepSupervisionLoss(dice, mode)(outputs, labels), value)
    nnunet = [8 / 14, 4 / 14, 2 / 14, 0.0]  # 2^-l over all but the lowest level, summing to 1
    explicit = ref.DeepSupervisionLoss(dice, weights=nnunet)
    value = sum(w * p for w, p in zip(nnunet, parts, strict=True))
    torch.testing.assert_close(explicit(outputs, targets), value)  # targets given per level
    torch.testing.assert_close(explicit(outputs[0], labels), parts[0])  # one output: the loss
    assert [round(w, 4) for w in ref.DeepSupervisionLoss(dice).level_weights(6)] == [
        1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625,
    ]  # fmt: skip


def test_bad_calls_raise_clear_errors(gen):
    outputs, labels = _pyramid(gen)
    dice = ref.DiceLoss(ignore_index=255)
    with pytest.raises(TypeError, match="callable"):
        ref.DeepSupervisionLoss("dice")
    with pytest.raises(ValueError, match="weight_mode"):
        ref.DeepSupervisionLoss(dice, "linear")
    with pytest.raises(TypeError, match="sequence of numbers"):
        ref.DeepSupervisionLoss(dice, weights=["one"])
    with pytest.raises(ValueError, match="finite and >= 0"):
        ref.DeepSupervisionLoss(dice, weights=[1.0, -0.5])
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        ref.DeepSupervisionLoss(dice, weights=[1.0, 0.5])(outputs, labels)
    with pytest.raises(ValueError, match="empty"):
        ref.DeepSupervisionLoss(dice)([], labels)
    with pytest.raises(ValueError, match="3 outputs but 1 targets"):
        ref.DeepSupervisionLoss(dice)(outputs, [labels])
    with pytest.raises(TypeError, match="one output tensor takes one target tensor"):
        ref.DeepSupervisionLoss(dice)(outputs[0], [labels])
    with pytest.raises(ValueError, match="fewer than 3 dims"):
        resize_nearest(torch.zeros(4, 5), (2, 2))
