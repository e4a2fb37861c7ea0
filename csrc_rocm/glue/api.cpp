// The C ABI of dispatch/include/flash_attn_abi.h over ck_tile: check what Python cannot know
// (the device, the compiled set), plan, pick the instance from the flat table, launch.
#pragma GCC visibility push(default)
#include "flash_attn_abi.h"
#pragma GCC visibility pop

#include <hip/hip_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "gqa_reduce.hpp"
#include "plan.hpp"
#include "registry.hpp"

namespace fa_rocm {
namespace {

thread_local std::string g_last_error;

int report(const Status& st) {
  if (!st.ok()) g_last_error = st.message;
  return st.code;
}

Status device_error(hipError_t err, const char* what) {
  if (err == hipSuccess) return {};
  return Status{FA_ERR_DEVICE, std::string(what) + ": " + hipGetErrorString(err)};
}

template <class Params>
Status check_abi(const Params* params) {
  if (params == nullptr) return Status{FA_ERR_INVALID_ARGUMENT, "params is NULL"};
  if (params->abi_version != FA_ABI_VERSION || params->struct_size != sizeof(Params)) {
    return Status{FA_ERR_ABI_MISMATCH,
                  "params of ABI " + std::to_string(params->abi_version) + " (" +
                      std::to_string(params->struct_size) + " bytes); this library is ABI " +
                      std::to_string(FA_ABI_VERSION) + " (" + std::to_string(sizeof(Params)) +
                      " bytes)"};
  }
  return {};
}

struct Device {
  std::string arch;  // gcnArchName without its feature suffix, e.g. "gfx90a"
  int compute_units = 0;
};

// Per device id, read once: the arch must be one the library was compiled for, and the CU
// count feeds the split-KV heuristic. problem.arch (a CUDA compute capability) does not apply.
Status current_device(Device* out) {
  static std::mutex mutex;
  static std::vector<Device> cache;
  int id = 0;
  Status st = device_error(hipGetDevice(&id), "hipGetDevice");
  if (!st.ok()) return st;
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= size_t(id)) cache.resize(id + 1);
  if (cache[id].arch.empty()) {
    hipDeviceProp_t prop;
    if (!(st = device_error(hipGetDeviceProperties(&prop, id), "hipGetDeviceProperties")).ok()) {
      return st;
    }
    std::string name = prop.gcnArchName;
    cache[id].arch = name.substr(0, name.find(':'));
    cache[id].compute_units = prop.multiProcessorCount;
  }
  *out = cache[id];
  const std::string built = std::string(";") + FA_ROCM_ARCHS + ";";
  if (built.find(";" + out->arch + ";") == std::string::npos) {
    return Status{FA_ERR_UNSUPPORTED, "device " + out->arch + " is not among the compiled archs " +
                                          FA_ROCM_ARCHS + " (FLASH_ATTENTION_ROCM_ARCHS)"};
  }
  return {};
}

uint32_t common_features(const fa_problem& p) {
  uint32_t f = 0;
  if (p.flags & FA_FLAG_RTZ) f |= kFeatRtz;
  if (p.alibi_slopes) f |= kFeatAlibi;
  return f;
}

std::string describe(const InstanceKey& k) {
  static const std::pair<uint32_t, const char*> kNames[] = {
      {kFeatRtz, "rtz"},         {kFeatVarlen, "varlen"},
      {kFeatAlibi, "alibi"},     {kFeatDropout, "dropout"},
      {kFeatDeterministic, "deterministic"}, {kFeatPagedKV, "paged_kv"},
      {kFeatPadHeadDim, "padded head_dim"}};
  std::string s = std::string(kind_name(k.kind)) + " instance for head_dim bucket " +
                  std::to_string(k.head_dim) + ", " + dtype_name(k.dtype);
  for (const auto& [bit, name] : kNames) {
    if (k.features & bit) s += std::string(", ") + name;
  }
  return s + " is not compiled into this library (narrowed build?)";
}

template <class Fn>
Status resolve(Fn fn, const InstanceKey& key) {
  return fn ? Status{} : Status{FA_ERR_UNSUPPORTED, describe(key)};
}

Status check_workspace(const void* workspace, size_t needed) {
  if (needed > 0 && workspace == nullptr) {
    return Status{FA_ERR_INVALID_ARGUMENT,
                  "workspace is NULL but fa_*_workspace_size asked for " +
                      std::to_string(needed) + " bytes"};
  }
  return {};
}

Status fwd(const fa_fwd_params& a) {
  const fa_problem& p = a.problem;
  Device dev;
  Status st = current_device(&dev);
  FwdPlan plan;
  if (st.ok()) st = plan_fwd(a, a.workspace, dev.compute_units, &plan);
  if (st.ok()) st = check_workspace(a.workspace, plan.workspace_bytes);
  if (!st.ok()) return st;
  const uint32_t pad = plan.pad_head_dim ? kFeatPadHeadDim : 0;
  const fa_dtype dtype = static_cast<fa_dtype>(p.dtype);
  if (!plan.use_split) {
    uint32_t f = common_features(p) | pad;
    if (p.cu_seqlens_q) f |= kFeatVarlen;
    if (p.dropout_p > 0.0f) f |= kFeatDropout;
    const InstanceKey key{Kind::Fwd, plan.bucket, dtype, f};
    const FwdFn fn = find_fwd(key);
    if (!(st = resolve(fn, key)).ok()) return st;
    return device_error(fn(a, plan), "forward launch");
  }
  const InstanceKey split{Kind::FwdSplit, plan.bucket, dtype,
                          common_features(p) | pad | (p.block_table ? kFeatPagedKV : 0u)};
  const InstanceKey combine{Kind::FwdCombine, plan.bucket, dtype, common_features(p) & kFeatRtz};
  const FwdFn split_fn = find_fwd(split);
  const FwdFn combine_fn = find_fwd(combine);
  if (!(st = resolve(split_fn, split)).ok() || !(st = resolve(combine_fn, combine)).ok()) {
    return st;
  }
  if (!(st = device_error(split_fn(a, plan), "split-KV launch")).ok()) return st;
  return device_error(combine_fn(a, plan), "split-KV combine launch");
}

Status bwd(const fa_bwd_params& a) {
  const fa_problem& p = a.problem;
  Device dev;
  Status st = current_device(&dev);
  BwdPlan plan;
  if (st.ok()) st = plan_bwd(a, a.workspace, &plan);
  if (st.ok()) st = check_workspace(a.workspace, plan.workspace_bytes);
  if (!st.ok()) return st;
  uint32_t f = common_features(p) | (plan.pad_head_dim ? kFeatPadHeadDim : 0u);
  if (p.cu_seqlens_q) f |= kFeatVarlen;
  if (p.dropout_p > 0.0f) f |= kFeatDropout;
  if (p.flags & FA_FLAG_DETERMINISTIC) f |= kFeatDeterministic;
  const InstanceKey key{Kind::Bwd, plan.bucket, static_cast<fa_dtype>(p.dtype), f};
  const BwdFn fn = find_bwd(key);
  if (!(st = resolve(fn, key)).ok()) return st;
  const auto stream = static_cast<hipStream_t>(p.stream);
  st = device_error(hipMemsetAsync(plan.dq_acc, 0, plan.dq_acc_bytes, stream), "zeroing dQ_acc");
  if (st.ok()) st = device_error(fn(a, plan), "backward launch");
  if (st.ok() && plan.expand_kv_heads) {
    st = device_error(reduce_gqa(p, plan.dk_out, a.dk), "dK group sum");
    if (st.ok()) st = device_error(reduce_gqa(p, plan.dv_out, a.dv), "dV group sum");
  }
  return st;
}

}  // namespace
}  // namespace fa_rocm

using fa_rocm::Status;

extern "C" {

int fa_abi_version(void) { return FA_ABI_VERSION; }

const char* fa_build_info(void) { return fa_rocm::build_info_json(); }

const char* fa_last_error(void) { return fa_rocm::g_last_error.c_str(); }

int fa_fwd_workspace_size(const fa_fwd_params* params, size_t* bytes) {
  Status st = fa_rocm::check_abi(params);
  fa_rocm::Device dev;
  fa_rocm::FwdPlan plan;
  if (st.ok()) st = fa_rocm::current_device(&dev);
  if (st.ok()) st = fa_rocm::plan_fwd(*params, nullptr, dev.compute_units, &plan);
  if (st.ok()) *bytes = plan.workspace_bytes;
  return fa_rocm::report(st);
}

int fa_fwd(const fa_fwd_params* params) {
  Status st = fa_rocm::check_abi(params);
  if (st.ok()) st = fa_rocm::fwd(*params);
  return fa_rocm::report(st);
}

int fa_bwd_workspace_size(const fa_bwd_params* params, size_t* bytes) {
  Status st = fa_rocm::check_abi(params);
  fa_rocm::BwdPlan plan;
  if (st.ok()) st = fa_rocm::plan_bwd(*params, nullptr, &plan);
  if (st.ok()) *bytes = plan.workspace_bytes;
  return fa_rocm::report(st);
}

int fa_bwd(const fa_bwd_params* params) {
  Status st = fa_rocm::check_abi(params);
  if (st.ok()) st = fa_rocm::bwd(*params);
  return fa_rocm::report(st);
}

}  // extern "C"
