// Which keys a query row sees (key length, causal / local window aligned bottom-right), at the
// granularity of tiles (to skip or to mask) and of elements; and the score modifiers (softcap,
// ALiBi) that turn a raw q.k into a logit. Forward and backward share all of it, so both see the
// same function of (q, k).
#pragma once

#include <cmath>

#include "params.h"

namespace fa {

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

struct Mask {
  int seqlen_q, seqlen_k;
  int window_left, window_right;  // -1 = unbounded

  // Query row i sees key j iff i + diag - window_left <= j <= i + diag + window_right.
  __device__ int diag() const { return seqlen_k - seqlen_q; }

  // Keys [lo, hi] that query row i sees (none when lo > hi). Per row rather than per element:
  // the element test is then two compares, with no short-circuit branches around each one.
  __device__ void key_range(int i, int& lo, int& hi) const {
    lo = window_left < 0 ? 0 : i + diag() - window_left;
    hi = window_right < 0 ? seqlen_k - 1 : min(seqlen_k - 1, i + diag() + window_right);
  }
  __device__ bool visible(int i, int j) const {
    int lo, hi;
    key_range(i, lo, hi);
    return (j >= lo) & (j <= hi);
  }

  // Key blocks [n_min, n_max) that hold any key visible from query block m_block.
  template <int kBlockM, int kBlockN>
  __device__ void key_blocks(int m_block, int& n_min, int& n_max) const {
    n_min = 0;
    n_max = ceil_div(seqlen_k, kBlockN);
    const int row_lo = m_block * kBlockM;
    const int row_hi = min(row_lo + kBlockM, seqlen_q) - 1;
    if (window_right >= 0) {
      const int last = row_hi + diag() + window_right;
      n_max = min(n_max, last < 0 ? 0 : last / kBlockN + 1);
    }
    if (window_left >= 0) {
      const int first = row_lo + diag() - window_left;
      n_min = first <= 0 ? 0 : first / kBlockN;
    }
  }

  // Query blocks [m_min, m_max) that see any key of key block n_block (a superset is enough:
  // the backward also checks key_blocks per query block).
  template <int kBlockM, int kBlockN>
  __device__ void query_blocks(int n_block, int& m_min, int& m_max) const {
    m_min = 0;
    m_max = ceil_div(seqlen_q, kBlockM);
    const int col_lo = n_block * kBlockN;
    const int col_hi = min(col_lo + kBlockN, seqlen_k) - 1;
    if (window_right >= 0) {
      const int first = col_lo - diag() - window_right;
      m_min = first <= 0 ? 0 : first / kBlockM;
    }
    if (window_left >= 0) {
      const int last = col_hi - diag() + window_left;
      m_max = min(m_max, last < 0 ? 0 : last / kBlockM + 1);
    }
  }

  // Key blocks [lo, hi] that every row of query block m_block sees whole (lo > hi: none); the
  // blocks of [n_min, n_max) outside it are exactly those tile_is_partial names.
  template <int kBlockM, int kBlockN>
  __device__ void full_key_blocks(int m_block, int& lo, int& hi) const {
    const int row_lo = m_block * kBlockM, row_hi = row_lo + kBlockM - 1;
    const int last_col = window_right >= 0 ? min(seqlen_k - 1, row_lo + diag() + window_right) : seqlen_k - 1;
    hi = last_col < 0 ? -1 : (last_col + 1) / kBlockN - 1;
    const int first_col = window_left >= 0 ? row_hi + diag() - window_left : 0;
    lo = first_col <= 0 ? 0 : ceil_div(first_col, kBlockN);
  }

  // Query blocks [lo, hi] whose every row sees key block n_block whole (lo > hi: none); the
  // others are exactly those tile_is_partial names.
  template <int kBlockM, int kBlockN>
  __device__ void full_query_blocks(int n_block, int& lo, int& hi) const {
    const int col_lo = n_block * kBlockN, col_hi = col_lo + kBlockN - 1;
    lo = 0;
    hi = col_hi >= seqlen_k ? -1 : 1 << 30;
    if (window_right >= 0) {  // row_lo >= col_hi - diag - window_right
      const int first_row = col_hi - diag() - window_right;
      lo = first_row <= 0 ? 0 : ceil_div(first_row, kBlockM);
    }
    if (window_left >= 0) {  // row_lo + kBlockM - 1 <= col_lo - diag + window_left
      const int last_row = col_lo - diag() + window_left - (kBlockM - 1);
      hi = min(hi, last_row < 0 ? -1 : last_row / kBlockM);
    }
  }

  // Whether some element of the tile is invisible, so the tile needs the per-element mask.
  template <int kBlockM, int kBlockN>
  __device__ bool tile_is_partial(int m_block, int n_block) const {
    const int row_lo = m_block * kBlockM, row_hi = row_lo + kBlockM - 1;
    const int col_lo = n_block * kBlockN, col_hi = col_lo + kBlockN - 1;
    return col_hi >= seqlen_k || (window_right >= 0 && col_hi > row_lo + diag() + window_right) ||
           (window_left >= 0 && col_lo < row_hi + diag() - window_left);
  }
};

// The order the forward visits key blocks [n_min, n_max) of one query block in: step 0 the last
// block (the prologue loads it; only it can end past seqlen_k), then the other partially masked
// ones (the causal diagonal's, then a local window's left edge), then the whole ones, each group
// from the highest block down. The online softmax does not depend on the order; a loop over the
// whole blocks alone needs no mask code.
struct KeyOrder {
  int n_max, steps;           // steps = n_max - n_min blocks
  int masked_end;             // steps [1, masked_end) are partially masked, [masked_end, steps) whole
  int top_end, bottom_first;  // masked steps below top_end run down from n_max - 2, the rest from bottom_first
  int whole_hi;               // step masked_end's block; whole blocks run down from it

  bool first_masked;          // step 0's block

  template <int kBlockM, int kBlockN>
  __device__ static KeyOrder make(Mask const& mask, int m_block, int n_min, int n_max) {
    KeyOrder o;
    o.n_max = n_max;
    o.steps = n_max - n_min;
    int lo, hi;
    mask.full_key_blocks<kBlockM, kBlockN>(m_block, lo, hi);
    o.first_masked = n_max - 1 < lo || n_max - 1 > hi;
    lo = max(lo, n_min);
    hi = min(hi, n_max - 2);
    if (lo > hi) {  // no whole block below the last: every step masked, top to bottom
      lo = n_min;
      hi = n_min - 1;
    }
    o.top_end = n_max - 1 - hi;  // 1 + the blocks above hi, below the last
    o.bottom_first = lo - 1;
    o.masked_end = o.top_end + (lo - n_min);
    o.whole_hi = hi;
    return o;
  }
  // The block of step i (i < steps); next(i): step i + 1's, or -1 after the last.
  __device__ int masked_block(int i) const { return i < top_end ? n_max - 1 - i : bottom_first - (i - top_end); }
  __device__ int whole_block(int i) const { return whole_hi - (i - masked_end); }
  __device__ int block(int i) const { return i < masked_end ? masked_block(i) : whole_block(i); }
  __device__ int next(int i) const { return i + 1 < steps ? block(i + 1) : -1; }
};

// softcap then ALiBi, in logit units: logit = softcap * tanh(scale * s / softcap) - slope * |dist|.
struct ScoreMod {
  float softmax_scale, softcap, softcap_arg_scale, slope;
  int diag;

  __device__ ScoreMod(AttnParams const& p, int b, int h, int diag_)
      : softmax_scale(p.softmax_scale), softcap(p.softcap), softcap_arg_scale(p.softcap_arg_scale),
        slope(p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.f), diag(diag_) {}

  // dtanh receives d(logit) / d(scale * s) = 1 - tanh^2 (1 without softcap).
  __device__ __forceinline__ float logit(float s, int i, int j, float& dtanh) const {
    float x;
    if (softcap > 0.f) {
      const float t = tanhf(s * softcap_arg_scale);
      x = softcap * t;
      dtanh = 1.f - t * t;
    } else {
      x = s * softmax_scale;
      dtanh = 1.f;
    }
    return x - slope * fabsf(float(i + diag - j));
  }
};

}  // namespace fa
