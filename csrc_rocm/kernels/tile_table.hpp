// Tile choices for every ck_tile FMHA kernel this backend instantiates, one row per head-dim
// bucket. Plain constexpr data with no ck_tile include, so the host glue (split heuristic,
// workspace layout, instance lookup) reads the same facts the kernels are built from.
//
// One table serves gfx90a (MI200) and gfx942 (MI300): both have 64 KiB of LDS per workgroup,
// 64-wide wavefronts and the same MFMA shapes for fp16/bf16, and ck_tile's own tuning (commit
// pinned in docs/rocm_backend.md) uses one set for both. The numbers are that tuned set; the
// reasons are ours. Each kernel header static_asserts that its LDS use fits kLdsBytes.
#pragma once

namespace fa_rocm {

constexpr int kLdsBytes = 64 * 1024;  // per workgroup on gfx90a and gfx94x
constexpr int kWaveSize = 64;

// Head dims are served by the smallest bucket >= head_dim; head_dim % 8 == 0 is required so a
// row is a whole number of 16-byte vectors (fp16/bf16), which the vectorised loads assume.
constexpr int kHeadDimBuckets[] = {32, 64, 128, 256};
constexpr int kHeadDimMultiple = 8;

enum class FwdPipeline { QrAsync, Qr };
enum class BwdPipeline { KrKtrVrIglp, KrKtrVr };

// Forward (and the split-KV partial pass): S = Q K^T over (m0 x n0) tiles, O += P V over
// (m0 x n1) tiles; k0/k1 are the GEMM unrolls, k0_max the whole Q row kept in registers.
struct FwdTile {
  int head_dim;
  int m0, n0, k0, n1, k1, k0_max;
  int warps_m, warps_n, warps_k;  // warps per block along each GEMM dimension
  int warp_m, warp_n, warp_k;     // MFMA warp tile
  FwdPipeline pipeline;
  const char* why;
};

constexpr FwdTile kFwdTiles[] = {
    {32, 128, 64, 16, 32, 32, 32, 2, 1, 1, 32, 32, 16, FwdPipeline::QrAsync,
     "small rows: 2 warps keep 128 query rows per block without idle MFMA lanes"},
    {64, 128, 64, 32, 64, 32, 64, 4, 1, 1, 32, 32, 16, FwdPipeline::QrAsync,
     "n0 = 64 keeps K/V double buffers small enough for 3 blocks per CU"},
    {128, 128, 128, 32, 128, 32, 128, 4, 1, 1, 32, 32, 16, FwdPipeline::QrAsync,
     "the common case: 128x128 S tile, async K/V loads overlap the QK^T MFMAs"},
    {256, 128, 128, 32, 256, 32, 256, 4, 1, 1, 32, 32, 16, FwdPipeline::Qr,
     "async LDS double-buffering does not fit 256-wide K/V tiles; the synchronous pipeline does"},
};

// Split-KV partial pass for decoding: seqlen_q is tiny, so fewer query rows per block (m0) and
// 16x16 MFMAs waste less of the tile on padding rows. ck_tile (this commit) has only the
// synchronous qr pipeline for split-KV.
constexpr FwdTile kSplitTiles[] = {
    {32, 32, 64, 16, 32, 32, 32, 2, 1, 1, 16, 16, 16, FwdPipeline::Qr,
     "32 query rows: a decode step fills 1 row, so small m0 bounds the wasted MFMA work"},
    {64, 64, 64, 32, 64, 32, 64, 4, 1, 1, 16, 16, 16, FwdPipeline::Qr,
     "4 warps x 16 rows; 16x16 MFMAs so each warp owns a whole 16-row slab"},
    {128, 64, 128, 32, 128, 32, 128, 4, 1, 1, 16, 16, 16, FwdPipeline::Qr,
     "n0 = 128 halves the number of K/V tile iterations per split"},
    {256, 64, 128, 32, 256, 32, 256, 4, 1, 1, 16, 16, 16, FwdPipeline::Qr,
     "same shape as 128 with the full 256-wide V tile"},
};

// Split-KV combine: reduces the per-split LSE/O over (m0 x n1) output tiles; one warp per
// 16 rows (m0 / (kWaveSize / 4) warps). Instantiated for at most 8, 32 or 128 splits, because
// each block loads max_splits LSE rows whether they exist or not.
struct CombineTile {
  int head_dim;
  int m0, n1;
  const char* why;
};

constexpr CombineTile kCombineTiles[] = {
    {32, 16, 16, "one warp; the whole 32-wide row in two n1 tiles"},
    {64, 32, 32, "two warps, 32-column tiles keep fp32 O_acc loads coalesced"},
    {128, 32, 64, "two warps, 64-column tiles"},
    {256, 32, 128, "two warps, 128-column tiles"},
};
constexpr int kCombineLogMaxSplits[] = {3, 5, 7};
constexpr int kMaxSplits = 1 << 7;

// Backward dQ/dK/dV: each block owns n0 keys and loops over q in m0 steps. GEMMs 0/2 (S, dP)
// use warps0 x warp0, GEMMs 1/3 (dV, dK) warps1 x warp1, GEMM 4 (dQ) warps2 x warp0.
struct BwdTile {
  int head_dim;
  int m0, n0, k0, k1, k2, k3, k4;
  int warps0_m, warps0_n, warps0_k;
  int warps1_m, warps1_n, warps1_k;
  int warps2_m, warps2_n, warps2_k;
  int warp0_m, warp0_n, warp0_k;
  int warp1_m, warp1_n, warp1_k;
  int blocks_per_cu;
  const char* why;
};

constexpr BwdTile kBwdTiles[] = {
    {32, 32, 128, 32, 32, 32, 32, 64, 1, 4, 1, 4, 1, 1, 2, 2, 1, 16, 16, 32, 16, 16, 16, 1,
     "dQ GEMM split 2x2 across warps: a 32-wide dQ tile is too narrow for 4 warps along d"},
    {64, 32, 128, 64, 32, 64, 32, 32, 1, 4, 1, 4, 1, 1, 1, 4, 1, 16, 16, 32, 16, 16, 16, 1,
     "K, K^T, V of 128 keys stay in registers; 32 q rows per step fit the rest in LDS"},
    {128, 16, 128, 128, 16, 128, 16, 32, 1, 4, 1, 4, 1, 1, 1, 4, 1, 16, 16, 32, 16, 16, 16, 1,
     "m0 = 16: register-resident K/V at d=128 leave room for one 16-row q slab per step"},
    {256, 16, 64, 256, 16, 256, 16, 32, 1, 4, 1, 4, 1, 1, 1, 4, 1, 16, 16, 32, 16, 16, 16, 1,
     "n0 = 64 halves the register-resident K/V so d = 256 still fits"},
};
// Losing alternative kept for the record: the iglp (instruction-group scheduled) pipeline with
// padded head dims; ck_tile only validates it for exact buckets, so padded dims use kr_ktr_vr.

// Paged KV: ck_tile's page navigator moves a K/V tile window to the next page only between
// tiles, so pages must hold whole n0 tiles; 128 is a multiple of every split n0 above.
constexpr int kPageBlockMultiple = 128;

// dO.O row sums and the dQ fp32 -> dtype conversion: memory-bound helpers of the backward.
constexpr int kDotDoOBlockSize = 64;
constexpr int kConvertDqBlockSize = 256;
constexpr int kConvertDqM0 = 64;
constexpr int kBwdHelperBlocksPerCu = 2;

// The bucket serving head_dim, or 0 when head_dim exceeds every bucket.
constexpr int head_dim_bucket(int head_dim) {
  for (int b : kHeadDimBuckets) {
    if (head_dim <= b) return b;
  }
  return 0;
}

template <class Row, int N>
constexpr const Row& row_for(const Row (&table)[N], int bucket) {
  for (const Row& r : table) {
    if (r.head_dim == bucket) return r;
  }
  return table[N - 1];  // unreachable for a valid bucket; static_asserts in the kernels check
}

constexpr const FwdTile& fwd_tile(int bucket) { return row_for(kFwdTiles, bucket); }
constexpr const FwdTile& split_tile(int bucket) { return row_for(kSplitTiles, bucket); }
constexpr const CombineTile& combine_tile(int bucket) { return row_for(kCombineTiles, bucket); }
constexpr const BwdTile& bwd_tile(int bucket) { return row_for(kBwdTiles, bucket); }

// True when the pipeline serves head dims below its bucket without a padded-load instance: the
// async forward pads rows in registers and keeps 16-byte loads.
constexpr bool pads_head_dim_natively(FwdPipeline p) { return p == FwdPipeline::QrAsync; }

}  // namespace fa_rocm
