#!/bin/bash
# A/B of kernel libraries on the device tool: the benchmark once per library per round, libraries
# alternating, so that clock and thermal drift hit each alike. The libraries are narrowed builds
# made on the CPU machine and carried in .carry/ (git-ignored), e.g.
#   FLASH_ATTENTION_CUDA_ARCHS=90 FLASH_ATTENTION_HEAD_DIMS=256 FLASH_ATTENTION_DTYPES=bf16 \
#   FLASH_ATTENTION_DIRECTIONS=fwd python csrc_cuda/build.py --build-dir /tmp/b --out .carry/NAME/libflash_attn_cuda.so
#   tools/ab_libs.sh "BENCHMARK ARGS" NAME... (ROUNDS=2 by default)
# Prints each run's TFLOP/s rows; whole logs go to $OUT (at most 8 files come back).
set -u
OUT=${OUT:-/tmp/fa_ab}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
args=$1
shift
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
for round in $(seq "${ROUNDS:-2}"); do
  for lib in "$@"; do
    # shellcheck disable=SC2086  # the benchmark arguments are meant to split
    FLASH_ATTENTION_LIB_DIR=$PWD/.carry/$lib timeout 280 python benchmarks/benchmark_flash_attention.py \
      --device cuda $args --out "/tmp/ab_$lib$round" > "$OUT/${lib}_$round.log" 2>&1
    echo "== $lib round $round"
    sed "/peak memory/q" "$OUT/${lib}_$round.log" | grep -E "^ *[0-9]+ +[01] "
  done
done
