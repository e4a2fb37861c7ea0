#!/usr/bin/env bash
# Compile-checks csrc_rocm where no AMD GPU (and no ROCm install) exists: builds a narrowed
# libflash_attn_rocm.so through csrc_rocm/build.py with Debian's clang-19 + HIP headers
# (libamdhip64-dev) + rocm-device-libs, then, for every kernel object and every arch, extracts
# the code object and FAILS unless its disassembly holds v_mfma instructions (a ck_tile kernel
# that compiled to no MFMA would be a silent scalar fallback). Nothing here runs a kernel.
#
#   CK_DIR=/path/to/composable_kernel tools/check_rocm_build.sh
#
# Environment: CK_DIR (required), CK_COMMIT (reported when CK_DIR is not a git checkout),
# ARCHS (default "gfx90a;gfx940": gfx940 is the MI300-family target whose device library Debian
# ships; gfx942's is missing), BUILD_DIR, MAX_JOBS (1), and what to compile: INSTANCES, names
# (default: each kind once with every feature off, at head dim 128, and once with every feature
# it has on, so every ck_tile switch this backend sets is compiled both ways), or, with
# INSTANCES empty, a product selection: HEAD_DIMS (128), DTYPES (bf16), DIRECTIONS (fwd,bwd),
# SKIP_FEATURES (default: every feature, leaving one instance per kind).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
: "${CK_DIR:?set CK_DIR to a composable_kernel checkout (e.g. ROCm/composable_kernel of 2024-10)}"
archs=${ARCHS:-"gfx90a;gfx940"}
instances=${INSTANCES-fwd_d128_bf16,fwdsplit_d128_bf16,fwdcombine_d128_bf16,bwd_d128_bf16,\
fwd_d256_bf16_rtz_varlen_alibi_dropout_pad,fwdsplit_d128_bf16_rtz_alibi_paged_kv_pad,\
fwdcombine_d128_bf16_rtz,bwd_d128_bf16_rtz_varlen_alibi_dropout_deterministic_pad}
head_dims=${HEAD_DIMS:-128}
dtypes=${DTYPES:-bf16}
directions=${DIRECTIONS:-fwd,bwd}
skip=${SKIP_FEATURES-rtz,varlen,alibi,dropout,deterministic,paged_kv,pad}
build_dir=${BUILD_DIR:-$repo/build/rocm-check}
jobs=${MAX_JOBS:-1}
lib=$build_dir/libflash_attn_rocm.so

for tool in clang++-19 llvm-objcopy-19 llvm-objdump-19 clang-offload-bundler-19 llvm-nm-19; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install clang-19 llvm-19 lld-19)"; exit 2; }
done

ck_commit=${CK_COMMIT:-$(git -C "$CK_DIR" rev-parse HEAD 2>/dev/null || echo unknown)}
echo "== csrc_rocm compile check, $(date -u '+%Y-%m-%d %H:%M UTC')"
dirty=$(git -C "$repo" status --porcelain -- csrc_rocm dispatch/include 2>/dev/null | head -1)
echo "repo commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ (csrc_rocm has uncommitted changes)}"
echo "CK: $CK_DIR @ $ck_commit"
echo "compiler: $(clang++-19 --version | head -1)"
echo "HIP headers: $(dpkg-query -W -f '${Package} ${Version}' libamdhip64-dev 2>/dev/null || echo '?'),"\
     "device libs: $(dpkg-query -W -f '${Package} ${Version}' rocm-device-libs 2>/dev/null || echo '?')"
if [[ -n $instances ]]; then
  echo "archs: $archs; instances: $instances"
  select=(--instances "$instances")
else
  echo "archs: $archs; head dims: $head_dims; dtypes: $dtypes; directions: $directions; skipped features: ${skip:-none}"
  select=(--head-dims "$head_dims" --dtypes "$dtypes" --directions "$directions" --skip-features "${skip:-none}")
fi
echo

start=$(date +%s)
python3 "$repo/csrc_rocm/build.py" --build-dir "$build_dir" --out "$lib" --archs "$archs" \
  "${select[@]}" --ck-dir "$CK_DIR" -j "$jobs"
echo "build wall time: $(( $(date +%s) - start )) s"
echo

echo "== per translation unit compile time (last ninja build of each; all archs in one compile)"
awk -F'\t' 'NR > 1 { t[$4] = ($2 - $1) / 1000 } END { for (f in t) printf "  %7.1f s  %s\n", t[f], f }' \
  "$build_dir/.ninja_log" | sed "s|$build_dir/||" | sort -k3
echo

# The split-KV combine is a reduction without GEMMs: it must hold kernels, not MFMAs.
echo "== MFMA instructions per kernel object and arch (combine: kernels only, it has no GEMM)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
IFS=';' read -r -a arch_list <<<"$archs"
# The objects of this build's ninja file (a reused BUILD_DIR may hold others from earlier runs).
for obj in $(sed -n 's|^build \(.*/obj/instances/[^:]*\.o\): hip .*|\1|p' "$build_dir/build.ninja"); do
  name=$(basename "$obj" .o)
  llvm-objcopy-19 --dump-section .hip_fatbin="$tmp/$name.fatbin" "$obj"
  line="  $name:"
  for arch in "${arch_list[@]}"; do
    co=$tmp/$name.$arch.co
    clang-offload-bundler-19 --unbundle --type=o --input="$tmp/$name.fatbin" \
      --targets="hipv4-amdgcn-amd-amdhsa--$arch" --output="$co"
    if [[ ! -s $co ]]; then
      line+=" $arch=NO-CODE-OBJECT"; failed=1; continue
    fi
    llvm-objdump-19 -d --mcpu="$arch" "$co" >"$tmp/$name.$arch.s"
    count=$(grep -c 'v_mfma' "$tmp/$name.$arch.s" || true)
    kinds=$(grep -o 'v_mfma_[a-z0-9_]*' "$tmp/$name.$arch.s" | sort -u | tr '\n' ' ' || true)
    kernels=$(grep -c 's_endpgm' "$tmp/$name.$arch.s" || true)
    line+=" $arch: $kernels kernels, $count v_mfma [${kinds% }]"
    if [[ $kernels -eq 0 ]] || { [[ $count -eq 0 ]] && [[ $name != fwdcombine_* ]]; }; then
      failed=1
    fi
  done
  echo "$line"
done
echo

echo "== exported C ABI of $(basename "$lib")"
exports=$(llvm-nm-19 -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sort | tr '\n' ' ')
echo "  $exports"
for sym in fa_abi_version fa_build_info fa_last_error fa_fwd_workspace_size fa_fwd \
           fa_bwd_workspace_size fa_bwd; do
  [[ " $exports " == *" $sym "* ]] || { echo "  MISSING $sym"; failed=1; }
done
echo "  library size: $(stat -c %s "$lib") bytes"
loaded=$(python3 - "$lib" <<'PY'
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
lib.fa_build_info.restype = ctypes.c_char_p
info = lib.fa_build_info().decode()
json.loads(info)  # the dispatcher parses it: a malformed string fails the check here
print(f"fa_abi_version() = {lib.fa_abi_version()}, fa_build_info() = {info}")
PY
) || { loaded="FAILED (not loadable, or fa_build_info is not JSON)"; failed=1; }
echo "  loaded without a GPU: $loaded"
echo

if [[ $failed -ne 0 ]]; then
  echo "RESULT: FAIL"
  exit 1
fi
echo "RESULT: PASS (compiled; v_mfma in every GEMM kernel object for $archs; nothing was run: no AMD GPU here)"
