// The one translation unit that links against torch: the planned dense, varlen and KV-cache calls of
// flash_attn/fastpath.py and kvcache.py in C++, a per-thread cache of them and their autograd node. A Python
// autograd.Function costs 8-14 µs more per forward than SDPA's C++ node on the H100 machine, and
// its backward needs the GIL on the autograd engine's thread; this node records the graph and
// runs the planned backward in C++ instead.
//
// The kernels stay in the torch-free library (DESIGN.md): this module only fills the params
// structs that native.py packed for one call signature, allocates through torch and calls the
// library's C ABI through the function pointers it is given. It must be built against the exact
// torch it runs with (csrc_torch/build.py names the file after torch's version and the Python
// ABI); flash_attn/backends/autograd_node.py loads it only then, and otherwise flash_attn keeps its
// Python node.
#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using AbiCall = int (*)(const void*);
using AbiSize = int (*)(const void*, size_t*);
using LastError = const char* (*)();

// Errors are built with std::string and std::to_string, never through an iostream (TORCH_CHECK's
// message formatting): on the H100 machine (torch 2.11 wheel, g++ 13) inserting an int into an
// ostream from this module crashed in the locale's number facet (run be, docs/cuda_backend.md).
// pybind11 and the autograd engine both turn std::runtime_error into Python's RuntimeError.
[[noreturn]] void fail(std::string message) { throw std::runtime_error(std::move(message)); }

uint64_t address(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

// The current stream's cudaStream_t (hipStream_t under ROCm torch) through c10's device-generic
// interface: no CUDA headers and no c10_cuda, so the module also builds against a CPU torch. CPU
// tensors reach a plan only in the tests that stand a stub library in for the kernels: no stream.
uint64_t current_stream(const at::Tensor& t) {
  if (t.device().is_cpu()) { return 0; }
  const c10::Stream s = c10::impl::getDeviceGuardImpl(t.device().type())->getStream(t.device());
  return reinterpret_cast<uintptr_t>(s.native_handle());
}

// One C ABI entry point with a params struct packed for one call signature; a call copies the
// struct and writes the per-call values into its slots: 8-byte fields (the stream, the pointers,
// a varlen call's cu_seqlens), then 4-byte ones (a varlen call's max lengths).
struct Packed {
  AbiCall fn = nullptr;
  AbiSize size_fn = nullptr;  // the workspace query, for calls whose scratch is asked per call
  std::string params;
  std::vector<int64_t> slots;    // byte offsets of the 8-byte fields, in the order of the values
  std::vector<int64_t> slots32;  // then of the 4-byte fields

  // A copy per call (the backward may run on several engine threads) with the values written.
  std::string filled(std::initializer_list<uint64_t> values) const {
    std::string p = params;
    auto value = values.begin();
    for (int64_t at : slots) { std::memcpy(&p[at], &*value++, sizeof(uint64_t)); }
    for (int64_t at : slots32) {
      const int32_t v = int32_t(*value++);
      std::memcpy(&p[at], &v, sizeof v);
    }
    return p;
  }

  void set(std::string& p, size_t slot, uint64_t value) const { std::memcpy(&p[slots[slot]], &value, sizeof value); }

  void call(std::string& p, LastError last_error, const std::string& backend, const char* what) const {
    check(fn(p.data()), last_error, backend, what);
  }

  int64_t workspace_bytes(std::string& p, LastError last_error, const std::string& backend, const char* what) const {
    size_t bytes = 0;
    check(size_fn(p.data(), &bytes), last_error, backend, what);
    return int64_t(bytes);
  }

  static void check(int status, LastError last_error, const std::string& backend, const char* what) {
    if (status != 0) {
      fail("flash_attn " + backend + " backend: " + what + " failed (status " + std::to_string(status) +
           "): " + last_error());
    }
  }
};

// A varlen call's per-call fields (undefined tensors for a dense call).
struct Seq {
  at::Tensor cu_q, cu_k;
  int64_t max_q = 0, max_k = 0;
};

// A KV-cache call's per-call tensors: the keys per sequence (int32), then the optional ones.
struct Cache {
  at::Tensor seqused_k;
  std::optional<at::Tensor> leftpad, batch_idx, block_table;
};

uint64_t address(const std::optional<at::Tensor>& t) { return t ? address(*t) : 0; }

// A Python object owned from C++; the last owner may be the autograd engine's thread, which does
// not hold the GIL.
struct PyRef {
  explicit PyRef(py::object o) : obj(o.release().ptr()) {}
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  ~PyRef() {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      Py_DECREF(obj);
    }
  }
  PyObject* obj;
};

std::vector<std::string> g_flag_names;  // fastpath.py's flags (set once, by configure)

// The flags' raw values now, in g_flag_names' order (unset: nullopt).
std::vector<std::optional<std::string>> flag_values() {
  std::vector<std::optional<std::string>> values;
  values.reserve(g_flag_names.size());
  for (std::string const& name : g_flag_names) {
    const char* value = std::getenv(name.c_str());
    values.push_back(value ? std::optional<std::string>(value) : std::nullopt);
  }
  return values;
}

struct Plan {
  std::string backend;
  Packed fwd, bwd;  // bwd.fn null: no planned backward, the general path always
  bool varlen = false;   // the calls carry cu_seqlens and max lengths (Seq)
  bool kvcache = false;  // flash_attn_with_kvcache's reading calls: the cache tensors (Cache), no backward
  // Scratch bytes: the forward's split-KV partial results, the backward's sums; -1: asked per
  // call (a varlen call's follow its max lengths)
  int64_t fwd_workspace_bytes = 0;
  int64_t workspace_bytes = 0;
  std::vector<int64_t> lse_shape;
  uint64_t pointer_mask = 0;
  LastError last_error = nullptr;
  // The flags' raw values and torch's deterministic setting when the plan was made: a backward
  // that sees others takes the general path, which chooses its backend again.
  std::vector<std::optional<std::string>> flags = flag_values();
  bool deterministic_algorithms = at::globalContext().deterministicAlgorithms();
  // (dout, q, k, v, out, lse[, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k]) -> (dq, dk, dv)
  std::unique_ptr<PyRef> general_backward;
  at::Tensor lse_sink;  // where inference calls write their lse (nothing reads it)

  // Runs a filled call with its scratch, whose pointer is 8-byte slot `at`.
  void run(Packed const& call, std::string& p, int64_t bytes, size_t at, const at::Tensor& like,
           const char* what) const {
    if (bytes < 0) { bytes = call.workspace_bytes(p, last_error, backend, what); }
    at::Tensor workspace;
    if (bytes > 0) {
      workspace = at::empty({bytes}, like.options().dtype(at::kByte));
      call.set(p, at, address(workspace));
    }
    call.call(p, last_error, backend, what);
  }

  void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
               const at::Tensor& lse, Seq const& seq) const {
    std::string p = varlen ? fwd.filled({current_stream(q), address(q), address(k), address(v), address(out),
                                         address(lse), 0, address(seq.cu_q), address(seq.cu_k), uint64_t(seq.max_q),
                                         uint64_t(seq.max_k)})
                           : fwd.filled({current_stream(q), address(q), address(k), address(v), address(out),
                                         address(lse), 0});
    run(fwd, p, fwd_workspace_bytes, 6, q, "forward");
  }

  void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
               const at::Tensor& lse, Cache const& cache) const {
    std::string p = fwd.filled({current_stream(q), address(q), address(k), address(v), address(out), address(lse), 0,
                                address(cache.seqused_k), address(cache.leftpad), address(cache.batch_idx),
                                address(cache.block_table)});
    run(fwd, p, fwd_workspace_bytes, 6, q, "forward");
  }

  void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                const at::Tensor& dout, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                const at::Tensor& dv, Seq const& seq) const {
    std::string p = varlen ? bwd.filled({current_stream(q), address(q), address(k), address(v), address(out),
                                         address(dout), address(lse), address(dq), address(dk), address(dv), 0,
                                         address(seq.cu_q), address(seq.cu_k), uint64_t(seq.max_q),
                                         uint64_t(seq.max_k)})
                           : bwd.filled({current_stream(q), address(q), address(k), address(v), address(out),
                                         address(dout), address(lse), address(dq), address(dk), address(dv), 0});
    run(bwd, p, workspace_bytes, 10, q, "backward");
  }

  bool state_unchanged() const {
    return at::globalContext().deterministicAlgorithms() == deterministic_algorithms && flag_values() == flags;
  }
};

// What the node's context keeps of the plan and the call's max lengths (saved_data holds IValues:
// one entry, since each is a hash-map insert per forward).
struct PlanHolder : torch::CustomClassHolder {
  PlanHolder(std::shared_ptr<Plan> p, int64_t q, int64_t k) : plan(std::move(p)), max_q(q), max_k(k) {}
  std::shared_ptr<Plan> plan;
  int64_t max_q, max_k;
};

variable_list general_backward(Plan const& plan, const at::Tensor& dout, variable_list const& saved, Seq const& seq) {
  py::gil_scoped_acquire gil;
  py::handle fn(plan.general_backward->obj);
  py::object result = plan.varlen ? fn(dout, saved[0], saved[1], saved[2], saved[3], saved[4], seq.cu_q, seq.cu_k,
                                       seq.max_q, seq.max_k)
                                  : fn(dout, saved[0], saved[1], saved[2], saved[3], saved[4]);
  auto grads = result.cast<std::vector<at::Tensor>>();
  if (grads.size() != 3) { fail("flash_attn: the general backward returned " + std::to_string(grads.size()) + " gradients, not 3"); }
  return {grads[0], grads[1], grads[2]};
}

// apply(q, k, v, plan, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k); the varlen
// arguments nullopt / 0 for a dense call (an undefined tensor would be taken for an input).
struct PlannedAttention : torch::autograd::Function<PlannedAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::shared_ptr<Plan>& plan, const std::optional<at::Tensor>& cu_q,
                            const std::optional<at::Tensor>& cu_k, int64_t max_q, int64_t max_k) {
    const c10::DeviceGuard device(q.device());
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = at::empty(plan->lse_shape, q.options().dtype(at::kFloat));
    const Seq seq{cu_q.value_or(at::Tensor()), cu_k.value_or(at::Tensor()), max_q, max_k};
    plan->forward(q, k, v, out, lse, seq);
    ctx->save_for_backward({q, k, v, out, lse, seq.cu_q, seq.cu_k});
    ctx->saved_data["plan"] = c10::IValue::make_capsule(c10::make_intrusive<PlanHolder>(plan, max_q, max_k));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto holder = ctx->saved_data["plan"].toCapsule();
    PlanHolder const& held = *static_cast<PlanHolder*>(holder.get());
    Plan const& plan = *held.plan;
    const Seq seq{saved[5], saved[6], held.max_q, held.max_k};
    const at::Tensor& dout = grads[0];  // materialized: zeros when out got no gradient
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    variable_list result;
    if (plan.bwd.fn == nullptr || dout.strides() != out.strides() || (address(dout) & plan.pointer_mask) ||
        !plan.state_unchanged()) {
      result = general_backward(plan, dout, saved, seq);
    } else {
      at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
      plan.backward(q, k, v, out, dout, lse, dq, dk, dv, seq);
      result = {dq, dk, dv};
    }
    result.resize(8);  // no gradient for the plan and the varlen arguments
    return result;
  }
};

Packed packed(uint64_t fn, uint64_t size_fn, py::bytes params, std::vector<int64_t> slots,
              std::vector<int64_t> slots32, size_t values) {
  Packed p;
  if (fn == 0) { return p; }  // no such call planned
  p.fn = reinterpret_cast<AbiCall>(static_cast<uintptr_t>(fn));
  p.size_fn = reinterpret_cast<AbiSize>(static_cast<uintptr_t>(size_fn));
  p.params = params;
  if (slots.size() + slots32.size() != values) {
    fail("flash_attn: a packed call needs " + std::to_string(values) + " slots, got " +
         std::to_string(slots.size() + slots32.size()));
  }
  for (int64_t at : slots) {
    if (at < 0 || size_t(at) + 8 > p.params.size()) {
      fail("flash_attn: slot offset " + std::to_string(at) + " lies outside the params struct (" +
           std::to_string(p.params.size()) + " bytes)");
    }
  }
  for (int64_t at : slots32) {
    if (at < 0 || size_t(at) + 4 > p.params.size()) {
      fail("flash_attn: slot offset " + std::to_string(at) + " lies outside the params struct (" +
           std::to_string(p.params.size()) + " bytes)");
    }
  }
  p.slots = std::move(slots);
  p.slots32 = std::move(slots32);
  return p;
}

// kind: 0 dense, 1 varlen, 2 KV cache. fwd_slots / bwd_slots: the 8-byte fields (pointers, then
// varlen's cu_seqlens or the cache tensors), slots32 the 4-byte ones (varlen: max lengths).
// Workspace bytes -1: asked per call through the size function.
std::shared_ptr<Plan> make_plan(std::string backend, uint64_t last_error, int kind, uint64_t fwd_fn,
                                uint64_t fwd_size_fn, py::bytes fwd_params, std::vector<int64_t> fwd_slots,
                                std::vector<int64_t> fwd_slots32, uint64_t bwd_fn, uint64_t bwd_size_fn,
                                py::bytes bwd_params, std::vector<int64_t> bwd_slots, std::vector<int64_t> bwd_slots32,
                                int64_t fwd_workspace_bytes, int64_t workspace_bytes, std::vector<int64_t> lse_shape,
                                uint64_t pointer_mask, py::object general_backward) {
  if (fwd_fn == 0 || last_error == 0) { fail("flash_attn: a plan needs the forward and fa_last_error"); }
  if ((fwd_workspace_bytes < 0 && fwd_size_fn == 0) || (bwd_fn != 0 && workspace_bytes < 0 && bwd_size_fn == 0)) {
    fail("flash_attn: a plan that asks for its workspace per call needs the size function");
  }
  auto plan = std::make_shared<Plan>();
  plan->backend = std::move(backend);
  plan->last_error = reinterpret_cast<LastError>(static_cast<uintptr_t>(last_error));
  if (kind < 0 || kind > 2 || (kind == 2 && bwd_fn != 0)) { fail("flash_attn: plan kind " + std::to_string(kind)); }
  plan->varlen = kind == 1;
  plan->kvcache = kind == 2;
  plan->fwd = packed(fwd_fn, fwd_size_fn, fwd_params, std::move(fwd_slots), std::move(fwd_slots32), kind ? 11 : 7);
  plan->fwd_workspace_bytes = fwd_workspace_bytes;
  plan->bwd = packed(bwd_fn, bwd_size_fn, bwd_params, std::move(bwd_slots), std::move(bwd_slots32),
                     plan->varlen ? 15 : 11);
  plan->workspace_bytes = workspace_bytes;
  plan->lse_shape = std::move(lse_shape);
  plan->pointer_mask = pointer_mask;
  plan->general_backward = std::make_unique<PyRef>(std::move(general_backward));
  return plan;
}

// ---- The per-thread cache of planned calls --------------------------------------------------
// fastpath.py's own lookup (a tuple key of 20 fields built in Python) costs about as much as the
// rest of a call; here the key is built from the tensors' metadata in C++. A miss returns None and
// fastpath.py plans the call (running the argument checks) and registers the plan; a call the
// cache knows but cannot serve (a signature not planned, a misaligned pointer) returns False.

void put(std::string& key, const void* data, size_t n) { key.append(static_cast<const char*>(data), n); }
template <class T>
void put(std::string& key, T value) { put(key, &value, sizeof value); }

void put_tensor(std::string& key, const at::Tensor& t) {
  put(key, int64_t(t.dim()));
  put(key, t.sizes().data(), t.dim() * sizeof(int64_t));
  put(key, t.strides().data(), t.dim() * sizeof(int64_t));
  put(key, int32_t(t.scalar_type()));
  put(key, int32_t(t.device().type()));
  put(key, int32_t(t.device().index()));
}

// A number as fastpath.py accepts it (None, float or int, not bool), or false.
bool put_number(std::string& key, py::handle x) {
  if (x.is_none()) {
    put(key, uint8_t(0));
    return true;
  }
  if (!PyFloat_CheckExact(x.ptr()) && !PyLong_CheckExact(x.ptr())) { return false; }
  const double v = PyFloat_AsDouble(x.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  put(key, uint8_t(1));
  put(key, v);
  return true;
}

// The call's key, or nullopt where fastpath.py's own path must decide; grad: whether autograd
// records this call (the key includes it, as does every flag a plan depends on). A varlen call's
// key has its cu_seqlens' metadata (not its max lengths, which vary per call: the plan writes them).
std::optional<std::string> call_key(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Seq const& seq,
                                    py::handle scale, py::handle causal, py::handle window, py::handle softcap,
                                    py::handle deterministic, bool& grad) {
  std::string key;
  key.reserve(256);
  for (const at::Tensor* t : {&q, &k, &v}) { put_tensor(key, *t); }
  put(key, uint8_t(seq.cu_q.defined()));
  if (seq.cu_q.defined()) {
    put_tensor(key, seq.cu_q);
    put_tensor(key, seq.cu_k);
  }
  if (!put_number(key, scale) || !put_number(key, softcap)) { return std::nullopt; }
  if (!PyTuple_CheckExact(window.ptr()) || PyTuple_GET_SIZE(window.ptr()) != 2) { return std::nullopt; }
  for (int i = 0; i < 2; ++i) {
    PyObject* w = PyTuple_GET_ITEM(window.ptr(), i);
    if (!PyLong_CheckExact(w)) { return std::nullopt; }
    const long long value = PyLong_AsLongLong(w);
    if (value == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return std::nullopt;
    }
    put(key, int64_t(value));
  }
  const int is_causal = PyObject_IsTrue(causal.ptr()), is_deterministic = PyObject_IsTrue(deterministic.ptr());
  if (is_causal < 0 || is_deterministic < 0) {
    PyErr_Clear();
    return std::nullopt;
  }
  grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  put(key, uint8_t(is_causal | is_deterministic << 1 | int(grad) << 2 |
                   int(at::globalContext().deterministicAlgorithms()) << 3));
  for (auto const& value : flag_values()) {
    put(key, uint8_t(value.has_value()));
    if (value) { key.append(*value).push_back('\0'); }
  }
  return key;
}

constexpr size_t kMaxCachedCalls = 512;  // as fastpath.py's _MAX_PLANS
thread_local std::unordered_map<std::string, std::shared_ptr<Plan>> t_calls;

at::Tensor infer(Plan& plan, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Seq const& seq) {
  const c10::DeviceGuard device(q.device());
  at::Tensor out = at::empty_like(q);
  // Nothing reads an inference call's lse: the kernels write it into one buffer per plan.
  if (!plan.lse_sink.defined()) { plan.lse_sink = at::empty(plan.lse_shape, q.options().dtype(at::kFloat)); }
  plan.forward(q, k, v, out, plan.lse_sink, seq);
  return out;
}

py::object run_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Seq const& seq, py::handle scale,
                    py::handle causal, py::handle window, py::handle softcap, py::handle deterministic) {
  bool grad = false;
  const auto key = call_key(q, k, v, seq, scale, causal, window, softcap, deterministic, grad);
  if (!key) { return py::bool_(false); }
  const auto it = t_calls.find(*key);
  if (it == t_calls.end()) { return py::none(); }
  const std::shared_ptr<Plan>& plan = it->second;
  if (!plan || ((address(q) | address(k) | address(v)) & plan->pointer_mask)) { return py::bool_(false); }
  if (grad) {
    auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    return py::cast(PlannedAttention::apply(q, k, v, plan, optional(seq.cu_q), optional(seq.cu_k), seq.max_q, seq.max_k));
  }
  return py::cast(infer(*plan, q, k, v, seq));
}

// Keeps plan under key (nothing for a call no key describes); a full cache starts over.
void remember(std::optional<std::string> const& key, std::shared_ptr<Plan> plan) {
  if (!key) { return; }
  if (t_calls.size() >= kMaxCachedCalls) { t_calls.clear(); }
  t_calls[*key] = std::move(plan);
}

void register_plan(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Seq const& seq, py::handle scale,
                   py::handle causal, py::handle window, py::handle softcap, py::handle deterministic,
                   std::shared_ptr<Plan> plan) {
  bool grad = false;
  remember(call_key(q, k, v, seq, scale, causal, window, softcap, deterministic, grad), std::move(plan));
}

py::object run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, py::handle scale, py::handle causal,
               py::handle window, py::handle softcap, py::handle deterministic) {
  return run_call(q, k, v, Seq{}, scale, causal, window, softcap, deterministic);
}

void register_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, py::handle scale,
                   py::handle causal, py::handle window, py::handle softcap, py::handle deterministic,
                   std::shared_ptr<Plan> plan) {
  register_plan(q, k, v, Seq{}, scale, causal, window, softcap, deterministic, std::move(plan));
}

// max lengths as fastpath.varlen checked them: non-negative Python ints
py::object run_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                      const at::Tensor& cu_k, int64_t max_q, int64_t max_k, py::handle scale, py::handle causal,
                      py::handle window, py::handle softcap, py::handle deterministic) {
  return run_call(q, k, v, Seq{cu_q, cu_k, max_q, max_k}, scale, causal, window, softcap, deterministic);
}

// flash_attn_with_kvcache's calls without new tokens: cache_seqlens an int32 tensor (the keys per
// sequence), the optional cache tensors None or tensors, num_splits an int. Inference only: a
// call with autograd recording is not served here. Returns (out, lse), None when unknown, False
// when not served here.
std::optional<std::string> kvcache_key(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       Cache const& cache, py::handle scale, py::handle causal, py::handle window,
                                       py::handle softcap, py::handle num_splits) {
  bool grad = false;
  auto key = call_key(q, k, v, Seq{}, scale, causal, window, softcap, py::bool_(false), grad);
  if (!key || grad || !PyLong_CheckExact(num_splits.ptr())) { return std::nullopt; }
  const long long splits = PyLong_AsLongLong(num_splits.ptr());
  if (splits == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return std::nullopt;
  }
  put(*key, int64_t(splits));
  put_tensor(*key, cache.seqused_k);
  for (const std::optional<at::Tensor>* t : {&cache.leftpad, &cache.batch_idx, &cache.block_table}) {
    put(*key, uint8_t(t->has_value()));
    if (*t) { put_tensor(*key, **t); }
  }
  return key;
}

py::object run_kvcache(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& cache_seqlens, std::optional<at::Tensor> batch_idx,
                       std::optional<at::Tensor> leftpad, std::optional<at::Tensor> block_table, py::handle scale,
                       py::handle causal, py::handle window, py::handle softcap, py::handle num_splits) {
  const Cache cache{cache_seqlens, std::move(leftpad), std::move(batch_idx), std::move(block_table)};
  const auto key = kvcache_key(q, k_cache, v_cache, cache, scale, causal, window, softcap, num_splits);
  if (!key) { return py::bool_(false); }
  const auto it = t_calls.find(*key);
  if (it == t_calls.end()) { return py::none(); }
  const std::shared_ptr<Plan>& plan = it->second;
  if (!plan || !plan->kvcache || ((address(q) | address(k_cache) | address(v_cache)) & plan->pointer_mask)) {
    return py::bool_(false);
  }
  const c10::DeviceGuard device(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty(plan->lse_shape, q.options().dtype(at::kFloat));
  plan->forward(q, k_cache, v_cache, out, lse, cache);
  return py::make_tuple(out, lse);
}

void register_kvcache_call(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& cache_seqlens, std::optional<at::Tensor> batch_idx,
                           std::optional<at::Tensor> leftpad, std::optional<at::Tensor> block_table,
                           py::handle scale, py::handle causal, py::handle window, py::handle softcap,
                           py::handle num_splits, std::shared_ptr<Plan> plan) {
  const Cache cache{cache_seqlens, std::move(leftpad), std::move(batch_idx), std::move(block_table)};
  remember(kvcache_key(q, k_cache, v_cache, cache, scale, causal, window, softcap, num_splits), std::move(plan));
}

void register_varlen_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                          const at::Tensor& cu_k, py::handle scale, py::handle causal, py::handle window,
                          py::handle softcap, py::handle deterministic, std::shared_ptr<Plan> plan) {
  register_plan(q, k, v, Seq{cu_q, cu_k, 0, 0}, scale, causal, window, softcap, deterministic, std::move(plan));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "flash_attn's C++ autograd node for planned dense, varlen and KV-cache calls (csrc_torch/autograd_node.cpp)";
  py::class_<Plan, std::shared_ptr<Plan>>(m, "Plan");
  m.def("make_plan", &make_plan);
  m.def("configure", [](std::vector<std::string> flag_names) { g_flag_names = std::move(flag_names); });
  m.def("run", &run, "a cached dense call: its output, None when unknown, False when not served here");
  m.def("register_call", &register_call, "caches run()'s plan (None: not planned) for this call's signature");
  m.def("run_varlen", &run_varlen, "run() for a varlen call");
  m.def("register_varlen_call", &register_varlen_call, "register_call() for a varlen call");
  m.def("run_kvcache", &run_kvcache, "a cached flash_attn_with_kvcache call without new tokens: (out, lse)");
  m.def("register_kvcache_call", &register_kvcache_call, "register_call() for such a call");
  m.def("clear_calls", [] { t_calls.clear(); }, "forgets this thread's cached calls");
  m.attr("torch_version") = FA_TORCH_VERSION;
  // make_plan's arguments, as backends/autograd_node.py PLAN_VERSION (2: the forward's workspace;
  // 3: varlen plans, 4-byte slots and the workspace size functions; 4: the plan kind, KV-cache plans)
  m.attr("plan_version") = 4;
}
