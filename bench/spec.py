"""Sweep specifications: named presets and TOML files, expanded into cases.

A spec is a dict of axes; every combination of them is one case::

    losses = ["cross_entropy", "dice"]          # registry names, or "all"
    providers = ["triton", "eager", "compile"]
    shapes = [[8, 19, 512, 1024], [2, 4, 128, 128, 128]]   # [B, C, *spatial]
    dtypes = ["bf16", "fp32"]
    label_dtypes = ["int64"]                    # labels; masks take the logits' dtype
                                                # (a loss on masks runs under the first)
    modes = ["fwd+bwd"]                           # fwd | bwd | fwd+bwd
    memory_formats = ["contiguous"]               # or channels_last (masks follow)
    ignore_frac = 0.05                            # share of ignored pixels

Shapes whose channel count does not fit a loss (binary losses need C = 1) are adapted:
the loss gets C = 1 with the same batch and spatial size.

Instead of the product of losses, shapes and dtypes, a spec may list ``cases`` as
``[loss, shape, dtype]`` triples (the ``targets`` preset does); ``losses`` and ``dtypes``
then only filter that list, ``shapes`` is not read, and the other axes multiply it as
usual.
"""

from __future__ import annotations

import itertools
import numbers
import sys
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .baselines import BASELINES, PEERS
from .targets import sweep_cases

if TYPE_CHECKING:  # the registry is imported where it is used (it loads every loss)
    from segtriton.registry import LossEntry

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LABEL_DTYPES = {
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
}
MODES = ("fwd", "bwd", "fwd+bwd")
FORMATS = ("contiguous", "channels_last")
PROVIDERS = ("triton", "eager", "compile", "compile-max-autotune", *BASELINES, *PEERS)
ONLY_SOME: dict[str, Mapping[str, object]] = {**BASELINES, **PEERS}  # for some losses only


def channels_last(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``x`` in channels_last (``channels_last_3d`` for volumes), and the target too
    where it has their shape (masks), as a model run in that format, its masks converted
    alike, hands them to a loss; labels stay as they are."""
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    x = x.contiguous(memory_format=fmt)
    return x, t.contiguous(memory_format=fmt) if t.shape == x.shape else t


@dataclass(frozen=True)
class Case:
    loss: str
    provider: str
    shape: tuple[int, ...]
    dtype: str
    label_dtype: str
    mode: str
    memory_format: str
    ignore_frac: float

    def _key(self, *head: str) -> str:
        shape = "x".join(map(str, self.shape))
        rest = (shape, self.dtype, self.label_dtype, self.mode, self.memory_format)
        return "|".join((*head, *rest, str(self.ignore_frac)))

    @property
    def key(self) -> str:
        return self._key(self.loss, self.provider)

    @property
    def inputs_key(self) -> str:
        """The key without the provider: every provider of a case gets the same inputs."""
        return self._key(self.loss)

    def describe(self) -> str:
        return (
            f"{self.loss} {self.provider} {self.dtype} {list(self.shape)} {self.mode}"
            + (" channels_last" if self.memory_format == "channels_last" else "")
            + (f" {self.label_dtype} labels" if self.label_dtype != "int64" else "")
        )

    def as_row(self) -> dict:
        row = asdict(self)
        row["shape"] = "x".join(map(str, self.shape))
        return row


_CORE = [
    "cross_entropy",
    "cross_entropy_probs",
    "ohem_cross_entropy",
    "softmax_focal",
    "bce",
    "dice",
    "jaccard",
    "tversky",
    "generalized_dice",
    "ce_dice",
    "lovasz_softmax",
]

PRESETS: dict[str, dict] = {
    # seconds on a CPU: what a newcomer's first `segtriton sweep` runs
    "quick": {
        "losses": ["cross_entropy", "softmax_focal", "bce", "dice"],
        "providers": ["triton", "eager", "compile"],
        # logit counts 2x apart (the time chart has a slope to show), one of them at C = 150
        "shapes": [[2, 19, 32, 64], [2, 150, 16, 32], [2, 19, 64, 128]],
        "dtypes": ["fp32"],
        "modes": ["fwd+bwd"],
    },
    "standard": {
        "losses": _CORE,
        "providers": ["triton", "eager", "compile"],
        "shapes": [
            [8, 19, 512, 1024],
            [16, 150, 512, 512],
            [8, 1, 1024, 1024],
            [4, 4, 128, 128, 128],
            [8, 21, 256, 256],
            [4, 19, 1024, 2048],
        ],
        "dtypes": ["bf16", "fp32"],
        "modes": ["fwd+bwd"],
    },
    "full": {  # hours on a GPU: every loss, class count and dtype
        "losses": "all",
        "providers": ["triton", "eager", "compile"],
        "shapes": [[8, C, r, r] for C in (1, 2, 19, 21, 150, 1000) for r in (128, 512, 2048)],
        "dtypes": ["fp32", "fp16", "bf16"],
        "modes": ["fwd", "fwd+bwd"],
    },
    "cityscapes": {
        "losses": _CORE,
        "shapes": [[8, 19, 512, 1024], [2, 19, 1024, 2048]],
        "dtypes": ["bf16", "fp32"],
    },
    "ade20k": {"losses": _CORE, "shapes": [[16, 150, 512, 512]], "dtypes": ["bf16", "fp32"]},
    "voc": {"losses": _CORE, "shapes": [[16, 21, 512, 512]], "dtypes": ["bf16", "fp32"]},
    "lovasz": {  # the comparison: Berman's loop, the batched torch pipeline, ours
        "losses": ["lovasz_softmax", "lovasz_hinge"],
        "providers": ["triton", "eager", "compile", "berman"],
        "shapes": [[8, 19, 512, 1024], [16, 150, 512, 512], [8, 1, 1024, 1024]],
        "dtypes": ["bf16"],
    },
    "peers": {  # the peer libraries where their semantics match an option set of ours
        "losses": [
            "dice",
            "jaccard",
            "tversky",
            "softmax_focal",
            "sigmoid_focal_ovr",
            "lovasz_softmax",
        ],
        "providers": ["triton", "eager", "compile", "monai", "smp", "kornia"],
        "shapes": [[8, 19, 512, 1024], [16, 150, 512, 512]],
        "dtypes": ["fp32"],
    },
    # the issues' performance targets (bench/targets.py): their cases and no others
    "targets": {
        "losses": "all",
        "cases": sweep_cases(),
        "providers": ["triton", "eager", "compile", "berman"],
        "dtypes": ["bf16", "fp32"],
    },
    # the losses over distance maps: our GPU transform, scipy's in eager and in MONAI's
    # HausdorffDTLoss (which has no ignore_index, so no pixel is ignored here)
    "distance": {
        "losses": ["boundary", "hausdorff_dt"],
        "providers": ["triton", "eager", "monai"],
        "shapes": [[8, 2, 512, 512], [2, 4, 96, 96, 96]],
        "dtypes": ["bf16", "fp32"],
        "ignore_frac": 0.0,
    },
    # clDice beside MONAI's SoftclDiceLoss (no ignore_index there either): two-class 2-D
    # vessel-sized images and a 3-D volume
    "cldice": {
        "losses": ["cldice"],
        "providers": ["triton", "eager", "compile", "monai"],
        "shapes": [[8, 2, 512, 512], [2, 2, 96, 96, 96]],
        "dtypes": ["bf16", "fp32"],
        "ignore_frac": 0.0,
    },
    # the erosion Hausdorff loss beside kornia's HausdorffERLoss / HausdorffERLoss3D
    # (no ignore_index there): two-class 2-D images and a 3-D volume, kornia's k = 10
    "hausdorff_er": {
        "losses": ["hausdorff_er"],
        "providers": ["triton", "eager", "compile", "kornia"],
        "shapes": [[8, 2, 512, 512], [2, 2, 96, 96, 96]],
        "dtypes": ["bf16", "fp32"],
        "ignore_frac": 0.0,
    },
    # MONAI's region and compound losses beside ours, without ignored pixels (its
    # GeneralizedDiceLoss, DiceCELoss, DiceFocalLoss, MCCLoss and
    # GeneralizedWassersteinDiceLoss have no ignore_index)
    "monai": {
        "losses": [
            "dice",
            "tversky",
            "softmax_focal",
            "sigmoid_focal_ovr",
            "generalized_dice",
            "ce_dice",
            "focal_dice",
            "mcc",
            "wasserstein_dice",
        ],
        "providers": ["triton", "eager", "compile", "monai"],
        "shapes": [[8, 19, 512, 1024], [4, 4, 128, 128, 128]],
        "dtypes": ["bf16", "fp32"],
        "ignore_frac": 0.0,
    },
    "brats3d": {
        "losses": [
            "bce",
            "dice",
            "generalized_dice",
            "wasserstein_dice",
            "tversky",
            "topk_cross_entropy",
            "topk_dice",
        ],
        "shapes": [[2, 4, 128, 128, 128], [1, 4, 160, 192, 160]],
        "dtypes": ["bf16", "fp32"],
    },
}

DEFAULTS = {
    "providers": ["triton", "eager", "compile"],
    "dtypes": ["fp32"],
    "label_dtypes": ["int64"],
    "modes": ["fwd+bwd"],
    "memory_formats": ["contiguous"],
    "ignore_frac": 0.05,
}


class SpecError(ValueError):
    """A sweep spec that cannot be run; the message names the key and what is wrong."""


_AXES = {  # list-valued axes and their allowed values (None: registry names)
    "losses": None,
    "providers": PROVIDERS,
    "dtypes": DTYPES,
    "label_dtypes": LABEL_DTYPES,
    "modes": MODES,
    "memory_formats": FORMATS,
}
_KEYS = {*_AXES, "shapes", "cases", "ignore_frac"}


def _toml() -> types.ModuleType:
    """``tomllib``, or before Python 3.11 ``tomli`` (the same parser, packaged apart; a
    dependency there), imported only when a spec file is read."""
    if sys.version_info >= (3, 11):
        import tomllib as toml
    else:
        import tomli as toml
    return toml


def load_spec(preset: str | None = None, path: str | Path | None = None) -> dict:
    """A preset, or a TOML file (whose ``preset`` key, if any, gives the defaults)."""
    spec: dict = {}
    if path is not None:
        toml = _toml()
        try:
            with open(path, "rb") as f:
                spec = toml.load(f)
        except (OSError, toml.TOMLDecodeError) as exc:
            raise SpecError(f"cannot read spec file {path}: {exc}") from exc
        preset = spec.pop("preset", preset)
    if preset is not None:
        if preset not in PRESETS:
            raise SpecError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        spec = {**PRESETS[preset], **spec}
    if not spec:
        raise SpecError("give a preset or a spec file")
    return {**DEFAULTS, **spec}


def check_spec(spec: dict) -> None:
    """Raise :class:`SpecError` naming the first key whose value cannot be swept: unknown
    keys, axes that are not lists of known names, shapes that are not ``[B, C, *spatial]``
    lists of positive ints, ``ignore_frac`` outside [0, 1)."""
    from segtriton.registry import LOSSES

    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise SpecError(f"unknown keys {unknown}; a spec takes {sorted(_KEYS)}")
    if "losses" not in spec or ("shapes" not in spec and "cases" not in spec):
        raise SpecError("a spec needs 'losses' and 'shapes' (or 'cases')")
    for axis, allowed in _AXES.items():
        values = spec[axis]
        if axis == "losses" and values == "all":
            continue
        known = [e.name for e in LOSSES] if allowed is None else list(allowed)
        if not isinstance(values, (list, tuple)) or not values:
            raise SpecError(f"{axis} must be a non-empty list of names, got {values!r}")
        bad = [v for v in values if v not in known]
        if bad:
            raise SpecError(f"{axis}: unknown {bad}; known: {known}")
    shapes = spec.get("shapes", []) if "cases" not in spec else []
    if not isinstance(shapes, (list, tuple)):
        raise SpecError(f"shapes must be a list of [B, C, *spatial] lists, got {shapes!r}")
    for shape in shapes:
        ints = isinstance(shape, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
        )
        if not ints or len(shape) < 3:
            raise SpecError(f"shapes: {shape!r} is not [B, C, *spatial] of positive ints")
    frac = spec["ignore_frac"]
    if not isinstance(frac, numbers.Real) or isinstance(frac, bool) or not 0 <= float(frac) < 1:
        raise SpecError(f"ignore_frac must be a number in [0, 1), got {frac!r}")


def provider_options(provider: str, entry: LossEntry) -> dict:
    """The loss options of a provider's rows: a peer's matching option set, else the
    registry's default variant."""
    if provider in PEERS:
        return PEERS[provider][entry.name].options
    return entry.variants[0]


def expand(spec: dict) -> list[Case]:
    """Every case of the spec, in a stable order (loss, shape, dtype, ..., provider)."""
    from segtriton.registry import LOSSES, get

    check_spec(spec)
    losses = [e.name for e in LOSSES] if spec["losses"] == "all" else list(spec["losses"])
    if "cases" in spec:
        triples = [
            (name, shape, dtype)
            for name, shape, dtype in spec["cases"]
            if name in losses and dtype in spec["dtypes"]
        ]
    else:
        triples = list(itertools.product(losses, spec["shapes"], spec["dtypes"]))
    cases, seen = [], set()
    for (name, shape, dtype), ldt, mode, fmt, provider in itertools.product(
        triples,
        spec["label_dtypes"],
        spec["modes"],
        spec["memory_formats"],
        spec["providers"],
    ):
        if name not in ONLY_SOME.get(provider, {name: None}):
            continue  # a baseline or peer only for some losses
        entry = get(name)
        options = provider_options(provider, entry)
        if entry.target_kind(options) == "masks" and ldt != spec["label_dtypes"][0]:
            continue  # masks take the logits' dtype: one case whatever the label dtypes
        shape = entry.fit_shape(shape, options)
        if shape[1] < entry.min_classes or (fmt == "channels_last" and len(shape) not in (4, 5)):
            continue
        frac = float(spec["ignore_frac"]) if entry.takes("ignore_index") else 0.0
        case = Case(name, provider, shape, dtype, ldt, mode, fmt, frac)
        if case not in seen:
            seen.add(case)
            cases.append(case)
    return cases
