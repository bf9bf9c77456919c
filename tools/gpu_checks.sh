#!/usr/bin/env bash
# The GPU checks of issues 4 and 7 as one prepared command for a machine with one H100/H200 whose image holds
# PyTorch, transformers and peft (the device tool's): the paper-scale benchmark (optimized, compiled blocks,
# static-cache decoding, reference-style) and the GPU-only tests. MONAI and Ignite travel as wheels in .whl
# (docs/performance.md says how to fetch them). Figures and logs go to $OUT.
#
#   STAGES="lamed seg clip" tools/gpu_checks.sh                 # training steps, ~10 timed steps each
#   STAGES=generate STEPS=1 WARMUP=1 tools/gpu_checks.sh        # the reference answers 32 prompts one by one (minutes)
#   SCALE=tiny STAGES=lamed tools/gpu_checks.sh                 # the same path at demo size, e.g. on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
STAGES=${STAGES:-lamed seg clip}
SCALE=${SCALE:-paper}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv"
fi
# shellcheck disable=SC2086  # STAGES is a list of stage names
python3 tools/benchmark.py --stages $STAGES --scale "$SCALE" --steps "$STEPS" --warmup "$WARMUP" --compile-blocks \
    --json "$OUT/bench_${SCALE}_${STAGES// /_}.json" 2>&1 | tee "$OUT/bench_${SCALE}_${STAGES// /_}.log"
if [ "${GPU_TESTS:-1}" = 1 ]; then
    python3 -m pytest -q -p no:cacheprovider tests/data/test_transforms.py -k "gpu or device" 2>&1 | tee "$OUT/gpu_tests.log"
fi
