"""A mask's ``ignore_index`` is compared in the mask's dtype, as torch compares
``target != ignore_index``: fp16 / bf16 masks that hold ``ignore_index`` rounded to their
dtype are ignored. The kernels once compared in float32 and so read those entries as mask
values outside [0, 1]: a NaN loss, or for the Lovasz hinge a wrong finite one. The
reference's distance map once failed on bf16 masks (NumPy has no bfloat16)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, assert_matches

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.registry import LOSSES, make_inputs

CASES = [
    (entry, options)
    for entry in LOSSES
    for options in entry.variants[:1] + tuple(v for v in entry.variants if "mode" in v)[:1]
    if entry.target_kind(options) == "masks" and entry.takes("ignore_index")
]
MASK_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.uint8]
IGNORE = 1000.3  # not an fp16 or bf16 number: those masks hold it rounded


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
@pytest.mark.parametrize(
    "entry, options", CASES, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CASES)]
)
def test_mask_ignore_index_in_the_mask_dtype(entry, options, mask_dtype, seed, gen):
    ignore = 255 if mask_dtype == torch.uint8 else IGNORE
    opts = {**options, "ignore_index": ignore}
    shape = entry.fit_shape((2, 3, 4, 5), opts)
    x, t = make_inputs(entry, shape, opts, torch.float32, gen, device=DEVICE)
    t = t.round().to(mask_dtype)  # hard masks: the Lovasz hinge and the maps take no others
    t[0, :, :2] = ignore
    assert (t == ignore).sum() == t[0, :, :2].numel()
    assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
def test_signed_distance_map_of_masks_with_ignore(mask_dtype, gen):
    ignore = 255 if mask_dtype == torch.uint8 else IGNORE
    t = (torch.rand(2, 3, 6, 7, generator=gen) > 0.5).to(mask_dtype)
    t[0, 1, :3] = ignore
    want = ref.signed_distance_map(t, mode="multilabel", ignore_index=ignore)
    got = ker.signed_distance_map(t.to(DEVICE), mode="multilabel", ignore_index=ignore)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-6, atol=1e-6)
