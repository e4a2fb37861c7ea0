// Tile shapes of the SM80-class kernels, one table per architecture row, chosen by the shared
// memory one block may use: SM80 (A100) 163 KB, SM86/SM89 99 KB, SM90 (H100) 227 KB. The kernels
// compile each distinct entry once; fa_problem.arch picks the row at run time, so an H100 can run
// every row. No CuTe here: the ABI glue reads the same facts to size workspaces and check smem.
#pragma once

#include <cstddef>

namespace fa::sm80 {

enum class ArchRow : int { kSm80 = 0, kSm86 = 1, kSm90 = 2 };
constexpr int kNumArchRows = 3;
constexpr size_t kSmemLimit[kNumArchRows] = {163 * 1024, 99 * 1024, 227 * 1024};

constexpr int kHeadDimBuckets[] = {32, 64, 96, 128, 192, 256};

// Shared memory of one block, in bytes; the tile table (host checks) and the kernel traits
// (launches) both use these. Forward: Q (block_m rows), kv_stages buffers of K and V (block_n
// rows), 16-bit.
constexpr size_t fwd_smem_bytes(int block_m, int block_n, int head_dim, int kv_stages) {
  return size_t(block_m + 2 * block_n * kv_stages) * head_dim * 2;
}
// Backward: K, V (block_n rows), q_stages buffers of Q and one of dO (block_m rows), P and dS
// (block_m x block_n), all 16-bit; the query rows' lse (one per Q buffer) and D in fp32.
constexpr size_t bwd_smem_bytes(int block_m, int block_n, int head_dim, int q_stages) {
  return (size_t(2 * block_n + (q_stages + 1) * block_m) * head_dim + size_t(2) * block_m * block_n) * 2 +
         size_t(q_stages + 1) * block_m * 4;
}

// Rows of the backward's fp32 dQ sum: every query block of every sequence owns a whole block_m-row
// slot (bwd_dq_accum.h), so each sequence may take up to block_m rows more than it has.
constexpr size_t dq_accum_rows(size_t rows_q, int batch, int block_m) { return rows_q + size_t(batch) * block_m; }

struct FwdTile {
  int head_dim;    // bucket: any head_dim up to it runs with the rest of the tile zero-filled
  int block_m;     // query rows per block
  int block_n;     // keys per main-loop step
  int warps;       // plain kernel: each warp owns block_m / warps whole query rows
  int warps_full;  // the full kernel (softcap, ALiBi, dropout, RTZ; common/features.h)
  int kv_stages;   // 2: K and V of the next key block load during the whole step; 1: V(n) during
                   // S = Q K^T, K(n-1) during O += P V (FlashAttention-2's schedule)
  constexpr size_t smem_bytes() const { return fwd_smem_bytes(block_m, block_n, head_dim, kv_stages); }
};

struct BwdTile {
  int head_dim;
  int block_m;      // query rows per inner step
  int block_n;      // keys owned by one block (dK, dV accumulate in its registers)
  int warps;
  int sdp_warps_m;  // warp grid of S = Q K^T and dP = dO V^T: sdp_warps_m x (warps / sdp_warps_m)
  int dkv_warps_n;  // warp grid of dK, dV (block_n x head_dim): dkv_warps_n x (warps / ...)
  int dq_warps_m;   // warp grid of dQ (block_m x head_dim): dq_warps_m x (warps / ...)
  int dq_passes;    // dQ formed and added in this many column slices: fewer live registers, and
                    // each slice's reductions drain while the next slice's product runs
  int q_stages;     // 2: the next query block's Q loads during the whole step, its dO from the
                    // dV product on (FlashAttention-2's double buffer); 1: both after the dK product
  constexpr size_t smem_bytes() const { return bwd_smem_bytes(block_m, block_n, head_dim, q_stages); }
};

// clang-format off
// Warps: a warp reads all of K and V from shared memory for its rows, so 32 rows per warp (4
// warps for 128 rows) halve the ldmatrix traffic per MMA against 16 rows (8 warps). Measured on
// an H100 (benchmarks/results, run d): the plain d 128 kernel gains 32 %, d 64 47 % from 8 to 4
// warps. 4 warps leave each thread the whole 32-row accumulator, so ptxas (nvcc 13.0) spills
// 40-100 bytes per thread there; the full kernel's extra state (Philox, tanh) would spill far
// more (364 bytes at d 64), so it keeps 8 warps, which spill nothing. d 192 and 256 keep 8
// warps in both: 32 rows of a 192- or 256-wide accumulator do not fit in 255 registers.
constexpr FwdTile kFwdTiles[kNumArchRows][6] = {
  {  // SM80, 163 KB
    { 32, 128, 128, 4, 8, 1},  // FlashAttention-2's; 128 x 64: 10-15 % slower on the H100 (run ch)
    { 64, 128,  64, 4, 8, 1},  // FlashAttention-2's 128 x 128 spilled 172 bytes and was 3-6 %
                               // slower, 64 x 128 7-10 % slower (run z)
    { 96, 128,  64, 4, 8, 1},
    {128, 128,  32, 4, 8, 1},  // as fast as 128 x 64 on the H100, with a third of the spills
    {192, 128,  64, 8, 8, 1},
    {256, 128,  64, 8, 8, 1},  // 128 KB, one block per SM; 64 x 64 (96 KB) would leave an A100's
                               // SM one 4-warp block (the SM90 row runs two)
  },
  {  // SM86 / SM89, 99 KB: as SM80 but for d 256
    { 32, 128, 128, 4, 8, 1},
    { 64, 128,  64, 4, 8, 1},
    { 96, 128,  64, 4, 8, 1},
    {128, 128,  32, 4, 8, 1},
    {192, 128,  64, 8, 8, 1},  // 96 KB, just fits
    {256,  64,  64, 4, 4, 1},  // 128 x 64 needs 128 KB; 64 query rows bring it to 96 KB
  },
  {  // SM90, 227 KB: the SM80 shapes, but two K/V buffers where they measured faster on the H100
     // (runs cd-cf; two blocks per SM still fit) and d 256 as FlashAttention-2 runs it there
    { 32, 128, 128, 4, 8, 1},  // +11-17 % over 128 x 64 with two buffers (run ch), which beat one by
                               // 8 % (run ce)
    { 64, 128,  64, 4, 8, 2},  // two buffers: +1-3 % (run cd); 128 x 128 with two: a tie (run cf)
    { 96, 128,  64, 4, 8, 1},  // two buffers: 1-4 % slower (run ce)
    {128, 128,  64, 4, 8, 2},  // 128 x 64 with two buffers: +7-10 % over one (run cf), where
                               // 128 x 32 with two lost 1-3 % (run cd)
    {192, 128,  64, 8, 8, 1},  // two buffers (144 KB) would leave one block per SM
    {256,  64,  64, 4, 4, 1},  // FlashAttention-2's on the H100: 96 KB, two blocks per SM (run p3);
                               // 64 x 32 with two buffers: 9-12 % slower (run cf)
  },
};

// The split-KV forward (decoding and other calls whose grid leaves SMs idle, sm80/fwd_split.h):
// 64 query rows, since such calls have few (a decoding step's query heads of one key head), and
// one tile for every architecture row, so it is compiled once: it fits the 99 KB of SM86/SM89.
// At most this many split blocks share a query block: the combine kernel keeps each row's split
// lse in registers, kMaxSplits / 32 per lane.
constexpr int kMaxSplits = 128;

constexpr FwdTile kSplitTiles[6] = {
    { 32, 64, 64, 4, 4, 2},
    { 64, 64, 64, 4, 4, 2},
    { 96, 64, 64, 4, 4, 2},
    {128, 64, 64, 4, 4, 2},  // 80 KB
    {192, 64, 64, 4, 4, 1},
    {256, 64, 64, 4, 4, 1},  // 96 KB
};

constexpr BwdTile kBwdTiles[kNumArchRows][6] = {
  {  // SM80, 163 KB. Warp grids as square as the tile allows: a warp's operand loads grow with
     // its tile's rows + columns, its MMAs with their product (the FlashAttention-2 layouts).
     // A second Q buffer gained 2-3 % at d 64 and nothing at d 128 and 256 (run w).
    { 32, 128, 128, 8, 4, 4, 4, 1, 2},  // 104 KB
    { 64, 128, 128, 8, 4, 4, 4, 1, 2},  // 144 KB, FlashAttention-2's shape: 64 x 128 was 15 % slower (run h1)
    { 96,  64, 128, 8, 2, 4, 4, 1, 1},  // 104 KB
    {128,  64, 128, 8, 2, 4, 2, 1, 1},  // 128 KB; dK + dV take 128 registers per thread; dQ warps 32 x 32;
                                        // dQ in 2 passes was 2.5 % slower (run m)
    {192,  64,  64, 8, 4, 2, 2, 1, 1},  // 112 KB; a 128-key block would need 192 dK/dV registers
    {256,  64,  64, 8, 4, 2, 2, 2, 1},  // 144 KB; dK, dV and dQ warps 32 x 64 instead of 16 x 128;
                                        // dQ in 2 passes: +4 % (run m; 1 spilled 76 bytes), and
                                        // still +2-3 % with 1 spilling nothing (run ab); 4: no gain
  },
  {  // SM86 / SM89, 99 KB
    { 32, 128, 128, 8, 4, 4, 4, 1, 1},  // as SM80 with one Q buffer (96 KB)
    { 64,  64, 128, 8, 2, 4, 2, 1, 1},  // 80 KB: 128 x 128 needs 128 KB
    { 96,  64,  64, 8, 2, 4, 4, 1, 1},  // 64 KB: the 128-key block needs 104 KB
    {128,  64,  64, 8, 2, 4, 4, 1, 1},  // 80 KB
    {192,  32,  64, 8, 2, 4, 2, 1, 1},  // 80 KB: 64 query rows would need 112 KB
    {256,  32,  32, 4, 2, 2, 2, 1, 1},  // 68 KB: 4 warps, since 8 cannot tile a 32 x 32 score block
  },
  {  // SM90, 227 KB: the SM80 shapes (see the forward table)
    { 32, 128, 128, 8, 4, 4, 4, 1, 2},
    { 64, 128, 128, 8, 4, 4, 4, 1, 2},
    { 96,  64, 128, 8, 2, 4, 4, 1, 1},
    {128,  64, 128, 8, 2, 4, 2, 1, 1},
    {192,  64,  64, 8, 4, 2, 2, 1, 1},
    {256,  64,  64, 8, 4, 2, 2, 2, 1},
  },
};
// clang-format on

constexpr int bucket_index(int head_dim) {
  for (int i = 0; i < 6; ++i) {
    if (head_dim <= kHeadDimBuckets[i]) { return i; }
  }
  return -1;
}

constexpr FwdTile fwd_tile(ArchRow row, int bucket) {
  return kFwdTiles[int(row)][bucket_index(bucket)];
}
constexpr BwdTile bwd_tile(ArchRow row, int bucket) {
  return kBwdTiles[int(row)][bucket_index(bucket)];
}
constexpr FwdTile split_tile(int bucket) { return kSplitTiles[bucket_index(bucket)]; }

constexpr bool tables_fit() {
  for (int r = 0; r < kNumArchRows; ++r) {
    for (int i = 0; i < 6; ++i) {
      if (kFwdTiles[r][i].head_dim != kHeadDimBuckets[i] || kBwdTiles[r][i].head_dim != kHeadDimBuckets[i]) {
        return false;
      }
      if (kFwdTiles[r][i].smem_bytes() > kSmemLimit[r] || kBwdTiles[r][i].smem_bytes() > kSmemLimit[r]) {
        return false;
      }
      if (kSplitTiles[i].head_dim != kHeadDimBuckets[i] || kSplitTiles[i].smem_bytes() > kSmemLimit[r]) {
        return false;
      }
    }
  }
  return true;
}
static_assert(tables_fit(), "a tile's shared memory exceeds its architecture's per-block limit");

// The table row for a compute capability (major * 10 + minor).
constexpr ArchRow arch_row(int arch) {
  if (arch >= 90) { return ArchRow::kSm90; }
  if (arch == 80 || arch == 87) { return ArchRow::kSm80; }
  return ArchRow::kSm86;
}

}  // namespace fa::sm80
