#!/usr/bin/env bash
# Download the peer libraries (MONAI, kornia, segmentation_models_pytorch) as wheels for the
# GPU image (Python 3.12, x86_64; it cannot fetch anything) into .whl/ (git-ignored). Carry
# .whl to the device machine; bench/gpu_run.sh installs whatever it finds there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --quiet --dest .whl --python-version 3.12 \
    --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    monai==1.6.1 kornia==0.9.0 kornia_rs==0.2.0 segmentation-models-pytorch==0.6.0
ls .whl
