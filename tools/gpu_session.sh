#!/bin/bash
# Device-tool sessions for the CUDA backend, in stages that each have a time limit, so that a hang
# in one leaves the others' results. Runs from the source checkout. Logs go to $OUT
# (at most 8 files come back), one summary line per stage to stdout.
#   tools/gpu_session.sh STAGE...
#     build   builds flash_attn/_lib/libflash_attn_cuda.so there (sm_90, all jobs) and the C++
#             autograd node (csrc_torch/build.py, against that machine's torch), CuTe headers
#             from .carry/cutlass_include.tar.xz (git-ignored; make it here with
#             tar -cJf .carry/cutlass_include.tar.xz -C <site-packages>/cutlass_library/source include
#             and name .carry in the device call's carry); RETURN_LIB=1 returns it xz-compressed
#     tests   the whole suite, devices cpu and cuda
#     checks  cuda tests with the arch override sm80 and sm86; 50-run determinism; memcheck
#     memcheck  compute-sanitizer memcheck over tools/cuda_smoke.py alone
#     multigpu  tests/flash_attn/test_multi_gpu.py (run on nvidia-h200-x2; a narrowed build is
#             enough: FLASH_ATTENTION_HEAD_DIMS=64 FLASH_ATTENTION_DTYPES=bf16 ... build multigpu)
#     bench   benchmarks/benchmark_flash_attention.py against SDPA flash, cuDNN, FlexAttention
#             (BENCH_SEQLENS, BENCH_PEERS narrow it)
set -u
OUT=${OUT:-/tmp/fa_gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
stage() {  # stage NAME SECONDS CMD...: runs CMD under a limit, log in $OUT/NAME.log, one summary line
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-14s exit %-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" \
    "$(grep -E '[0-9]+ (passed|failed)|bitwise|ERROR SUMMARY|built ' "$OUT/$name.log" | tail -n1 | cut -c1-120)" \
    | tee -a "$OUT/summary.txt"
}
failures() { grep -E "^(FAILED|ERROR)|DIFFER|^E  .*(Error|max err)" "$OUT/$1.log" | cut -c1-220 | head -n "$2"; }
PYTEST="python -m pytest -rfE -p no:cacheprovider --maxfail=200"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  | tee -a "$OUT/summary.txt"

for what in "$@"; do
  case $what in
  build)
    mkdir -p /tmp/cutlass && tar -xJf .carry/cutlass_include.tar.xz -C /tmp/cutlass
    CUTLASS_INCLUDE_DIR=/tmp/cutlass/include FLASH_ATTENTION_CUDA_ARCHS=90 MAX_JOBS=$(nproc) \
      stage build 420 python csrc_cuda/build.py
    stage build_node 120 python csrc_torch/build.py
    [ -n "${RETURN_LIB:-}" ] && xz -T0 -1 -c flash_attn/_lib/libflash_attn_cuda.so > "$OUT/libflash_attn_cuda.so.xz"
    grep -E "error" "$OUT/build.log" | head -n 20
    ;;
  tests)
    # transformers looks for the installed distribution's metadata (flash_attn >= 2.1.0)
    FLASH_ATTENTION_BUILD_TARGET=none python -m pip install -q --no-deps --no-build-isolation -e . \
      > /tmp/install.log 2>&1 || tail -n 5 /tmp/install.log
    python -m flash_attn info | grep -E "cuda_sm80|device:|->" | head -n 4
    stage pytest 270 $PYTEST tests/
    failures pytest 40
    ;;
  checks)
    for arch in sm80 sm86; do
      FLASH_ATTENTION_ARCH_OVERRIDE=$arch stage "pytest_$arch" 90 $PYTEST -k cuda \
        tests/flash_attn/test_interface.py tests/flash_attn/test_kvcache.py
      failures "pytest_$arch" 15
    done
    stage determinism 90 python tools/check_determinism.py --runs 50
    cat "$OUT/determinism.log" | cut -c1-200 | tail -n 8
    ;&
  memcheck)
    stage memcheck 100 compute-sanitizer --tool memcheck --error-exitcode 9 python tools/cuda_smoke.py
    grep -E "ERROR SUMMARY|Invalid|Error" "$OUT/memcheck.log" | head -n 10
    ;;
  multigpu)
    nvidia-smi -L | tee -a "$OUT/summary.txt"
    stage multigpu 120 $PYTEST tests/flash_attn/test_multi_gpu.py
    failures multigpu 20
    ;;
  bench)
    stage bench 540 python benchmarks/benchmark_flash_attention.py --device cuda --out "$OUT" \
      --headdims 64,128,256 --seqlens ${BENCH_SEQLENS:-2048,4096,8192,16384} --directions fwd,bwd \
      --peers ${BENCH_PEERS:-sdpa_flash,sdpa_cudnn,flex}
    sed -n '/^ *d /,$p' "$OUT/bench.log" | head -n 90
    ;;
  esac
done
