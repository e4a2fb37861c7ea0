// The instance table (rows from generated/instances.inc) and fa_build_info's JSON.
#include "registry.hpp"

#include <mutex>
#include <set>
#include <string>

#include "../kernels/tile_table.hpp"

#ifndef FA_ROCM_ARCHS
#error "build.py defines FA_ROCM_ARCHS, the offload archs, e.g. \"gfx90a;gfx942\""
#endif

namespace fa_rocm {

// Weak declarations: an instance a narrowed build did not compile stays undefined, and with
// hidden visibility the linker resolves its address to null instead of failing.
#define FA_ROCM_FWD(kind, head_dim, dtype, features, fn) \
  __attribute__((weak)) hipError_t fn(const fa_fwd_params&, const FwdPlan&);
#define FA_ROCM_BWD(kind, head_dim, dtype, features, fn) \
  __attribute__((weak)) hipError_t fn(const fa_bwd_params&, const BwdPlan&);
#include "../generated/instances.inc"
#undef FA_ROCM_FWD
#undef FA_ROCM_BWD

namespace {

struct FwdRow {
  InstanceKey key;
  FwdFn fn;
};
struct BwdRow {
  InstanceKey key;
  BwdFn fn;
};

const FwdRow kFwdRows[] = {
#define FA_ROCM_FWD(kind, head_dim, dtype, features, fn) \
  {{Kind::kind, head_dim, dtype, features}, &fn},
#define FA_ROCM_BWD(kind, head_dim, dtype, features, fn)
#include "../generated/instances.inc"
#undef FA_ROCM_FWD
#undef FA_ROCM_BWD
};

const BwdRow kBwdRows[] = {
#define FA_ROCM_FWD(kind, head_dim, dtype, features, fn)
#define FA_ROCM_BWD(kind, head_dim, dtype, features, fn) \
  {{Kind::kind, head_dim, dtype, features}, &fn},
#include "../generated/instances.inc"
#undef FA_ROCM_FWD
#undef FA_ROCM_BWD
};

bool same(const InstanceKey& a, const InstanceKey& b) {
  return a.kind == b.kind && a.head_dim == b.head_dim && a.dtype == b.dtype &&
         a.features == b.features;
}

template <class Row>
auto find(const Row* begin, const Row* end, const InstanceKey& key) -> decltype(begin->fn) {
  for (const Row* r = begin; r != end; ++r) {
    if (same(r->key, key)) return r->fn;
  }
  return nullptr;
}

// Features every compiled instance of a direction has regardless of its bits: masks and head
// grouping are run-time arguments of every kernel; PERFORMANCE changes nothing on ck_tile
// (docs/rocm_backend.md says why). The forward is deterministic by construction, but the
// dispatcher only asks the backward for "deterministic", so only backward rows name it.
const char* const kAlways[] = {"causal", "window", "gqa", "performance"};

void add_bits(std::set<std::string>* out, Kind kind, uint32_t f) {
  out->insert(std::begin(kAlways), std::end(kAlways));
  if (f & kFeatRtz) out->insert("rtz");
  if (f & kFeatAlibi) out->insert("alibi");
  if (f & kFeatDropout) out->insert("dropout");
  if (f & kFeatDeterministic) out->insert("deterministic");
  if (f & kFeatVarlen) out->insert("varlen");
  // seqused_k without varlen, kv_batch_idx and pages need the batch-mode split-KV kernel; named
  // only from its rows so that a build without split-KV never claims them.
  if (kind == Kind::FwdSplit) {
    out->insert({"split_kv", "seqused_k"});
    out->insert((f & kFeatPagedKV) ? "paged_kv" : "kv_batch_idx");
  }
}

std::string json_list(const std::set<std::string>& items) {
  std::string s = "[";
  for (const std::string& item : items) {
    if (s.size() > 1) s += ", ";
    s += "\"" + item + "\"";
  }
  return s + "]";
}

// Orders head dims numerically in the JSON (a std::set<std::string> would put "256" < "32").
std::string json_ints(const std::set<int>& items) {
  std::string s = "[";
  for (int item : items) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(item);
  }
  return s + "]";
}

std::string make_build_info() {
  std::set<int> head_dims;
  std::set<std::string> dtypes, directions, fwd, bwd, archs;
  bool has_split = false, has_combine = false, has_pad = false;
  for (const FwdRow& r : kFwdRows) {
    if (!r.fn) continue;
    has_split |= r.key.kind == Kind::FwdSplit;
    has_combine |= r.key.kind == Kind::FwdCombine;
    if (r.key.kind == Kind::FwdCombine) continue;
    has_pad |= (r.key.features & kFeatPadHeadDim) != 0;
    head_dims.insert(r.key.head_dim);
    dtypes.insert(dtype_name(r.key.dtype));
    directions.insert("fwd");
    add_bits(&fwd, r.key.kind, r.key.features);
  }
  if (!has_split || !has_combine) {
    for (const char* f : {"split_kv", "paged_kv", "kv_batch_idx", "seqused_k"}) fwd.erase(f);
  }
  for (const BwdRow& r : kBwdRows) {
    if (!r.fn) continue;
    has_pad |= (r.key.features & kFeatPadHeadDim) != 0;
    head_dims.insert(r.key.head_dim);
    dtypes.insert(dtype_name(r.key.dtype));
    directions.insert("bwd");
    add_bits(&bwd, r.key.kind, r.key.features);
  }
  std::string list = FA_ROCM_ARCHS;
  for (size_t start = 0; start < list.size();) {
    size_t end = list.find(';', start);
    if (end == std::string::npos) end = list.size();
    if (end > start) archs.insert(list.substr(start, end - start));
    start = end + 1;
  }
  std::set<std::string> all = fwd;
  all.insert(bwd.begin(), bwd.end());
  // head_dims are buckets, each serving every smaller multiple of 8 when the padded instances
  // were compiled; without them (FLASH_ATTENTION_ROCM_SKIP_FEATURES=pad) only the buckets.
  // requires: what native.py must arrange before calling. The vectorised loads read 16-byte
  // chunks, kHeadDimMultiple 16-bit elements: head dims, row strides and base pointers align.
  return "{\"backend\": \"rocm\", \"kernels\": \"ck_tile\", \"archs\": " + json_list(archs) +
         ", \"head_dims\": " + json_ints(head_dims) +
         ", \"head_dims_exact\": " + (has_pad ? "false" : "true") +
         ", \"dtypes\": " + json_list(dtypes) + ", \"directions\": " + json_list(directions) +
         ", \"features\": " + json_list(all) + ", \"features_fwd\": " + json_list(fwd) +
         ", \"features_bwd\": " + json_list(bwd) +
         ", \"requires\": {\"head_dim_multiple\": " + std::to_string(kHeadDimMultiple) +
         ", \"stride_multiple\": " + std::to_string(kHeadDimMultiple) +
         ", \"ptr_align\": " + std::to_string(kHeadDimMultiple * 2) + "}}";
}

}  // namespace

FwdFn find_fwd(const InstanceKey& key) {
  return find(std::begin(kFwdRows), std::end(kFwdRows), key);
}

BwdFn find_bwd(const InstanceKey& key) {
  return find(std::begin(kBwdRows), std::end(kBwdRows), key);
}

const char* dtype_name(fa_dtype dtype) { return dtype == FA_DTYPE_BF16 ? "bf16" : "fp16"; }

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Fwd: return "forward";
    case Kind::FwdSplit: return "split-KV forward";
    case Kind::FwdCombine: return "split-KV combine";
    case Kind::Bwd: return "backward";
  }
  return "?";
}

const char* build_info_json() {
  static std::once_flag once;
  static std::string json;
  std::call_once(once, [] { json = make_build_info(); });
  return json.c_str();
}

}  // namespace fa_rocm
