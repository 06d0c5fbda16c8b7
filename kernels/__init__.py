"""Triton implementations of the segtriton losses and metrics (same signatures as
``segtriton.reference``)."""

import inspect
import warnings
from typing import TYPE_CHECKING

from segtriton.reference.deep_supervision import DeepSupervisionLoss
from segtriton.reference.modules import module_forms

from ._runtime import interpreter_enabled, interpreter_problem, run_smoke_kernel
from .boundary import (
    boundary_loss,
    distance_field,
    hausdorff_dt_loss,
    signed_distance_map,
    squared_edt,
)
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
from .metrics import StreamingMetrics, confusion_matrix, segmentation_metrics
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
    region_stats,
    tversky_loss,
)
from .surface import (
    StreamingSurfaceMetrics,
    average_surface_distance,
    hausdorff_distance,
    surface_dice,
    surface_metrics,
)
from .wasserstein import generalized_wasserstein_dice_loss

__all__ = [
    "DeepSupervisionLoss",
    "StreamingMetrics",
    "StreamingSurfaceMetrics",
    "average_surface_distance",
    "bce_dice_loss",
    "binary_cross_entropy_with_logits",
    "boundary_loss",
    "ce_dice_loss",
    "cldice_loss",
    "combo_loss",
    "confusion_matrix",
    "cross_entropy",
    "cross_entropy_probs",
    "dice_loss",
    "distance_field",
    "focal_dice_loss",
    "focal_tversky_loss",
    "generalized_dice_focal_loss",
    "generalized_dice_loss",
    "generalized_wasserstein_dice_loss",
    "hausdorff_distance",
    "hausdorff_dt_loss",
    "hausdorff_er_loss",
    "interpreter_enabled",
    "interpreter_problem",
    "jaccard_loss",
    "lovasz_hinge_loss",
    "lovasz_softmax_loss",
    "mcc_loss",
    "ohem_cross_entropy",
    "recall_cross_entropy",
    "region_stats",
    "run_smoke_kernel",
    "segmentation_metrics",
    "sigmoid_focal_loss",
    "signed_distance_map",
    "softmax_focal_loss",
    "squared_edt",
    "surface_dice",
    "surface_metrics",
    "topk_cross_entropy",
    "topk_dice_loss",
    "tversky_loss",
]

# nn.Module forms (DiceLoss, CrossEntropyLoss, ...): the reference's classes around the
# Triton functions above, made at import; a type checker reads their names here (both
# forms are LossModule subclasses; tests/test_kernels_modules.py holds the list complete)
if TYPE_CHECKING:
    from segtriton.reference.modules import (  # noqa: F401 (exported by _MODULES below)
        BCEDiceLoss,
        BCEWithLogitsLoss,
        BoundaryLoss,
        CEDiceLoss,
        ClDiceLoss,
        ComboLoss,
        CrossEntropyLoss,
        CrossEntropyProbsLoss,
        DiceLoss,
        FocalDiceLoss,
        FocalTverskyLoss,
        GeneralizedDiceFocalLoss,
        GeneralizedDiceLoss,
        GeneralizedWassersteinDiceLoss,
        HausdorffDTLoss,
        HausdorffERLoss,
        JaccardLoss,
        LovaszHingeLoss,
        LovaszSoftmaxLoss,
        MCCLoss,
        OhemCrossEntropyLoss,
        RecallCrossEntropyLoss,
        SigmoidFocalLoss,
        SoftmaxFocalLoss,
        TopKCrossEntropyLoss,
        TopKDiceLoss,
        TverskyLoss,
    )


def _add_reference_docs() -> None:
    """Each function's docstring, then that of the reference function of its name: the
    formulas and every option's semantics are written there once, and ``help()`` on a
    kernel, or on its module form (made below from the function), shows them."""
    from segtriton import reference

    for name in __all__:
        fn, ref = globals()[name], getattr(reference, name, None)
        if inspect.isfunction(fn) and inspect.isfunction(ref) and fn.__doc__ and ref.__doc__:
            fn.__doc__ = (
                f"{inspect.cleandoc(fn.__doc__)}\n\n"
                f"From ``segtriton.reference.{name}``:\n\n{inspect.cleandoc(ref.__doc__)}"
            )


_add_reference_docs()
_MODULES = module_forms(globals(), __name__)
globals().update(_MODULES)
__all__ += sorted(_MODULES)

if interpreter_enabled() and (_problem := interpreter_problem()):
    warnings.warn(_problem, stacklevel=2)
