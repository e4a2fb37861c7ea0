// The C ABI of dispatch/include/flash_attn_abi.h: checks what Python cannot know (the device, the
// compiled set, this backend's alignment needs), turns the ABI structs into kernel params, plans
// the split-KV and backward workspaces, and reports failures through a status plus fa_last_error().
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>

#include "flash_attn_abi.h"
#include "features.h"
#include "mask.h"
#include "params.h"
#include "registry.h"

namespace fa {
namespace {

thread_local std::string g_last_error;

int fail(int status, std::string message) {
  g_last_error = std::move(message);
  return status;
}

struct DeviceFacts {
  int arch;       // compute capability, major * 10 + minor
  int smem_optin; // bytes of shared memory one block may opt into
  int sms;        // multiprocessors (the split-KV choice)
  int smem_per_sm;
};

// Queried once per device: the attribute calls cost microseconds each.
cudaError_t device_facts(DeviceFacts& facts) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> arch_cache[kMaxDevices];
  static std::atomic<int> smem_cache[kMaxDevices];
  static std::atomic<int> sms_cache[kMaxDevices];
  static std::atomic<int> smem_sm_cache[kMaxDevices];
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) { return err; }
  if (device < kMaxDevices && arch_cache[device].load(std::memory_order_acquire) != 0) {
    facts = {arch_cache[device].load(std::memory_order_relaxed), smem_cache[device].load(std::memory_order_relaxed),
             sms_cache[device].load(std::memory_order_relaxed), smem_sm_cache[device].load(std::memory_order_relaxed)};
    return cudaSuccess;
  }
  int major = 0, minor = 0, smem = 0, sms = 0, smem_sm = 0;
  if ((err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)) != cudaSuccess) {
    return err;
  }
  facts = {major * 10 + minor, smem, sms, smem_sm};
  if (device < kMaxDevices) {
    smem_cache[device].store(smem, std::memory_order_relaxed);
    sms_cache[device].store(sms, std::memory_order_relaxed);
    smem_sm_cache[device].store(smem_sm, std::memory_order_relaxed);
    arch_cache[device].store(facts.arch, std::memory_order_release);
  }
  return cudaSuccess;
}

// The kernels move 16-byte chunks of 8 elements: head_dim, every stride used and every base
// pointer must allow that. native.py pads or copies inputs that do not.
bool aligned(fa_tensor const& t, bool varlen) {
  return reinterpret_cast<uintptr_t>(t.ptr) % 16 == 0 && t.row_stride % 8 == 0 && t.head_stride % 8 == 0 &&
         (varlen || t.batch_stride % 8 == 0);
}

TensorRef ref(fa_tensor const& t) {
  return {const_cast<void*>(t.ptr), t.batch_stride, t.row_stride, t.head_stride, t.row_stride};
}

struct Resolved {
  sm80::ArchRow row;
  int bucket;
  KernelEntry const* entry;
  int sms, smem_per_sm;
  int device_arch;
};

// Validates the problem against this library and finds the launcher; returns FA_OK or a status
// with g_last_error set.
int resolve(fa_problem const& pr, bool backward, Resolved& out) {
  const bool cache = pr.block_table || pr.leftpad_k || pr.kv_batch_idx;
  if (backward && cache) {
    return fail(FA_ERR_UNSUPPORTED, "the cuda backward has no KV-cache addressing (block_table, leftpad_k, kv_batch_idx)");
  }
  if (pr.block_table && pr.page_block_size < 1) {
    return fail(FA_ERR_INVALID_ARGUMENT, "page_block_size must be >= 1 with a block_table (got " +
                                             std::to_string(pr.page_block_size) + ")");
  }
  if (pr.block_table && !pr.seqused_k && !pr.cu_seqlens_k) {
    return fail(FA_ERR_INVALID_ARGUMENT,
                "block_table is set without seqused_k or cu_seqlens_k: a paged call must give each sequence's key count");
  }
  if (pr.kv_batch_idx && (pr.block_table || pr.cu_seqlens_k)) {
    return fail(FA_ERR_UNSUPPORTED, "kv_batch_idx selects a row of a dense cache: not with block_table or cu_seqlens_k");
  }
  if (pr.leftpad_k && pr.cu_seqlens_k) {
    return fail(FA_ERR_UNSUPPORTED, "leftpad_k shifts a cache row: not with cu_seqlens_k");
  }
  if (pr.dtype != FA_DTYPE_FP16 && pr.dtype != FA_DTYPE_BF16) { return fail(FA_ERR_INVALID_ARGUMENT, "unknown dtype"); }
  if (pr.head_dim < 1 || pr.head_dim > 256) { return fail(FA_ERR_INVALID_ARGUMENT, "head_dim must be in 1..256"); }
  if (pr.head_dim % 8 != 0) {
    return fail(FA_ERR_UNSUPPORTED, "the cuda backend needs head_dim % 8 == 0 (the binding pads other sizes)");
  }
  if (pr.nheads_k < 1 || pr.nheads % pr.nheads_k != 0) {
    return fail(FA_ERR_INVALID_ARGUMENT, "nheads must be a multiple of nheads_k");
  }
  if (!(pr.dropout_p >= 0.f && pr.dropout_p < 1.f)) { return fail(FA_ERR_INVALID_ARGUMENT, "dropout_p must be in [0, 1)"); }

  DeviceFacts dev{};
  const cudaError_t err = device_facts(dev);
  if (err != cudaSuccess) { return fail(FA_ERR_DEVICE, std::string("CUDA: ") + cudaGetErrorString(err)); }
  const int arch = pr.arch != 0 ? pr.arch : dev.arch;
  if (arch < 80 || dev.arch < 80) {
    return fail(FA_ERR_UNSUPPORTED, "the cuda backend needs compute capability 8.0 or newer (asked for " +
                                        std::to_string(arch) + ", device " + std::to_string(dev.arch) + ")");
  }
  out.row = sm80::arch_row(arch);
  out.sms = dev.sms;
  out.smem_per_sm = dev.smem_per_sm;
  out.device_arch = dev.arch;
  // The smallest compiled bucket that holds head_dim (its other columns zero-filled): a build
  // narrowed by FLASH_ATTENTION_HEAD_DIMS serves the head dims below each of its buckets, as its
  // build info tells the dispatcher.
  out.entry = nullptr;
  for (int i = sm80::bucket_index(pr.head_dim); i >= 0 && i < 6 && !out.entry; ++i) {
    for (int j = 0; j < kNumKernels; ++j) {
      KernelEntry const& e = kKernels[j];
      if (e.head_dim == sm80::kHeadDimBuckets[i] && e.dtype == pr.dtype && (backward ? e.bwd != nullptr : e.fwd != nullptr)) {
        out.entry = &e;
      }
    }
  }
  if (!out.entry) {
    return fail(FA_ERR_UNSUPPORTED, std::string(backward ? "backward" : "forward") + " for head_dim " +
                                        std::to_string(pr.head_dim) + (pr.dtype == FA_DTYPE_BF16 ? " bf16" : " fp16") +
                                        " was not compiled into this library (FLASH_ATTENTION_HEAD_DIMS, "
                                        "FLASH_ATTENTION_DTYPES, FLASH_ATTENTION_DIRECTIONS at build time)");
  }
  out.bucket = out.entry->head_dim;
  const size_t smem = backward ? sm80::bwd_tile(out.row, out.bucket).smem_bytes()
                               : sm80::fwd_tile(out.row, out.bucket).smem_bytes();
  if (smem > size_t(dev.smem_optin)) {
    return fail(FA_ERR_UNSUPPORTED, "the sm" + std::to_string(arch) + " tile for head_dim " + std::to_string(out.bucket) +
                                        " needs " + std::to_string(smem) + " bytes of shared memory; the device allows " +
                                        std::to_string(dev.smem_optin));
  }
  return FA_OK;
}

void fill_problem(fa_problem const& pr, AttnParams& p) {
  p.batch = pr.batch;
  p.nheads = pr.nheads;
  p.nheads_k = pr.nheads_k;
  p.group = pr.nheads / pr.nheads_k;
  p.head_dim = pr.head_dim;
  p.seqlen_q = pr.seqlen_q;
  p.seqlen_k = pr.seqlen_k;
  p.total_q = pr.total_q;
  p.q_fold = 1;
  p.lse_row_stride = 1;
  p.cu_seqlens_q = pr.cu_seqlens_q;
  p.cu_seqlens_k = pr.cu_seqlens_k;
  p.seqused_k = pr.seqused_k;
  p.kv_batch_idx = pr.kv_batch_idx;
  p.leftpad_k = pr.leftpad_k;
  p.block_table = pr.block_table;
  p.block_table_batch_stride = pr.block_table_batch_stride;
  p.page_size = FastDiv::of(pr.block_table ? pr.page_block_size : 0);
  p.window_left = pr.window_left;
  p.window_right = pr.window_right;
  p.softmax_scale = pr.softmax_scale;
  p.scale_log2 = pr.softmax_scale * float(M_LOG2E);
  p.softcap = pr.softcap;
  p.softcap_arg_scale = pr.softcap > 0.f ? pr.softmax_scale / pr.softcap : 0.f;
  p.alibi_slopes = pr.alibi_slopes;
  p.alibi_batch_stride = pr.alibi_batch_stride;
  p.score_mod = pr.softcap > 0.f || pr.alibi_slopes != nullptr;
  p.dropout = pr.dropout_p > 0.f;
  p.drop_threshold = uint32_t(std::fmin(std::floor(double(pr.dropout_p) * 4294967296.0), 4294967295.0));
  p.rp_dropout = 1.f / (1.f - pr.dropout_p);
  p.seed_lo = uint32_t(pr.rng_seed);
  p.seed_hi = uint32_t(pr.rng_seed >> 32);
  p.offset_lo = uint32_t(pr.rng_offset);
  p.rtz = (pr.flags & FA_FLAG_RTZ) != 0;
}

// A decoding step's query heads of one key head as the rows of one query block (FlashAttention-2's
// swap): with one query per sequence, a group of g heads runs g rows in one block, which reads each
// K/V block once, instead of one row in each of g blocks. q's heads are then rows (row stride = the
// head stride); the lse layout (batch, nheads, 1) is the same memory as (batch, nheads_k, g). A
// varlen call whose longest sequence has one query (transformers' padded batch decoding) folds
// too: its sequences have g rows or none (q_fold), and its lse (nheads, total_q) is read as
// (nheads_k, g rows total_q apart, total_q). Not with what depends on the query head or position:
// ALiBi, dropout, a left window; a causal or right window over one query already sees every key.
void fold_query_heads(AttnParams& p) {
  if (p.seqlen_q != 1 || p.group == 1 || p.alibi_slopes || p.dropout || p.window_left >= 0) { return; }
  for (TensorRef* t : {&p.q, &p.out}) {
    t->row_stride = t->head_stride;
    t->head_stride *= p.group;
  }
  if (p.cu_seqlens_q) {
    p.q_fold = p.group;
    p.lse_row_stride = p.total_q;
    p.total_q *= p.group;
  }
  p.seqlen_q = p.group;
  p.nheads = p.nheads_k;
  p.group = 1;
  p.window_right = -1;
}

// Split-KV blocks per query block. Calls with more queries than one split tile holds split only
// where the plain grid fills less than 0.8 of the SMs; calls with fewer (decoding) always weigh
// the split tile's waves, since the plain tile computes 128 rows for their few (batch 16, 2k keys:
// 66 us unsplit, 54 with 2 splits; run eh). Among the candidates the fewest splits win whose blocks
// fill their last wave to within 85 % of the best fill, counting the waves in split blocks
// resident at once (two per SM: up to 255 registers of 128 threads, fewer where shared memory
// allows fewer). A wave's fill decides a decoding step's time:
// on the H100, 8 sequences x 8 key heads over 16k keys took 187 us with 4 splits (256 blocks, one
// wave) and 274 us with 5 (320: a second wave of 56; benchmarks/results run eb). At least two key
// blocks per split. Varlen calls count every sequence at the longest one's lengths. Not with
// dropout. `requested` (the API's num_splits) > 0 overrides the choice, within the key blocks
// there are.
int choose_splits(AttnParams const& p, int requested, Resolved const& r) {
  if (requested == 1 || p.dropout || p.batch <= 0 || p.nheads <= 0 || p.seqlen_q <= 0 || p.seqlen_k <= 0) {
    return 1;
  }
  const sm80::FwdTile split = sm80::split_tile(r.bucket);
  const int key_blocks = ceil_div(p.seqlen_k, split.block_n);
  const int most = std::min({sm80::kMaxSplits, key_blocks, 65535 / std::max(p.batch, 1)});
  if (requested > 1) { return std::max(1, std::min(requested, most)); }
  const int64_t heads = int64_t(p.batch) * p.nheads;
  if (p.seqlen_q > split.block_m &&
      heads * ceil_div(p.seqlen_q, sm80::fwd_tile(r.row, r.bucket).block_m) * 5 >= int64_t(r.sms) * 4) {
    return 1;
  }
  const int64_t blocks = heads * ceil_div(p.seqlen_q, split.block_m);
  const int per_sm = std::max(1, std::min(2, r.smem_per_sm / int(split.smem_bytes())));
  const double slots = double(r.sms) * per_sm;
  auto fill = [&](int s) {
    const double waves = double(blocks) * s / slots;
    return waves / std::ceil(waves);
  };
  // s splits give each ceil(key_blocks / s) blocks; an s that does not change that only adds blocks
  auto distinct = [&](int s) { return s == 1 || ceil_div(key_blocks, s) != ceil_div(key_blocks, s - 1); };
  const int last = std::max(1, std::min(most, key_blocks / 2));
  double best = 0.0;
  for (int s = 1; s <= last; ++s) {
    if (distinct(s)) { best = std::max(best, fill(s)); }
  }
  for (int s = 1; s <= last; ++s) {
    if (distinct(s) && fill(s) >= 0.85 * best) { return s; }
  }
  return 1;
}

struct FwdPlan {
  AttnParams p;  // pointers to q, k, v, out, lse and the workspace still to set
  size_t o_accum, lse_accum, bytes;
};

FwdPlan plan_fwd(fa_fwd_params const& prm, Resolved const& r) {
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  FwdPlan w{};
  fill_problem(prm.problem, w.p);
  w.p.q = ref(prm.q);
  w.p.k = ref(prm.k);
  w.p.v = ref(prm.v);
  w.p.out = ref(prm.out);
  const bool decoding = w.p.seqlen_q == 1;  // one query per sequence, before the fold
  fold_query_heads(w.p);
  const int splits = choose_splits(w.p, prm.num_splits, r);
  // Calls with queries for one split tile run the split kernels even unsplit where they need the
  // full kernel (cache addressing, softcap, ALiBi, RTZ): its 4-warp blocks fit two per SM where
  // the full kernel's 8-warp ones fit one (paged decoding at batch 32 ran at 1.1 TB/s in one; run
  // ec); and where they decode: the 64-row tile wastes less than the plain kernel's 128 rows on a
  // step's few (run gh: 0-6 % faster; there 64-query calls, not decoding, were 1.4-4.3x slower).
  const bool small = (Features::any(w.p) || decoding) && !w.p.dropout &&
                     w.p.seqlen_q <= sm80::split_tile(r.bucket).block_m;
  w.p.num_splits = splits > 1 || small ? splits : 0;
  if (w.p.num_splits > 0) {
    w.p.dependent_launch = r.device_arch >= 90;
    w.p.lse_rows = int64_t(w.p.batch) * w.p.nheads * w.p.seqlen_q;
    const size_t rows = size_t(w.p.num_splits) * w.p.lse_rows;
    w.o_accum = 0;
    w.lse_accum = align(rows * r.bucket * sizeof(float));
    w.bytes = w.lse_accum + align(rows * sizeof(float));
  }
  return w;
}

struct BwdWorkspace {
  size_t dsum, dq_accum, dq_locks, dk_accum, dv_accum, bytes;
  size_t zeroed_end;  // [dq_accum, zeroed_end) is zeroed before the main kernel: the sum and the counters
};

BwdWorkspace plan_bwd(fa_problem const& pr, int bucket, sm80::ArchRow row) {
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t rows_q = size_t(pr.batch) * pr.seqlen_q, rows_k = size_t(pr.batch) * pr.seqlen_k;
  const bool grouped = pr.nheads != pr.nheads_k;
  const bool deterministic = (pr.flags & FA_FLAG_DETERMINISTIC) != 0;
  const int m_blocks = ceil_div(pr.seqlen_q, sm80::bwd_tile(row, bucket).block_m);
  BwdWorkspace w{};
  size_t at = 0;
  w.dsum = at;
  at += align(rows_q * pr.nheads * sizeof(float));
  w.dq_accum = at;
  at += align(sm80::dq_accum_rows(rows_q, pr.batch, sm80::bwd_tile(row, bucket).block_m) * pr.nheads * bucket *
               sizeof(float));
  w.dq_locks = at;
  at += deterministic ? align(size_t(pr.batch) * pr.nheads * m_blocks * sizeof(int32_t)) : 0;
  w.zeroed_end = at;
  w.dk_accum = at;
  at += grouped ? align(rows_k * pr.nheads * bucket * sizeof(float)) : 0;
  w.dv_accum = at;
  at += grouped ? align(rows_k * pr.nheads * bucket * sizeof(float)) : 0;
  w.bytes = at;
  return w;
}

template <class Params>
int check_header(Params const* prm) {
  if (!prm) { return fail(FA_ERR_INVALID_ARGUMENT, "params is NULL"); }
  if (prm->abi_version != FA_ABI_VERSION || prm->struct_size != sizeof(Params)) {
    return fail(FA_ERR_ABI_MISMATCH, "params abi_version/struct_size differ from the library's (abi " +
                                         std::to_string(FA_ABI_VERSION) + ", size " + std::to_string(sizeof(Params)) + ")");
  }
  return FA_OK;
}

int launched(cudaError_t err) {
  if (err != cudaSuccess) { return fail(FA_ERR_DEVICE, std::string("CUDA: ") + cudaGetErrorString(err)); }
  g_last_error.clear();
  return FA_OK;
}

}  // namespace
}  // namespace fa

using namespace fa;

extern "C" int fa_abi_version(void) { return FA_ABI_VERSION; }
extern "C" const char* fa_build_info(void) { return kBuildInfo; }
extern "C" const char* fa_last_error(void) { return g_last_error.c_str(); }

extern "C" int fa_fwd_workspace_size(const fa_fwd_params* prm, size_t* bytes) {
  if (int s = check_header(prm)) { return s; }
  Resolved r{};
  if (int s = resolve(prm->problem, /*backward=*/false, r)) { return s; }
  *bytes = plan_fwd(*prm, r).bytes;  // 0 unless the keys are split
  return FA_OK;
}

extern "C" int fa_fwd(const fa_fwd_params* prm) {
  if (int s = check_header(prm)) { return s; }
  fa_problem const& pr = prm->problem;
  Resolved r{};
  if (int s = resolve(pr, /*backward=*/false, r)) { return s; }
  const bool varlen_q = pr.cu_seqlens_q != nullptr, varlen_k = pr.cu_seqlens_k != nullptr;
  if (!aligned(prm->q, varlen_q) || !aligned(prm->out, varlen_q) || !aligned(prm->k, varlen_k) ||
      !aligned(prm->v, varlen_k)) {
    return fail(FA_ERR_UNSUPPORTED, "the cuda backend needs 16-byte aligned pointers and strides that are multiples of 8");
  }
  if (pr.batch == 0 || pr.seqlen_q == 0 || pr.nheads == 0) { return FA_OK; }
  FwdPlan w = plan_fwd(*prm, r);
  if (w.bytes > 0 && !prm->workspace) {
    return fail(FA_ERR_INVALID_ARGUMENT, "this forward splits the keys over " + std::to_string(w.p.num_splits) +
                                             " blocks and needs fa_fwd_workspace_size() bytes of workspace; workspace is NULL");
  }
  w.p.lse = prm->lse;
  char* ws = static_cast<char*>(prm->workspace);
  w.p.o_accum = w.bytes ? reinterpret_cast<float*>(ws + w.o_accum) : nullptr;
  w.p.lse_accum = w.bytes ? reinterpret_cast<float*>(ws + w.lse_accum) : nullptr;
  return launched(r.entry->fwd(w.p, r.row, static_cast<cudaStream_t>(pr.stream)));
}

extern "C" int fa_bwd_workspace_size(const fa_bwd_params* prm, size_t* bytes) {
  if (int s = check_header(prm)) { return s; }
  Resolved r{};
  if (int s = resolve(prm->problem, /*backward=*/true, r)) { return s; }
  *bytes = plan_bwd(prm->problem, r.bucket, r.row).bytes;
  return FA_OK;
}

extern "C" int fa_bwd(const fa_bwd_params* prm) {
  if (int s = check_header(prm)) { return s; }
  fa_problem const& pr = prm->problem;
  Resolved r{};
  if (int s = resolve(pr, /*backward=*/true, r)) { return s; }
  const bool varlen_q = pr.cu_seqlens_q != nullptr, varlen_k = pr.cu_seqlens_k != nullptr;
  for (fa_tensor const* t : {&prm->q, &prm->out, &prm->dout, &prm->dq}) {
    if (!aligned(*t, varlen_q)) { return fail(FA_ERR_UNSUPPORTED, "the cuda backend needs 16-byte aligned pointers and strides that are multiples of 8"); }
  }
  for (fa_tensor const* t : {&prm->k, &prm->v, &prm->dk, &prm->dv}) {
    if (!aligned(*t, varlen_k)) { return fail(FA_ERR_UNSUPPORTED, "the cuda backend needs 16-byte aligned pointers and strides that are multiples of 8"); }
  }
  if (pr.batch == 0 || pr.nheads == 0 || (pr.seqlen_q == 0 && pr.seqlen_k == 0)) { return FA_OK; }
  const BwdWorkspace w = plan_bwd(pr, r.bucket, r.row);
  if (w.bytes > 0 && !prm->workspace) { return fail(FA_ERR_INVALID_ARGUMENT, "workspace is NULL"); }
  char* ws = static_cast<char*>(prm->workspace);
  BwdParams p{};
  fill_problem(pr, p);
  p.q = ref(prm->q);
  p.k = ref(prm->k);
  p.v = ref(prm->v);
  p.out = ref(prm->out);
  p.dout = ref(prm->dout);
  p.dq = ref(prm->dq);
  p.dk = ref(prm->dk);
  p.dv = ref(prm->dv);
  p.lse = const_cast<float*>(prm->lse);
  p.dsum = reinterpret_cast<float*>(ws + w.dsum);
  p.dq_accum = reinterpret_cast<float*>(ws + w.dq_accum);
  p.deterministic = (pr.flags & FA_FLAG_DETERMINISTIC) != 0;
  p.dq_locks = p.deterministic ? reinterpret_cast<int32_t*>(ws + w.dq_locks) : nullptr;
  p.zeroed_words = int64_t(w.zeroed_end - w.dq_accum) / 4;
  p.dk_accum = p.group > 1 ? reinterpret_cast<float*>(ws + w.dk_accum) : nullptr;
  p.dv_accum = p.group > 1 ? reinterpret_cast<float*>(ws + w.dv_accum) : nullptr;
  p.rows_q_bound = int64_t(pr.batch) * pr.seqlen_q;
  p.m_blocks = ceil_div(pr.seqlen_q, sm80::bwd_tile(r.row, r.bucket).block_m);
  return launched(r.entry->bwd(p, r.row, static_cast<cudaStream_t>(pr.stream)));
}
