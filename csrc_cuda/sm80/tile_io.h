// Tile movement shared by the SM80-class kernels: predicated global->shared loads, and GEMMs whose
// operands come from shared memory through ldmatrix (the next k slice loads while this one
// multiplies).
#pragma once

#include <cute/tensor.hpp>

#include "../common/fast_div.h"
#include "../common/params.h"

namespace fa::sm80 {

using namespace cute;

// The (rows, kHeadDim) global tensor of one head of t, starting offset elements into it.
template <class Element, int kHeadDim>
__device__ __forceinline__ auto head_tensor(TensorRef const& t, int64_t offset, int rows) {
  return make_tensor(make_gmem_ptr(static_cast<Element*>(t.ptr) + offset), make_shape(rows, Int<kHeadDim>{}),
                     make_stride(t.row_stride, _1{}));
}

// cp.async of one 16-byte chunk, or 16 zero bytes when ignore is set: the source is then not
// read at all (PTX ignore-src), so it may point past the tensor.
__device__ __forceinline__ void cp_async_chunk(void* smem, const void* gmem, bool ignore) {
  const uint32_t dst = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(dst),
      "l"(gmem), "r"(int(ignore))
      : "memory");
}

// cp.async of a partitioned tile, (CPY, CPY_ROWS, CPY_COLS); chunks whose first row or column is
// out of range are zero-filled by the copy itself, so padding rows and head-dim columns
// contribute zeros. (A separate zeroing store per chunk made ptxas put a store and the copy on
// each chunk's shared address, with three no-op loads between them for the hazard.) Column
// chunks are 8 elements and head_dim is a multiple of 8, so a chunk is either wholly in or
// wholly out. kCheckRows = false: the caller knows every row is in range (a full tile), so no row
// coordinate or predicate stays live across a loop for it. The copy atom only fixes the
// partition: each chunk is one 16-byte cp.async.
template <bool kCheckRows = true, class TiledCopy, class TensorG, class TensorS, class TensorC>
__device__ __forceinline__ void load_tile(TiledCopy const&, TensorG const& src, TensorS&& dst, TensorC const& coord,
                                          int max_rows, int max_cols) {
  static_assert(decltype(size<0>(dst))::value * sizeof_bits_v<typename std::decay_t<TensorS>::value_type> == 128);
#pragma unroll
  for (int m = 0; m < size<1>(dst); ++m) {
    const bool row_ok = !kCheckRows || get<0>(coord(0, m, 0)) < max_rows;
#pragma unroll
    for (int k = 0; k < size<2>(dst); ++k) {
      cp_async_chunk(&dst(0, m, k), &src(0, m, k), !(row_ok && get<1>(coord(0, m, k)) < max_cols));
    }
  }
}

// load_tile for a K or V block of a paged cache: key key0 + r of the sequence (r the tile row) is
// row (key0 + r) % page_size of page table[(key0 + r) / page_size]; t's batch_stride steps pages
// and head_offset selects the head. Rows from max_rows on and columns from max_cols on are
// zero-filled, as in load_tile. Every row's table entry is read before the first copy: the copies'
// memory clobber keeps the compiler from moving a later row's table load above them, so
// interleaved, each row would wait for its own table load in turn (paged decoding ran at half the
// dense cache's speed that way).
template <class TensorS, class TensorC>
__device__ __forceinline__ void load_paged(TensorS&& dst, TensorC const& coord, TensorRef const& t, int64_t head_offset,
                                           const int32_t* table, FastDiv const& page_size, int key0, int max_rows,
                                           int max_cols) {
  using Element = typename std::decay_t<TensorS>::value_type;
  constexpr int kRows = decltype(size<1>(dst))::value;
  int64_t offset[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int r = get<0>(coord(0, m, 0));
    const int key = key0 + r;
    const int index = page_size.div(key);
    const int64_t page = r < max_rows ? table[index] : 0;
    offset[m] = head_offset + page * t.batch_stride + int64_t(key - index * page_size.divisor) * t.row_stride;
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const bool row_ok = get<0>(coord(0, m, 0)) < max_rows;
    const Element* row = static_cast<const Element*>(t.ptr) + offset[m];
#pragma unroll
    for (int k = 0; k < size<2>(dst); ++k) {
      const int col = get<1>(coord(0, m, k));
      cp_async_chunk(&dst(0, m, k), row + col, !(row_ok && col < max_cols));
    }
  }
}

// The reverse of load_tile for a tile staged in shared memory: 16-byte chunks to global memory,
// those whose first row or column is out of range not written.
template <class TensorS, class TensorG, class TensorC>
__device__ __forceinline__ void store_tile(TensorS const& src, TensorG&& dst, TensorC const& coord, int max_rows,
                                           int max_cols) {
  static_assert(decltype(size<0>(dst))::value * sizeof_bits_v<typename std::decay_t<TensorG>::value_type> == 128);
#pragma unroll
  for (int m = 0; m < size<1>(dst); ++m) {
    const bool row_ok = get<0>(coord(0, m, 0)) < max_rows;
#pragma unroll
    for (int k = 0; k < size<2>(dst); ++k) {
      if (row_ok && get<1>(coord(0, m, k)) < max_cols) {
        *reinterpret_cast<uint4*>(&dst(0, m, k)) = *reinterpret_cast<uint4 const*>(&src(0, m, k));
      }
    }
  }
}

// acc += A * B, both operands in shared memory. tCsA/tCsB: the ldmatrix partitions of the smem
// tiles; tCrA/tCrB: the MMA register fragments they fill.
template <class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma, class CopyA, class CopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, FragA& tCrA, FragB& tCrB, SmemA const& tCsA,
                                        SmemB const& tCsB, TiledMma const& mma, CopyA const& copy_a,
                                        CopyB const& copy_b, int tid) {
  Tensor tCrA_view = copy_a.get_thread_slice(tid).retile_D(tCrA);
  Tensor tCrB_view = copy_b.get_thread_slice(tid).retile_D(tCrB);
  constexpr int kSteps = decltype(size<2>(tCrA))::value;
  static_assert(kSteps == decltype(size<2>(tCrB))::value);
  cute::copy(copy_a, tCsA(_, _, 0), tCrA_view(_, _, 0));
  cute::copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
#pragma unroll
  for (int k = 0; k < kSteps; ++k) {
    if (k + 1 < kSteps) {
      cute::copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
      cute::copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    }
    cute::gemm(mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// acc += A * B with A already in registers (P of the forward).
template <class Acc, class FragA, class FragB, class SmemB, class TiledMma, class CopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, FragA const& tCrA, FragB& tCrB, SmemB const& tCsB,
                                        TiledMma const& mma, CopyB const& copy_b, int tid) {
  Tensor tCrB_view = copy_b.get_thread_slice(tid).retile_D(tCrB);
  constexpr int kSteps = decltype(size<2>(tCrA))::value;
  static_assert(kSteps == decltype(size<2>(tCrB))::value);
  cute::copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
#pragma unroll
  for (int k = 0; k < kSteps; ++k) {
    if (k + 1 < kSteps) { cute::copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1)); }
    cute::gemm(mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

}  // namespace fa::sm80
