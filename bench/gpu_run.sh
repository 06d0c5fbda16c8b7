#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): install, the test suite compiled on the
# GPU, the standard sweep, and pytest --benchmark. Everything lands under $OUT (at most 8
# files come back): copy what matters into results/<device>/<date>/ and commit it.
#   usage: bash bench/gpu_run.sh [preset] [sweep flags...]   (default: standard)
#   e.g.   bash bench/gpu_run.sh cityscapes --cuda-graph
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PRESET=${1:-standard}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
{ nvidia-smi; python3 -m segtriton.bench.cli check; } > "$OUT/env.txt" 2>&1
# correctness first, compiled on the GPU (TRITON_INTERPRET stays unset)
python3 -m pytest -q tests/test_kernels_*.py tests/test_reference_registry.py \
    > "$OUT/tests.log" 2>&1
echo "tests: exit $?" | tee -a "$OUT/tests.log"
python3 -m segtriton.bench.cli sweep --preset "$PRESET" --out "$OUT/sweep" --reps 50 "$@" \
    > "$OUT/sweep.log" 2>&1
echo "sweep: exit $?" | tee -a "$OUT/sweep.log"
python3 -m pytest -q tests/test_benchmarks.py --benchmark \
    --benchmark-json="$OUT/pytest-benchmark.json" > "$OUT/bench.log" 2>&1
echo "pytest --benchmark: exit $?" | tee -a "$OUT/bench.log"
# the report and its charts travel as one archive (files come back at most 2 folders down)
tar -czf "$OUT/sweep.tgz" -C "$OUT" sweep && rm -rf "$OUT/sweep"
tail -n 40 "$OUT/sweep.log"
