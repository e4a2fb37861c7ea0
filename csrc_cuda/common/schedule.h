// The order in which a grid hands out the work of a causal call. Under a causal mask a block's
// work depends on its position: forward query block m sees m + 1 key blocks' worth, backward key
// block n is seen by the query blocks from n on. Run (batch, head) pair by pair, heaviest block
// first, the grid ends ragged: the last pairs' heavy blocks start late and finish alone.
//
// Blocks start in launch order, each on the first free slot. When a group of pairs whose blocks
// number the slots the device holds at once (or a whole multiple) is launched rank by rank,
// heaviest first across the group, the slot freed first (the lightest block) takes the next
// group's heaviest block, the last one freed its lightest: every slot's work pairs up to the same
// sum, wave after wave. On the H100 (benchmarks/results runs hd, he) the causal forward gained
// 4-9 % at d 64-256 from 2k to 4k (d 128 and d 64 at 16k too), the causal backward 2-5 % at 2k
// and 4k. The fit matters: groups that overfilled the 264 slots by 3 %, or filled 1.5 waves, ran
// slower than pair by pair, so a group is used only where it fills whole waves to within 5 %. K
// and V of the pairs in a group stay in L2, as they do pair by pair.
#pragma once

#include <cstdint>

#include "launch.h"
#include "params.h"

namespace fa {

// Whether blocks' work differs along the grid: a causal mask or a right window without a left
// one. Varlen calls too (run hk: packed batches of equal lengths +3-14 % forward, +2-5 % forward
// and backward; of mixed lengths the same or better).
inline bool causal_like(AttnParams const& p) { return p.window_right >= 0 && p.window_left < 0; }

// Pairs per group, or 0 (pair by pair) when no group of up to 4 waves fills its waves to within
// 5 %. ranks: blocks per pair; slots: blocks the device holds at once.
inline int wave_group(int ranks, int pairs, int slots) {
  if (ranks < 2 || pairs < 2 || slots < ranks) { return 0; }
  for (int waves = 1; waves <= 4; ++waves) {
    const int group = waves * slots / ranks;
    if (int64_t(group) * ranks * 20 >= int64_t(waves) * slots * 19) { return group; }
  }
  return 0;
}

// Launch-order block id -> (rank, pair) for a group of 2 or more: rank 0 is a pair's heaviest
// block. A pair's blocks still start in rank order (the deterministic backward relies on it).
__device__ __forceinline__ void wave_order(int id, int ranks, int pairs, int group, int& rank, int& pair) {
  const int first = id / (group * ranks) * group;
  const int n = min(group, pairs - first);  // the last group may be short
  const int j = id - first * ranks;
  rank = j / n;
  pair = first + j % n;
}

// Launches a main kernel whose grid is (ranks, heads, batch entries), in wave groups where the
// call is causal_like.
template <auto Kernel, class Params>
cudaError_t launch_in_waves(dim3 grid, int threads, int smem_bytes, Params const& p, cudaStream_t stream) {
  if (!causal_like(p)) { return launch_with_smem<Kernel>(grid, threads, smem_bytes, p, stream); }
  Params ordered = p;
  ordered.wave_group = wave_group(grid.x, grid.y * grid.z, resident_blocks<Kernel>(threads, smem_bytes));
  return launch_with_smem<Kernel>(grid, threads, smem_bytes, ordered, stream);
}

}  // namespace fa
