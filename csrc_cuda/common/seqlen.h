// Where one batch entry's rows live and how long its sequences really are (varlen, seqused_k).
#pragma once

#include "params.h"

namespace fa {

struct SeqInfo {
  int seqlen_q, seqlen_k;  // this sequence's lengths (seqused_k overrides the key length)
  int seqlen_k_rows;       // key rows stored for it: seqlen_k before the seqused_k override
  int64_t q_row0, k_row0;  // first row among all rows: cu_seqlens[b], or b * max length
  bool varlen_q, varlen_k;

  __device__ SeqInfo(AttnParams const& p, int b) {
    varlen_q = p.cu_seqlens_q != nullptr;
    varlen_k = p.cu_seqlens_k != nullptr;
    if (varlen_q) {
      q_row0 = p.cu_seqlens_q[b];
      seqlen_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
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
  }

  // Element offset of (batch b, row 0, head 0) in a query-shaped tensor.
  __device__ int64_t q_offset(TensorRef const& t, int b) const {
    return varlen_q ? q_row0 * t.row_stride : int64_t(b) * t.batch_stride;
  }
  __device__ int64_t k_offset(TensorRef const& t, int b) const {
    return varlen_k ? k_row0 * t.row_stride : int64_t(b) * t.batch_stride;
  }
  // Offset of row 0 of (b, h) in an lse-shaped array: (batch, nheads, seqlen_q) when padded,
  // (nheads, total_rows) when varlen.
  __device__ int64_t lse_offset(AttnParams const& p, int b, int h, int64_t total_rows) const {
    return varlen_q ? h * total_rows + q_row0 : (int64_t(b) * p.nheads + h) * p.seqlen_q;
  }
};

}  // namespace fa
