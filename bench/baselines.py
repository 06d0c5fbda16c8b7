"""Providers beside ours: extra baselines and the peer libraries, timed in the same sweep.

berman: the Lovasz losses as in Berman et al.'s published code: a Python loop over classes
(and images), boolean indexing to drop ignored pixels, one sort per class, a host sync per
class to skip absent ones. It takes the options of the registry's default variant and
raises NotImplementedError on others (the sweep then records an error row).

monai, smp, kornia: the peer's own loss, for the losses where one of our option sets gives
its semantics (README's table, tests/test_peers.py). ``PEERS[provider][loss]`` is a
:class:`Peer`: the sweep checks the peer against our reference under its options and
calls ``factory()(logits, target)``. A peer that is not installed, one without
``ignore_index`` on a case that ignores pixels, or a 2-D-only one on a volume gives an
error row naming why.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segtriton.reference.lovasz import lovasz_grad


def _unsupported(options: dict) -> None:
    if options:
        raise NotImplementedError(f"the berman baseline takes no options {sorted(options)}")


def _berman_softmax_unit(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over present classes of one unit: ``p [C, N]``, ``labels [N]`` (valid only)."""
    losses = []
    for c in range(p.shape[0]):
        fg = (labels == c).to(p.dtype)
        if fg.sum() == 0:  # a host sync per class, as in the original
            continue
        errors = (fg - p[c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean() if losses else p.sum() * 0


def berman_lovasz_softmax(
    logits: torch.Tensor,
    target: torch.Tensor,
    per_image: bool = False,
    ignore_index: int | None = None,
    **options: object,
) -> torch.Tensor:
    _unsupported(options)
    p = torch.softmax(logits.float(), dim=1).flatten(2)  # [B, C, N]
    labels = target.flatten(1)
    units = (
        [(p[b], labels[b]) for b in range(p.shape[0])]
        if per_image
        else [(p.transpose(0, 1).flatten(1), labels.flatten())]
    )
    out = []
    for pu, yu in units:
        if ignore_index is not None:
            keep = yu != ignore_index
            pu, yu = pu[:, keep], yu[keep]
        out.append(_berman_softmax_unit(pu, yu))
    return torch.stack(out).mean()


def berman_lovasz_hinge(
    logits: torch.Tensor,
    target: torch.Tensor,
    per_image: bool = False,
    ignore_index: float | None = None,
    **options: object,
) -> torch.Tensor:
    _unsupported(options)
    x, t = logits.float().flatten(1), target.reshape(logits.shape).float().flatten(1)
    units = [(x[b], t[b]) for b in range(x.shape[0])] if per_image else [(x.flatten(), t.flatten())]
    out = []
    for xu, tu in units:
        if ignore_index is not None:
            keep = tu != ignore_index
            xu, tu = xu[keep], tu[keep]
        errors = 1 - xu * (2 * tu - 1)
        errors_sorted, perm = torch.sort(errors, descending=True)
        out.append(torch.dot(F.relu(errors_sorted), lovasz_grad(tu[perm])))
    return torch.stack(out).mean()


BASELINES: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "berman": {"lovasz_softmax": berman_lovasz_softmax, "lovasz_hinge": berman_lovasz_hinge},
}


def smp_losses() -> types.ModuleType:
    """smp's losses module without its heavy ``__init__`` (which needs torchvision, timm)."""
    name = "segmentation_models_pytorch"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"{name} is not installed")
        stub = types.ModuleType(name)
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__spec__ = spec
        sys.modules[name] = stub
    return importlib.import_module(f"{name}.losses")


def _monai(name: str, **kwargs) -> Callable[[], Callable]:
    """MONAI's loss ``name`` with softmax over the logits and one-hot labels."""

    def factory():
        loss = getattr(importlib.import_module("monai.losses"), name)(
            softmax=True, to_onehot_y=True, **kwargs
        )
        return lambda x, t: loss(x, t.unsqueeze(1))

    return factory


def _smp(name: str, **kwargs) -> Callable[[], Callable]:
    def factory():
        return getattr(smp_losses(), name)("multiclass", ignore_index=255, **kwargs)

    return factory


def _monai_focal(use_softmax: bool) -> Callable[[], Callable]:
    """MONAI's FocalLoss on one-hot labels with ``ignore_index=255`` and no alpha. With
    ``ignore_index`` its 'mean' divides by the valid pixels, not the valid elements: the
    softmax form then equals ours (only the label's class contributes), the sigmoid form
    (every class contributes) is C times ours, which the wrapper divides out."""

    def factory():
        from monai.losses import FocalLoss

        loss = FocalLoss(to_onehot_y=True, use_softmax=use_softmax, ignore_index=255)
        if use_softmax:
            return lambda x, t: loss(x, t.unsqueeze(1))
        return lambda x, t: loss(x, t.unsqueeze(1)) / x.shape[1]

    return factory


def _kornia_focal():
    """kornia's FocalLoss (softmax form), no alpha; its 'mean' divides by every pixel,
    ignored or not, and by C, so the sweep runs its 'sum'. It takes int64 labels."""
    from kornia.losses import FocalLoss

    loss = FocalLoss(alpha=None, reduction="sum", ignore_index=255)
    return lambda x, t: loss(x, t.long())


def _monai_wasserstein():
    """MONAI's GeneralizedWassersteinDiceLoss with unit distances between classes (our
    ``dist_matrix=None``), one module per class count."""
    from monai.losses import GeneralizedWassersteinDiceLoss

    losses: dict[int, Callable] = {}

    def loss(x, t):
        C = x.shape[1]
        if C not in losses:
            losses[C] = GeneralizedWassersteinDiceLoss(1 - torch.eye(C))
        return losses[C](x, t)

    return loss


def _kornia_dice():
    from kornia.losses import dice_loss

    return lambda x, t: dice_loss(x, t, average="macro", eps=1e-8, ignore_index=255)


def _kornia_hausdorff_er():
    """kornia's HausdorffERLoss (HausdorffERLoss3D for volumes) on softmax probabilities,
    with its defaults (alpha 2, k 10); it takes int64 labels ``[B, 1, *S]``."""
    from kornia.losses import HausdorffERLoss, HausdorffERLoss3D

    losses = {4: HausdorffERLoss(), 5: HausdorffERLoss3D()}

    def loss(x, t):
        module = losses[x.dim()].to(x.device)
        return module(torch.softmax(x, dim=1), t.long().unsqueeze(1))

    return loss


@dataclass(frozen=True)
class Peer:
    """A peer's loss: ``options`` (ours) give its semantics; ``factory()`` builds the
    callable; ``ignores``: it takes ``ignore_index`` (255), so a case may ignore pixels;
    ``dims``: the spatial dimensions it takes."""

    options: dict
    factory: Callable[[], Callable]
    ignores: bool = True
    dims: tuple[int, ...] = (2, 3)

    def refusal(self, shape: tuple[int, ...], ignore_frac: float) -> str | None:
        """Why the peer cannot take a case of ``shape`` ignoring ``ignore_frac`` of its
        pixels, or None when it can."""
        if ignore_frac > 0 and not self.ignores:
            return "has no ignore_index: sweep it with ignore_frac = 0"
        if (dims := len(shape) - 2) not in self.dims:
            return f"takes {' or '.join(f'{d}-D' for d in self.dims)} inputs only, not {dims}-D"
        return None


_MONAI_SMOOTH = {"scope": "image", "smooth_nr": 1e-5, "smooth_dr": 1e-5}

PEERS: dict[str, dict[str, Peer]] = {
    "monai": {
        "dice": Peer(_MONAI_SMOOTH, _monai("DiceLoss", ignore_index=255)),
        "tversky": Peer(
            {**_MONAI_SMOOTH, "alpha": 0.3, "beta": 0.7},
            _monai("TverskyLoss", alpha=0.3, beta=0.7, ignore_index=255),
        ),
        # these have no ignore_index: the `distance` and `monai` presets ignore no pixel
        "generalized_dice": Peer(
            {**_MONAI_SMOOTH, "absent_weight": "max"},
            _monai("GeneralizedDiceLoss"),
            ignores=False,
        ),
        "ce_dice": Peer(_MONAI_SMOOTH, _monai("DiceCELoss"), ignores=False),
        "hausdorff_dt": Peer({}, _monai("HausdorffDTLoss"), ignores=False),
        "cldice": Peer({}, _monai("SoftclDiceLoss"), ignores=False),
        "mcc": Peer({"scope": "image", "eps": 0.0}, _monai("MCCLoss"), ignores=False),
        "focal_dice": Peer(
            {"sigmoid_focal": True, **_MONAI_SMOOTH}, _monai("DiceFocalLoss"), ignores=False
        ),
        "wasserstein_dice": Peer({}, _monai_wasserstein, ignores=False),
        "softmax_focal": Peer({"alpha": None}, _monai_focal(use_softmax=True)),
        "sigmoid_focal_ovr": Peer(
            {"mode": "multiclass", "alpha": None}, _monai_focal(use_softmax=False)
        ),
    },
    "smp": {
        "dice": Peer({"scope": "batch", "absent": "zero"}, _smp("DiceLoss")),
        "jaccard": Peer({"scope": "batch", "absent": "zero"}, _smp("JaccardLoss")),
        "tversky": Peer(
            {"scope": "batch", "absent": "zero", "alpha": 0.3, "beta": 0.7},
            _smp("TverskyLoss", alpha=0.3, beta=0.7),
        ),
        "sigmoid_focal_ovr": Peer({"mode": "multiclass", "alpha": None}, _smp("FocalLoss")),
        "lovasz_softmax": Peer({}, _smp("LovaszLoss")),
    },
    "kornia": {
        "dice": Peer(
            {"scope": "image", "absent": "exclude", "smooth_dr": 1e-8}, _kornia_dice, dims=(2,)
        ),
        # no ignore_index in kornia's: the `hausdorff_er` preset ignores no pixel
        "hausdorff_er": Peer({}, _kornia_hausdorff_er, ignores=False),
        "softmax_focal": Peer({"alpha": None, "reduction": "sum"}, _kornia_focal),
    },
}
