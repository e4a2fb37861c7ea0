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

  // Whether some element of the tile is invisible, so the tile needs the per-element mask.
  template <int kBlockM, int kBlockN>
  __device__ bool tile_is_partial(int m_block, int n_block) const {
    const int row_lo = m_block * kBlockM, row_hi = row_lo + kBlockM - 1;
    const int col_lo = n_block * kBlockN, col_hi = col_lo + kBlockN - 1;
    return col_hi >= seqlen_k || (window_right >= 0 && col_hi > row_lo + diag() + window_right) ||
           (window_left >= 0 && col_lo < row_hi + diag() - window_left);
  }
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
