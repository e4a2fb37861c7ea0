// The kernels' view of one attention call, built once per call by abi_glue.cu from the C ABI
// structs. Everything a kernel would otherwise recompute per thread (log2-domain scales, the
// dropout threshold, the query-head group size) is precomputed on the host here.
#pragma once

#include <cstdint>

#include "fast_div.h"

namespace fa {

// A (batch, row, head, dim) tensor; strides in elements, the head dimension contiguous.
// token_stride: between a varlen sequence's tokens (rows start at cu_seqlens[b] tokens); it is the
// row stride except where fold_query_heads (abi_glue.cu) made one token's query heads the rows.
struct TensorRef {
  void* ptr;
  int64_t batch_stride;
  int64_t row_stride;
  int64_t head_stride;
  int64_t token_stride;
};

struct AttnParams {
  TensorRef q, k, v, out;
  float* lse;  // (batch, nheads, seqlen_q), or (nheads, total_q) when cu_seqlens_q is set
  int64_t total_q;  // varlen: rows of q, the lse head stride
  // Where fold_query_heads (abi_glue.cu) made a varlen decoding step's query heads the rows of a
  // block: the rows per token (the group; else 1), and the stride between a block's lse rows
  // (total_q; else 1). Forward only.
  int q_fold;
  int64_t lse_row_stride;

  int batch, nheads, nheads_k;
  int group;     // nheads / nheads_k: query heads that share one key/value head
  int head_dim;  // the caller's head dimension; kernels are compiled for a bucket >= head_dim
  int seqlen_q, seqlen_k;  // maxima over the batch
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqused_k;
  // KV cache (forward only): the cache row of each sequence, the keys skipped at its start, and a
  // paged cache's page table (k, v then (pages, page_size, nheads_k, head_dim), batch_stride
  // between pages; any page size)
  const int32_t* kv_batch_idx;
  const int32_t* leftpad_k;
  const int32_t* block_table;
  int64_t block_table_batch_stride;
  FastDiv page_size;

  int window_left, window_right;  // -1 = unbounded
  int wave_group;  // the grid's order (common/schedule.h): pairs per group, 0 or 1 pair by pair

  // Scores: without a score modifier the softmax runs on raw q.k with exp2 and scale_log2;
  // with softcap or ALiBi the scores are first turned into logits, then exp2 uses log2(e).
  bool score_mod;
  float softmax_scale;
  float scale_log2;         // softmax_scale * log2(e)
  float softcap;            // 0 = off
  float softcap_arg_scale;  // softmax_scale / softcap
  const float* alibi_slopes;
  int64_t alibi_batch_stride;

  bool dropout;
  uint32_t drop_threshold;  // a Philox word below it drops the element
  float rp_dropout;         // 1 / (1 - dropout_p)
  uint32_t seed_lo, seed_hi, offset_lo;

  bool rtz;  // fp32 -> 16-bit conversions round toward zero

  // Split-KV forward (sm80/fwd_split.h), num_splits >= 1 (0: the unsplit kernels): each query
  // block's key blocks are dealt to num_splits blocks, which write their normalised fp32 O and lse
  // to o_accum / lse_accum (split-major, then (batch, nheads, seqlen_q) rows, varlen or not); a
  // combine kernel merges them into out and lse.
  int num_splits;
  float* o_accum;    // (num_splits, lse_rows, head-dim bucket)
  float* lse_accum;  // (num_splits, lse_rows)
  int64_t lse_rows;  // batch * nheads * seqlen_q
  // The combine kernel launches while the split blocks finish and waits for them itself
  // (programmatic dependent launch, sm90 and newer devices).
  bool dependent_launch;
};

struct BwdParams : AttnParams {
  TensorRef dout, dq, dk, dv;
  float* dsum;          // D = rowsum(dO * O), indexed like lse with total rows = rows_q_bound
  float* dq_accum;      // fp32 dQ sum in per-query-block chunks (sm80/bwd_dq_accum.h), zeroed before the main kernel
  int32_t* dq_locks;    // (batch, nheads, m_blocks) turn counters, deterministic mode only
  int64_t zeroed_words;  // 32-bit words from dq_accum on (the sum, then the counters) the dsum kernel zeroes; a multiple of 4
  float* dk_accum;      // (rows_k_bound, nheads, kHeadDim) fp32 per query head when group > 1
  float* dv_accum;
  int64_t rows_q_bound;  // batch * seqlen_q: an upper bound of total_q in varlen
  int m_blocks;          // query blocks of the longest sequence (lock table width)
  bool deterministic;
};

}  // namespace fa
