"""``nn.Module`` wrappers: each holds the options of one loss function.

``DiceLoss(mode="multiclass", scope="image")(logits, target)`` equals
``dice_loss(logits, target, mode="multiclass", scope="image")``. Tensor options (class
weights, alpha, pos_weight) are registered as buffers, so ``.to(device)`` moves them.
``segtriton.kernels`` has the same classes around its Triton functions
(:func:`module_forms`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .boundary import boundary_loss, hausdorff_dt_loss
from .cldice import cldice_loss
from .compound import (
    bce_dice_loss,
    ce_dice_loss,
    combo_loss,
    focal_dice_loss,
    generalized_dice_focal_loss,
    topk_dice_loss,
)
from .hausdorff_er import hausdorff_er_loss
from .lovasz import lovasz_hinge_loss, lovasz_softmax_loss
from .pixelwise import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_probs,
    ohem_cross_entropy,
    recall_cross_entropy,
    sigmoid_focal_loss,
    softmax_focal_loss,
    topk_cross_entropy,
)
from .region import (
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    mcc_loss,
    tversky_loss,
)
from .wasserstein import generalized_wasserstein_dice_loss


class LossModule(nn.Module):
    """Base class: ``forward(logits, target)`` calls ``fn(logits, target, **options)``."""

    fn: Callable[..., torch.Tensor]

    def __init__(self, **options: object) -> None:
        super().__init__()
        allowed = list(inspect.signature(self.fn).parameters)[2:]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}; allowed: {allowed}"
            )
        self._options: dict[str, object] = {}
        for name, value in options.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value)
            else:
                self._options[name] = value

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        options = dict(self._options)
        options.update(self.named_buffers(recurse=False))
        return self.fn(logits, target, **options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())


def loss_module(
    name: str, fn: Callable[..., torch.Tensor], module: str = __name__
) -> type[LossModule]:
    """A :class:`LossModule` subclass named ``name`` around ``fn``, importable (and so
    picklable) as ``module.name``."""
    doc = f"Module form of :func:`{fn.__name__}`; options are its keyword arguments.\n\n"
    body = {"fn": staticmethod(fn), "__doc__": doc + (fn.__doc__ or ""), "__module__": module}
    return type(name, (LossModule,), body)


CrossEntropyLoss = loss_module("CrossEntropyLoss", cross_entropy)
CrossEntropyProbsLoss = loss_module("CrossEntropyProbsLoss", cross_entropy_probs)
OhemCrossEntropyLoss = loss_module("OhemCrossEntropyLoss", ohem_cross_entropy)
TopKCrossEntropyLoss = loss_module("TopKCrossEntropyLoss", topk_cross_entropy)
RecallCrossEntropyLoss = loss_module("RecallCrossEntropyLoss", recall_cross_entropy)
BCEWithLogitsLoss = loss_module("BCEWithLogitsLoss", binary_cross_entropy_with_logits)
SigmoidFocalLoss = loss_module("SigmoidFocalLoss", sigmoid_focal_loss)
SoftmaxFocalLoss = loss_module("SoftmaxFocalLoss", softmax_focal_loss)
DiceLoss = loss_module("DiceLoss", dice_loss)
JaccardLoss = loss_module("JaccardLoss", jaccard_loss)
TverskyLoss = loss_module("TverskyLoss", tversky_loss)
FocalTverskyLoss = loss_module("FocalTverskyLoss", focal_tversky_loss)
GeneralizedDiceLoss = loss_module("GeneralizedDiceLoss", generalized_dice_loss)
MCCLoss = loss_module("MCCLoss", mcc_loss)
GeneralizedWassersteinDiceLoss = loss_module(
    "GeneralizedWassersteinDiceLoss", generalized_wasserstein_dice_loss
)
CEDiceLoss = loss_module("CEDiceLoss", ce_dice_loss)
BCEDiceLoss = loss_module("BCEDiceLoss", bce_dice_loss)
FocalDiceLoss = loss_module("FocalDiceLoss", focal_dice_loss)
GeneralizedDiceFocalLoss = loss_module("GeneralizedDiceFocalLoss", generalized_dice_focal_loss)
ComboLoss = loss_module("ComboLoss", combo_loss)
TopKDiceLoss = loss_module("TopKDiceLoss", topk_dice_loss)
LovaszHingeLoss = loss_module("LovaszHingeLoss", lovasz_hinge_loss)
LovaszSoftmaxLoss = loss_module("LovaszSoftmaxLoss", lovasz_softmax_loss)
BoundaryLoss = loss_module("BoundaryLoss", boundary_loss)
HausdorffDTLoss = loss_module("HausdorffDTLoss", hausdorff_dt_loss)
HausdorffERLoss = loss_module("HausdorffERLoss", hausdorff_er_loss)
ClDiceLoss = loss_module("ClDiceLoss", cldice_loss)


def loss_modules() -> dict[str, type[LossModule]]:
    """Every module class above, by name."""
    return {
        name: cls
        for name, cls in globals().items()
        if isinstance(cls, type) and issubclass(cls, LossModule) and cls is not LossModule
    }


def module_forms(functions: Mapping[str, Callable[..., torch.Tensor]], module: str) -> dict:
    """Every module class of :func:`loss_modules`, rebuilt around the function of the same
    name in ``functions`` and exported by ``module``: ``segtriton.kernels`` gets its Triton
    module forms this way."""
    return {
        name: loss_module(name, functions[cls.fn.__name__], module)
        for name, cls in loss_modules().items()
    }
