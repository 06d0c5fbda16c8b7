"""Every registry kernel, forward and backward, captured in a CUDA graph: the replay on
new logits gives bitwise the loss and gradient of an eager call (no host sync, no
pageable copy, no allocation outside the graph's pool), Python-list options included once
a warm-up call has put them on the device. CUDA graphs need a CUDA device, so this module
runs on the GPU only."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import KERNELS

from segtriton.registry import make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")


def _graph_options(entry) -> dict:
    """The first variant that passes a Python list (class weights, alpha, classes), which
    must be on the device before capture, else the first variant."""
    listed = [v for v in entry.variants if any(isinstance(o, list) for o in v.values())]
    return entry.ignoring((listed or entry.variants)[0])


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_kernel_replays_in_a_cuda_graph(entry, gen):
    options = _graph_options(entry)
    C = 1 if entry.is_binary(options) else 3
    x, t = make_inputs(entry, (2, C, 33, 47), options, torch.bfloat16, gen, 0.1, device="cuda")
    x.requires_grad_(True)

    def step():
        loss = entry.kernel(x, t, **options)
        return loss, torch.autograd.grad(loss, x)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grad = step()
    with torch.no_grad():
        x.copy_(torch.randn(x.shape, generator=gen).to(x))
    graph.replay()
    want_loss, want_grad = step()
    assert torch.isfinite(want_loss)
    assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)
