// Where one batch entry's rows live and how long its sequences really are (varlen, seqused_k), and
// for the forward's KV-cache calls which cache row holds its keys and from where (kv_batch_idx,
// leftpad_k; paged caches are addressed row by row, sm80/tile_io.h load_paged).
#pragma once

#include "params.h"

namespace fa {

struct SeqInfo {
  int seqlen_q, seqlen_k;  // this sequence's lengths (seqused_k overrides the key length)
  int seqlen_k_rows;       // key rows stored for it: seqlen_k before the seqused_k override
  int64_t q_row0, k_row0;  // first row among all rows: cu_seqlens[b], or b * max length
  bool varlen_q, varlen_k;
  int k_batch;  // the batch entry (cache row) holding the keys: kv_batch_idx[b], else b
  int k_shift;  // leftpad_k[b]: key j is row j + k_shift of that entry (0 without)

  // kv_cache: whether the call may carry kv_batch_idx, leftpad_k or a block table (the forward's
  // full kernel); a compile-time false keeps the other kernels free of the loads.
  __device__ SeqInfo(AttnParams const& p, int b, bool kv_cache = false) {
    varlen_q = p.cu_seqlens_q != nullptr;
    varlen_k = p.cu_seqlens_k != nullptr;
    if (varlen_q) {
      q_row0 = p.cu_seqlens_q[b];
      seqlen_q = (p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]) * p.q_fold;
    } else {
      q_row0 = int64_t(b) * p.seqlen_q;
      seqlen_q = p.seqlen_q;
    }
    if (varlen_k) {
      k_row0 = p.cu_seqlens_k[b];
      seqlen_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    } else {
      k_row0 = int64_t(b) * p.seqlen_k;
      seqlen_k = p.seqlen_k;
    }
    seqlen_k_rows = seqlen_k;
    if (p.seqused_k != nullptr) { seqlen_k = p.seqused_k[b]; }
    k_batch = b;
    k_shift = 0;
    if (kv_cache) {
      if (p.kv_batch_idx != nullptr) { k_batch = p.kv_batch_idx[b]; }
      if (p.leftpad_k != nullptr) {
        k_shift = p.leftpad_k[b];
        seqlen_k -= k_shift;
      }
    }
  }

  // Element offset of (batch b, row 0, head 0) in a query-shaped tensor.
  __device__ int64_t q_offset(TensorRef const& t, int b) const {
    return varlen_q ? q_row0 * t.token_stride : int64_t(b) * t.batch_stride;
  }
  // Element offset of key 0, head 0 of this sequence in a key-shaped tensor (not paged).
  __device__ int64_t k_offset(TensorRef const& t) const {
    return (varlen_k ? k_row0 * t.token_stride : int64_t(k_batch) * t.batch_stride) + int64_t(k_shift) * t.token_stride;
  }
  // Offset of row 0 of (b, h) in an lse-shaped array: (batch, nheads, seqlen_q) when padded,
  // (nheads, total_rows) when varlen.
  __device__ int64_t lse_offset(AttnParams const& p, int b, int h, int64_t total_rows) const {
    return varlen_q ? h * total_rows + q_row0 : (int64_t(b) * p.nheads + h) * p.seqlen_q;
  }
  // Row 0 of (b, h) among a split forward's partial results: (batch, nheads, seqlen_q), varlen or
  // not (seqlen_q is then the longest sequence's).
  __device__ static int64_t accum_offset(AttnParams const& p, int b, int h) {
    return (int64_t(b) * p.nheads + h) * p.seqlen_q;
  }
};

}  // namespace fa
