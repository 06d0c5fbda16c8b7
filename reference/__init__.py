"""Plain-PyTorch reference implementations (the oracle every kernel is checked against)."""

from .boundary import boundary_loss, signed_distance_map
from .compound import bce_dice_loss, ce_dice_loss, combo_loss, focal_dice_loss
from .lovasz import lovasz_grad, lovasz_hinge_loss, lovasz_softmax_loss
from .metrics import (
    class_accuracy,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    pixel_accuracy,
    segmentation_metrics,
)
from .modules import (
    BCEDiceLoss,
    BCEWithLogitsLoss,
    BoundaryLoss,
    CEDiceLoss,
    ComboLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalDiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    LossModule,
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    TverskyLoss,
)
from .pixelwise import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .region import (
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    region_stats,
    tversky_loss,
)

__all__ = [
    "BCEDiceLoss", "BCEWithLogitsLoss", "BoundaryLoss", "CEDiceLoss", "ComboLoss",
    "CrossEntropyLoss", "DiceLoss", "FocalDiceLoss", "FocalTverskyLoss", "GeneralizedDiceLoss",
    "JaccardLoss", "LossModule", "LovaszHingeLoss", "LovaszSoftmaxLoss", "SigmoidFocalLoss",
    "SoftmaxFocalLoss", "TverskyLoss",
    "bce_dice_loss", "binary_cross_entropy_with_logits", "boundary_loss", "ce_dice_loss",
    "class_accuracy", "combo_loss", "confusion_matrix", "cross_entropy", "dice_loss",
    "dice_per_class", "focal_dice_loss", "focal_tversky_loss", "generalized_dice_loss",
    "iou_per_class", "jaccard_loss", "lovasz_grad", "lovasz_hinge_loss", "lovasz_softmax_loss",
    "pixel_accuracy", "region_stats", "segmentation_metrics", "sigmoid_focal_loss",
    "signed_distance_map", "softmax_focal_loss", "tversky_loss",
]
