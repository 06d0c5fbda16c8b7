#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool, at most 10 minutes a call): install, then
# one stage. Everything lands under $OUT (at most 8 files come back): copy what matters into
# results/<device>/<date>/ and commit it. Stages:
#   tests                 the tests that run on the GPU (GPU_TESTS_ALL: the kernel tests at
#                         small shapes, bad input, custom ops, no host sync, autocast, dynamic
#                         shapes, FMA at launch, the CUDA timer),
#                         on a pool of pytest-xdist workers where the image has it, else one
#                         pytest process per test module at once (Triton compiles in
#                         parallel); lease and all run GPU_TESTS (kernels and timer) only
#   sweep PRESET [flags]  one sweep preset, e.g. `sweep cityscapes --cuda-graph`; for
#                         `sweep peers`, run bench/fetch_peer_wheels.sh here and carry .whl
#   bench                 pytest --benchmark (tests/test_benchmarks.py)
#   tiles [PRESET]        Triton alone, fwd+bwd, at SEGTRITON_MAX_TILE 2048, 4096 and 8192
#                         (default preset cityscapes), then `segtriton compare` of each
#                         against 2048: the GPU check of the tile rule chosen from
#                         the sm_90 compile report
#   all [PRESET]          tests, a sweep (default quick) and bench, each with a time cap
#   probe [TESTS...]      bench/probe.py (per-kernel times under the profiler, the host's
#                         time per call and what takes it; with PROBE_STAGES also plain
#                         CE with tile reductions and with class-row walks, the copy rate
#                         of each tile shape, the tile knobs against the defaults), then
#                         the named test modules or node ids, if any; PROBE_STAGES
#                         (comma-separated) picks stages, PROBE_SHARE (default 55) is
#                         the percentage of LIMIT the probe takes (knobs: that less 25)
#   lease                 what one call of a 15-minute device budget can hold (LIMIT default
#                         560): the tests (150 s; each failure's assertion and seed are
#                         printed), the `targets` preset with Triton, eager and Berman
#                         (until 252 s), the confusion-matrix and distance-transform
#                         benchmarks (until 297 s; then 20 s for the cases beyond the
#                         bars and 20 s for C = 19 from labels under
#                         SEGTRITON_HIST_BINS=0), torch.compile rows (bf16) of the
#                         COMPILE_FIRST losses (until 381 s), CE, softmax focal and Dice
#                         (bf16) under each of LEASE_VARIANTS (28 s each) against the
#                         default rows, the CHANNELS_LAST losses on channels_last logits
#                         (Triton and eager, bf16, 33 s; then Triton under
#                         SEGTRITON_COLUMN=0, 22 s, against them), the signed-map and
#                         Lovasz-sort benchmarks (until 492 s), the probe's host stage
#                         (until LIMIT - 45; in bench.log), then the other compile rows
#                         until LIMIT - 20; the
#                         report's "Issue targets" table says what was met. At most 8
#                         files of $OUT come back and the lease writes 6: add at most the
#                         call's own log (the rows, report and benchmark JSON travel in
#                         sweep.tgz). Rows and JSON stay in out/targets for a second call
#                         made at once, while the machine is warm (about 3 minutes of the
#                         budget are left after a 600 s call and the start): `LIMIT=150
#                         SWEEP_DIR=out/targets bash bench/gpu_run.sh sweep targets
#                         --providers compile --resume`
# Each stage stops at LIMIT seconds (default 500; exit 124 in a log) so the logs come back.
# A sweep longer than one call: `SWEEP_DIR=out/standard bash bench/gpu_run.sh sweep standard
# --resume` in as many calls as it needs (out/ is ignored and stays on the warm machine;
# name it in `carry` to go on with a fresh one). Rows are saved after every case.
#   usage: bash bench/gpu_run.sh STAGE [args...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
STAGE=${1:-all}
shift $(($# > 0 ? 1 : 0))
if [ "$STAGE" = lease ]; then LIMIT=${LIMIT:-560}; else LIMIT=${LIMIT:-500}; fi
START=$SECONDS
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
if compgen -G ".whl/*.whl" > /dev/null; then  # peers carried as wheels (fetch_peer_wheels.sh)
    python3 -m pip install -q --no-deps --no-index .whl/*.whl 2>&1 | tail -1
fi
{ nvidia-smi; python3 -m segtriton.bench.cli check; } > "$OUT/env.txt" 2>&1

left() {  # seconds until $1 after the start, at least 1 (`timeout 0` would never stop)
    local n=$((START + $1 - SECONDS))
    echo $((n > 0 ? n : 1))
}

# the tests of precision at saturated and random scaled logits first, so that a capped
# run reaches them (compiled logs and exponentials are approximations; pytest drops the
# glob's second copy of each)
GPU_TESTS="tests/test_kernels_saturated.py tests/test_kernels_random_options.py"
GPU_TESTS+=" tests/test_kernels_*.py tests/test_bench_timing.py"
GPU_TESTS_ALL="$GPU_TESTS tests/test_bad_input.py tests/test_custom_ops.py"
GPU_TESTS_ALL+=" tests/test_no_host_sync.py tests/test_deep_supervision.py"
GPU_TESTS_ALL+=" tests/test_class_vectors.py tests/test_autocast.py tests/test_dynamic_shapes.py"
GPU_TESTS_ALL+=" tests/test_fp_fusion.py"

run_tests() {  # CAP [MODULES]; TRITON_INTERPRET stays unset: compiled kernels
    local logs rc modules=${2:-$GPU_TESTS}
    if python3 -c "import xdist" 2> /dev/null; then  # one pool of workers over every module
        # SIGINT at the cap: pytest stops as on Ctrl-C and still prints its summary
        # shellcheck disable=SC2086  # $modules holds globs
        COLUMNS=250 timeout -s INT -k 20 "$1" python3 -m pytest -v -n "$(nproc)" \
            -p no:cacheprovider --tb=short \
            $modules > "$OUT/tests.log" 2>&1
        rc=$?
        printf '\npytest -n %s: exit %s (124: stopped at %s s)\n' "$(nproc)" "$rc" "$1" \
            >> "$OUT/tests.log"
        # each failure's assertion and seed, so a log that does not come back still says why
        grep -E "^(FAILED|ERROR) tests/|^E   |^seed=" "$OUT/tests.log" | head -n 60
        grep -oE " (PASSED|FAILED|ERROR|SKIPPED) " "$OUT/tests.log" | sort | uniq -c
        tail -n 3 "$OUT/tests.log"
        return
    fi
    logs=$(mktemp -d)
    # shellcheck disable=SC2086  # $modules holds globs; each module once, in order
    for module in $(printf '%s\n' $modules | awk '!seen[$0]++'); do
        local log="$logs/$(basename "$module" .py).log"
        (timeout "$1" python3 -m pytest -q -p no:cacheprovider "$module" > "$log" 2>&1
            echo " exit $?" >> "$log") &
    done
    wait
    for log in "$logs"/*.log; do
        echo "=== $(basename "$log" .log): $(tail -n 2 "$log" | tr '\n' ' ')"
    done | tee "$OUT/tests.log"
    cat "$logs"/*.log >> "$OUT/tests.log"
}

run_sweep() {  # [PRESET [flags]]; SWEEP_CAP seconds (default LIMIT)
    local preset=${1:-quick} dir=${SWEEP_DIR:-$OUT/sweep} rc
    shift $(($# > 0 ? 1 : 0))
    timeout "${SWEEP_CAP:-$LIMIT}" python3 -m segtriton.bench.cli sweep --preset "$preset" \
        --out "$dir" --reps 50 "$@" >> "$OUT/sweep.log" 2>&1
    rc=$?
    echo "sweep $preset $*: exit $rc" | tee -a "$OUT/sweep.log"
    local benches=()  # a lease's benchmark JSON beside the rows (empty: stopped before writing)
    for f in "$dir"/pytest-benchmark*.json; do [ -s "$f" ] && benches+=("$f"); done
    if [ -f "$dir/rows.json" ] && { [ "$rc" -eq 124 ] || [ ${#benches[@]} -gt 0 ]; }
    then  # a stopped sweep's report; or one whose targets also read a lease's benchmarks
        timeout 60 python3 -m segtriton.bench.cli report "${benches[@]}" "$dir" --out "$dir" \
            >> "$OUT/sweep.log" 2>&1
    fi
    # the report and its charts travel as one archive (files come back 2 folders down)
    tar -czf "$OUT/sweep.tgz" -C "$(dirname "$dir")" "$(basename "$dir")"
    [ -n "${SWEEP_DIR:-}" ] || rm -rf "$dir"
    tail -n 20 "$OUT/sweep.log"
}

run_bench() {  # CAP [pytest -k expression [JSON]]; the log is appended to
    timeout "$1" python3 -m pytest -q tests/test_benchmarks.py --benchmark ${2:+-k "$2"} \
        --benchmark-json="${3:-$OUT/pytest-benchmark.json}" >> "$OUT/bench.log" 2>&1
    echo "pytest --benchmark ${2:+-k \"$2\"}: exit $?" | tee -a "$OUT/bench.log"
}

# the kernel knobs the lease compares with the defaults (walks over class rows: 1 class by
# 512 pixels; the CE / softmax focal walks unrolled 4 times, the others plain),
# NAME:VAR=VALUE[+VAR=VALUE...]. On the H200 (2026-12-04) walks of 256, 1024 and 2048
# pixels, chunks of 2-16 classes and STAGES 3 were slower or mixed, the whole-class tiles
# of the first design 2.6-7x slower, and every walk unrolled 4 times made CE 7-13% faster
# and Dice 12-13% slower (2026-12-04-lease3), when the walks that write the gradient still
# loaded a row only after storing the last. column0 takes CE / softmax focal and Dice at
# C = 19 back to the walks (the default holds each pixel's class column in registers, up to
# 32 classes for CE and 24 for the region passes, reading the logits once a pass); rows1 writes the gradient a class row at a time
# again (one load in flight a thread; the default is 4 rows); unroll4 unrolls every walk
# 4 times again, Dice's pass 1 walks included (one load in flight a thread otherwise; 128
# registers against 125 under Triton 3.6, the same 16 warps per SM). The targets read
# int64 labels: under Triton < 3.7 unrolled walks do not build on 8- or 16-bit ones
# (WALK_LABEL_BUG)
LEASE_VARIANTS="column0:SEGTRITON_COLUMN=0 rows1:SEGTRITON_WRITE_ROWS=1 unroll4:SEGTRITON_UNROLL=4"

# the losses whose torch.compile rows the lease times first (the preset's order puts CE +
# Dice last): a row compiles for 15-30 s, and on 2026-12-04 the lease's cap stopped the
# compile rows after CE, the focal losses and BCE
COMPILE_FIRST="cross_entropy,dice,ce_dice,softmax_focal"

# the losses the lease times on channels_last logits as well (Triton and eager, bf16;
# BCE's masks follow the logits)
CHANNELS_LAST="cross_entropy,dice,ce_dice,bce"

run_lease() {
    local dir=${SWEEP_DIR:-out/targets} v
    run_tests $((LIMIT * 27 / 100))  # 150 s of the default 560
    SWEEP_DIR=$dir SWEEP_CAP=$(left $((LIMIT * 45 / 100))) run_sweep targets \
        --providers triton,eager,berman --reps 20
    # the metric and EDT bars (30 s on 2026-12-04), kept beside the rows: the reports read them
    # (pytest-benchmark writes its JSON at the end: cases beyond the bars go in calls of
    # their own, so that a cap reached there cannot lose the bars' JSON)
    run_bench "$(left $((LIMIT * 53 / 100)))" \
        "(confusion_matrix or distance_transform) and not x59x and not (labels90 and x19x)" \
        "$dir/pytest-benchmark.json"
    # C = 59 (atomics since 2026-12-06) and C = 19 with labels 90% right
    run_bench 20 "confusion_matrix and (x59x or (labels90 and x19x))" \
        "$dir/pytest-benchmark-3.json"
    # C = 19 from labels on integer atomics (a 32-bin diagonal histogram) instead of its
    # 512-bin private histogram, against the rows just timed: 128 SASS instructions a
    # pixel against 58-118 (kernels/metrics.py), untimed until now. Named apart from
    # pytest-benchmark*.json, which the reports merge
    SEGTRITON_HIST_BINS=0 run_bench 20 "confusion_matrix and triton and labels and x19x" \
        "$dir/hist0-benchmark.json"
    SWEEP_DIR=$dir SWEEP_CAP=$(left $((LIMIT * 68 / 100))) run_sweep targets \
        --providers compile --dtypes bf16 --losses "$COMPILE_FIRST" --reps 20 --resume \
        > /dev/null
    variant_runs "$dir/variants" $((LIMIT * 5 / 100)) "$LEASE_VARIANTS" --preset targets \
        --losses cross_entropy,softmax_focal,dice --dtypes bf16 --reps 20
    for v in $LEASE_VARIANTS; do  # against the default rows of the targets sweep
        v=${v%%:*}
        [ -f "$dir/variants/$v/rows.json" ] && [ -f "$dir/rows.json" ] &&
            python3 -m segtriton.bench.cli compare "$dir" "$dir/variants/$v" \
                --chart "$dir/variants/$v.png" | tee -a "$OUT/tiles.log"
    done
    # channels_last logits (never timed before 2026-12-05): rows beside the NCHW ones, in
    # the report; up to 32 classes they take the column tiles, one pixel a thread, and
    # BCE reads logits, masks and gradient as flat ranges (since 2026-12-06)
    SWEEP_DIR=$dir SWEEP_CAP=$((LIMIT * 6 / 100)) run_sweep targets \
        --providers triton,eager --dtypes bf16 --memory-formats channels_last \
        --losses "$CHANNELS_LAST" --reps 20 --resume > /dev/null
    # and the class-row walks they replaced there, against those rows
    variant_runs "$dir/variants" $((LIMIT * 4 / 100)) "cl-walks:SEGTRITON_COLUMN=0+SEGTRITON_FLAT=0" \
        --preset targets --losses "$CHANNELS_LAST" --dtypes bf16 \
        --memory-formats channels_last --reps 20
    [ -f "$dir/variants/cl-walks/rows.json" ] && [ -f "$dir/rows.json" ] &&
        python3 -m segtriton.bench.cli compare "$dir" "$dir/variants/cl-walks" \
            --chart "$dir/variants/cl-walks.png" | tee -a "$OUT/tiles.log"
    # the signed-map reference takes 4-8 s a round
    run_bench "$(left $((LIMIT * 88 / 100)))" "signed_map or sort_share" \
        "$dir/pytest-benchmark-2.json"
    # where a call's host time goes: at lease3 CE at C = 19 took 0.90 ms a call timed with
    # events and 0.25 ms replayed, and this CPU machine's `segtriton overhead` says 0.1 ms
    { echo "# python3 -m segtriton.bench.probe --stages host"
      timeout "$(left $((LIMIT - 45)))" python3 -m segtriton.bench.probe --stages host
      echo "probe host: exit $?"; } >> "$OUT/bench.log" 2>&1
    # the report comes with this last sweep call, reading the benchmarks' JSON too
    SWEEP_DIR=$dir SWEEP_CAP=$(left $((LIMIT - 20))) run_sweep targets \
        --providers compile --dtypes bf16 --reps 20 --resume > /dev/null
    if [ -f "$dir/report.md" ]; then
        sed -n '/^## Issue targets/,/^## /p' "$dir/report.md" | head -n 70
    else
        echo "no report.md: the targets sweep wrote no rows (see sweep.log)"
    fi
}

variant_runs() {  # BASE CAP "NAME:VAR=VALUE ..." SWEEP-FLAGS...: Triton alone per variant
    local base=$1 cap=$2 variants=$3 v
    shift 3
    for v in $variants; do  # the knobs are read at import: one process per variant
        local assigns
        IFS=+ read -ra assigns <<< "${v#*:}"
        env "${assigns[@]}" timeout "$cap" python3 -m segtriton.bench.cli sweep \
            --providers triton --modes fwd+bwd "$@" --out "$base/${v%%:*}" \
            >> "$OUT/tiles.log" 2>&1
        echo "variant ${v%%:*} (${v#*:}): exit $?" | tee -a "$OUT/tiles.log"
    done
}

run_tiles() {
    local preset=${1:-cityscapes} tile
    variant_runs "$OUT/tiles" $((LIMIT / 3)) \
        "2048:SEGTRITON_MAX_TILE=2048 4096:SEGTRITON_MAX_TILE=4096 8192:SEGTRITON_MAX_TILE=8192" \
        --preset "$preset" --reps 30
    for tile in 4096 8192; do  # exit 1 only means "slower somewhere": keep going
        python3 -m segtriton.bench.cli compare "$OUT/tiles/2048" "$OUT/tiles/$tile" \
            | tee -a "$OUT/tiles.log"
    done
    tar -czf "$OUT/tiles.tgz" -C "$OUT" tiles && rm -rf "$OUT/tiles"
}

case "$STAGE" in
    tests) run_tests "$LIMIT" "$GPU_TESTS_ALL" ;;
    sweep) run_sweep "$@" ;;
    bench) run_bench "$LIMIT" ;;
    tiles) run_tiles "$@" ;;
    lease) run_lease ;;
    probe)  # where the time goes (bench/probe.py), then the GPU tests named after it
        timeout "$((LIMIT * ${PROBE_SHARE:-55} / 100))" python3 -m segtriton.bench.probe \
            --stages "${PROBE_STAGES:-kernels,host}" \
            --knobs-cap "$((LIMIT * (${PROBE_SHARE:-55} - 25) / 100))" > "$OUT/probe.log" 2>&1
        echo "probe: exit $?" >> "$OUT/probe.log"
        cat "$OUT/probe.log"
        # shellcheck disable=SC2124  # one string of test modules, as run_tests takes it
        if [ $# -gt 0 ]; then run_tests "$(left $((LIMIT - 5)))" "$*"; fi
        ;;
    all)
        run_tests $((LIMIT / 2))
        LIMIT=$((LIMIT / 3)) run_sweep "${1:-quick}"
        run_bench $((LIMIT / 6))
        ;;
    *) echo "unknown stage $STAGE (tests, sweep, bench, tiles, all, lease, probe)" >&2; exit 2 ;;
esac
