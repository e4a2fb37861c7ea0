// The C ABI that every native backend (csrc_cuda, csrc_rocm) implements.
//
// Why a C ABI and not a torch extension: a library built against no torch headers loads under any
// torch version (see ../shared/DESIGN.md). Python validates every argument once, fills one of the
// params structs below from tensors' data pointers and strides, and calls the backend through
// ctypes. Backends trust the params: they check only what Python cannot know (the device, the
// compiled set) and report failures through a status code plus fa_last_error().
//
// Layout conventions (all strides in elements, the head dimension always contiguous):
//   q, out, dq, dout : (batch, seqlen_q, nheads,   head_dim)
//   k, v, dk, dv     : (batch, seqlen_k, nheads_k, head_dim)
//   varlen (cu_seqlens_* set): batch_stride is ignored, rows of sequence b start at cu_seqlens[b]
//   paged KV (block_table set): k, v are (num_blocks, page_block_size, nheads_k, head_dim) and
//     batch_stride is the stride between pages
//   lse              : float32 (batch, nheads, seqlen_q) contiguous, or (nheads, total_q) in varlen
#ifndef FLASH_ATTN_ABI_H
#define FLASH_ATTN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped on any change to the structs below; Python refuses a library of another version.
#define FA_ABI_VERSION 3

typedef enum {
  FA_OK = 0,
  FA_ERR_INVALID_ARGUMENT = 1,  // params inconsistent (a Python-side validation gap)
  FA_ERR_UNSUPPORTED = 2,       // valid, but not compiled into this library (arch, head dim, dtype)
  FA_ERR_DEVICE = 3,            // the CUDA/HIP runtime reported an error
  FA_ERR_ABI_MISMATCH = 4,      // abi_version or struct_size differ from the library's
} fa_status;

typedef enum { FA_DTYPE_FP16 = 0, FA_DTYPE_BF16 = 1 } fa_dtype;

// Feature bits in fa_problem.flags; each mirrors an environment flag or call argument.
typedef enum {
  FA_FLAG_RTZ = 1u << 0,            // fp32 -> fp16/bf16 rounds toward zero instead of to nearest even
  FA_FLAG_DETERMINISTIC = 1u << 1,  // backward reduces dQ in a fixed order (bitwise reproducible)
  FA_FLAG_PERFORMANCE = 1u << 2,    // backend-defined lower-precision intermediates (README)
} fa_flag;

typedef struct {
  const void* ptr;
  int64_t batch_stride;
  int64_t row_stride;
  int64_t head_stride;
} fa_tensor;

// Everything that describes the attention problem, shared by forward and backward.
typedef struct {
  int32_t dtype;      // fa_dtype of q, k, v, out (and dout, dq, dk, dv)
  int32_t flags;      // fa_flag bits
  int32_t arch;       // compute capability the caller treats the device as (80, 86, 89, 90, ...);
                      // 0 = the device's own. Tile configs follow it (FLASH_ATTENTION_ARCH_OVERRIDE)
  int32_t batch;
  int32_t nheads;
  int32_t nheads_k;   // nheads % nheads_k == 0 (MQA/GQA)
  int32_t head_dim;   // 1..256, any value
  int32_t seqlen_q;   // max over the batch in varlen
  int32_t seqlen_k;   // max over the batch in varlen; capacity of the cache with seqused_k
  const int32_t* cu_seqlens_q;  // (batch + 1) or NULL
  const int32_t* cu_seqlens_k;  // (batch + 1) or NULL
  const int32_t* seqused_k;     // (batch) keys actually used per sequence, or NULL
  const int32_t* leftpad_k;     // (batch) keys skipped at the start of each cache row, or NULL
  const int32_t* kv_batch_idx;  // (batch) row of the KV cache used by each sequence, or NULL
  const int32_t* block_table;   // (batch, max_blocks) page indices, or NULL
  int64_t block_table_batch_stride;
  int32_t page_block_size;      // any value >= 1 when block_table is set
  int32_t window_left;          // -1 = unbounded; causal is window_right = 0
  int32_t window_right;         // masks align bottom-right when seqlen_q != seqlen_k
  float softmax_scale;
  float softcap;                // 0 = off; else scores -> softcap * tanh(scores / softcap)
  const float* alibi_slopes;    // (batch, nheads) or (nheads) float32, or NULL
  int64_t alibi_batch_stride;   // 0 when the slopes are (nheads)
  float dropout_p;              // probability of dropping; 0 = off
  uint64_t rng_seed;            // counter-based RNG key (Philox4x32-10, see reference backend)
  uint64_t rng_offset;
  void* stream;                 // cudaStream_t / hipStream_t
  int32_t total_q;              // varlen: rows of q (cu_seqlens_q[batch]), the lse head stride;
                                // 0 otherwise. The host cannot read it from device memory
} fa_problem;

typedef struct {
  uint32_t abi_version;  // FA_ABI_VERSION
  uint32_t struct_size;  // sizeof(fa_fwd_params)
  fa_problem problem;
  fa_tensor q, k, v;
  fa_tensor out;
  float* lse;
  int32_t num_splits;    // 0 = the backend chooses; 1 = no split-KV
  void* workspace;       // fa_fwd_workspace_size bytes, or NULL when that is 0
} fa_fwd_params;

typedef struct {
  uint32_t abi_version;
  uint32_t struct_size;  // sizeof(fa_bwd_params)
  fa_problem problem;
  fa_tensor q, k, v, out, dout;
  const float* lse;
  fa_tensor dq, dk, dv;
  void* workspace;       // fa_bwd_workspace_size bytes; the backend initialises it itself
} fa_bwd_params;

// Returns FA_ABI_VERSION of the library.
int fa_abi_version(void);
// A JSON object describing what was compiled: {"backend": ..., "archs": [...], "head_dims": [...],
// "dtypes": [...], "directions": [...]}. The string is static.
const char* fa_build_info(void);
// The message of the last failing call on this thread ("" when none).
const char* fa_last_error(void);

// The forward's scratch (split-KV partial results): a function of the problem's shapes, strides,
// scalars, flags and num_splits (and which pointers are NULL), not of pointer values or tensor
// contents, so a caller may ask once per call signature. With cu_seqlens_q set it also follows
// seqlen_q and seqlen_k (the maxima, which change from call to call): ask per call.
int fa_fwd_workspace_size(const fa_fwd_params* params, size_t* bytes);
int fa_fwd(const fa_fwd_params* params);
int fa_bwd_workspace_size(const fa_bwd_params* params, size_t* bytes);
int fa_bwd(const fa_bwd_params* params);

#ifdef __cplusplus
}
#endif

#endif  // FLASH_ATTN_ABI_H
