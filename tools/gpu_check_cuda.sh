#!/bin/bash
# One device session for the native CUDA backend: tests, compute-sanitizer on tiny calls, the
# determinism check and the benchmark against SDPA flash. Logs go to $OUT; the compact table last.
#   tools/gpu_check_cuda.sh [quick]      (needs flash_attn/_lib/libflash_attn_cuda.so, built elsewhere)
set -u
OUT=${OUT:-/tmp/fa_gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"

echo "== pytest"
FA_TEST_LOG="$OUT/accuracy.jsonl" timeout 300 python -m pytest -q -rf --maxfail=40 -p no:cacheprovider \
  tests/backends/test_native_cuda.py > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"; grep -E "^FAILED|passed|failed" "$OUT/pytest.log" | cut -c1-300 | tail -n 45
if [ -f "$OUT/accuracy.jsonl" ]; then
  python - "$OUT/accuracy.jsonl" <<'PY'
import json, sys, collections
worst = collections.defaultdict(lambda: (0.0, ""))
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["ratio"] > worst[r["what"]][0]:
        worst[r["what"]] = (r["ratio"], r["case"])
for k, (ratio, case) in sorted(worst.items()):
    print(f"worst err/baseline {k:4s}: {ratio:.3f}  ({case})")
PY
fi

echo "== compute-sanitizer memcheck"
timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python tools/cuda_smoke.py > "$OUT/memcheck.log" 2>&1
echo "memcheck exit $?"; tail -n 4 "$OUT/memcheck.log"
if [ "${1:-}" != "quick" ]; then
  echo "== compute-sanitizer racecheck"
  timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python tools/cuda_smoke.py > "$OUT/racecheck.log" 2>&1
  echo "racecheck exit $?"; tail -n 3 "$OUT/racecheck.log"
fi

echo "== benchmark"
timeout 240 python tools/bench_native_cuda.py --json "$OUT/bench.json" ${1:+--quick} > "$OUT/bench.log" 2>&1
echo "bench exit $?"; tail -n 40 "$OUT/bench.log"
