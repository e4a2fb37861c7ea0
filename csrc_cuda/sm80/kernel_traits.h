// Types shared by the SM80-class kernels: the MMA atom per element type, swizzled shared-memory
// tiles, the cp.async global->shared copy, and the ldmatrix atoms.
#pragma once

#include <cute/tensor.hpp>

#include "tile_config.h"

namespace fa::sm80 {

using namespace cute;

template <class Element>
struct MmaAtomFor;
template <>
struct MmaAtomFor<cute::half_t> {
  using type = MMA_Atom<SM80_16x8x16_F32F16F16F32_TN>;
};
template <>
struct MmaAtomFor<cute::bfloat16_t> {
  using type = MMA_Atom<SM80_16x8x16_F32BF16BF16F32_TN>;
};

// A warp grid of WarpsM x WarpsN m16n8k16 atoms; each warp covers 16 columns per step so that
// one ldmatrix.x4 feeds both n8 halves of a B operand.
template <class Element, int WarpsM, int WarpsN>
using WarpGridMma = TiledMMA<typename MmaAtomFor<Element>::type, Layout<Shape<Int<WarpsM>, Int<WarpsN>, _1>>,
                             Tile<Int<16 * WarpsM>, Int<16 * WarpsN>, _16>>;

// A (Rows x Cols) 16-bit tile, row-major, XOR-swizzled in 8-row atoms of 64 (or 32) columns so
// that ldmatrix (plain or transposed) reads 8 rows of 16 bytes without bank conflicts.
template <int Rows, int Cols>
struct SmemTile {
  static constexpr int kAtomCols = Cols % 64 == 0 ? 64 : 32;
  static_assert(Cols % kAtomCols == 0 && Rows % 8 == 0);
  using Atom = decltype(composition(Swizzle<kAtomCols == 64 ? 3 : 2, 3, 3>{},
                                    Layout<Shape<_8, Int<kAtomCols>>, Stride<Int<kAtomCols>, _1>>{}));
  using Layout = decltype(tile_to_shape(Atom{}, Shape<Int<Rows>, Int<Cols>>{}));
  // The same memory seen as (Cols x Rows), for operands read transposed.
  using LayoutT = decltype(composition(Layout{}, make_layout(Shape<Int<Cols>, Int<Rows>>{}, GenRowMajor{})));
  // LayoutT without the swizzle: only its shape matters, to size register fragments.
  using LayoutTNoSwizzle = decltype(get_nonswizzle_portion(LayoutT{}));
};

// Global -> shared, 16 bytes (8 elements) per thread per copy, rows of one swizzle atom width.
template <class Element, int Threads, int Cols>
struct GmemTileCopy {
  static constexpr int kThreadsPerRow = SmemTile<8, Cols>::kAtomCols / 8;
  static_assert(Threads % kThreadsPerRow == 0);
  using type = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      Layout<Shape<Int<Threads / kThreadsPerRow>, Int<kThreadsPerRow>>, Stride<Int<kThreadsPerRow>, _1>>{},
      Layout<Shape<_1, _8>>{}));
};

template <class Element>
using LdsmAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;  // operand stored K-contiguous
template <class Element>
using LdsmTransAtom = Copy_Atom<SM75_U16x8_LDSM_T, Element>;  // operand stored M/N-contiguous

template <int HeadDim, int BlockM, int BlockN, int Warps, int KVStages, class Element_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim, kBlockM = BlockM, kBlockN = BlockN, kWarps = Warps;
  static constexpr int kKVStages = KVStages;
  static_assert(KVStages == 1 || KVStages == 2);
  static constexpr int kThreads = 32 * Warps;
  // Warps split only the query rows, so each row's softmax stays inside one warp.
  using Mma = WarpGridMma<Element, Warps, 1>;
  static_assert(kBlockM % (16 * Warps) == 0, "each warp owns a multiple of 16 query rows");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0);
  using SmemQ = SmemTile<kBlockM, kHeadDim>;
  using SmemKV = SmemTile<kBlockN, kHeadDim>;
  using GmemCopy = typename GmemTileCopy<Element, kThreads, kHeadDim>::type;
  static_assert(sizeof(Element) == 2);
  static constexpr int kSmemBytes = int(fwd_smem_bytes(kBlockM, kBlockN, kHeadDim, kKVStages));
};

template <int HeadDim, int BlockM, int BlockN, int Warps, int SdpWarpsM, int DkvWarpsN, int DqWarpsM, int DqPasses,
          int QStages, class Element_>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim, kBlockM = BlockM, kBlockN = BlockN, kWarps = Warps;
  static constexpr int kThreads = 32 * Warps, kDqPasses = DqPasses, kDqCols = HeadDim / DqPasses;
  static constexpr int kQStages = QStages;
  static_assert(QStages == 1 || QStages == 2);
  using MmaSdP = WarpGridMma<Element, SdpWarpsM, Warps / SdpWarpsM>;    // (kBlockM x kBlockN)
  using MmaDkv = WarpGridMma<Element, DkvWarpsN, Warps / DkvWarpsN>;    // (kBlockN x kHeadDim)
  using MmaDq = WarpGridMma<Element, DqWarpsM, Warps / DqWarpsM>;       // (kBlockM x kDqCols)
  static_assert(kBlockM % (16 * SdpWarpsM) == 0 && kBlockN % (16 * (Warps / SdpWarpsM)) == 0);
  static_assert(kBlockN % (16 * DkvWarpsN) == 0 && kHeadDim % (16 * (Warps / DkvWarpsN)) == 0);
  static_assert(kBlockM % (16 * DqWarpsM) == 0 && kDqCols % (16 * (Warps / DqWarpsM)) == 0);
  using SmemQ = SmemTile<kBlockM, kHeadDim>;   // each Q buffer and dO
  using SmemKV = SmemTile<kBlockN, kHeadDim>;  // K and V
  using SmemPdS = SmemTile<kBlockM, kBlockN>;  // P and dS
  using GmemCopy = typename GmemTileCopy<Element, kThreads, kHeadDim>::type;
  static_assert(sizeof(Element) == 2);
  static constexpr int kSmemBytes = int(bwd_smem_bytes(kBlockM, kBlockN, kHeadDim, kQStages));
};

}  // namespace fa::sm80
