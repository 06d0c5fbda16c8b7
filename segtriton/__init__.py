"""segtriton: Triton kernels for segmentation losses and metrics, with PyTorch references.

- ``segtriton.reference``: plain PyTorch oracles (readable, float64-capable).
- ``segtriton.kernels``: Triton implementations with the same signatures.
- ``segtriton.bench``: sweeps, timing, reports and the ``segtriton`` command line.
- ``segtriton.registry``: one entry per loss/metric, read by the tests and the bench.
"""

__version__ = "0.1.0"
