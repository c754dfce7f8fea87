// CPU kernels for the fused optimizers: Adam/AdamW (amsgrad, maximize), SGD (momentum,
// dampening, nesterov), Adagrad and RMSprop (centered, momentum). Schemas and the meaning of
// every argument: csrc/ops.cpp ("fused optimizers"); the math and its operation order:
// leedl_fast/reference/optim.py; design: docs/optim.md.
//
// An optimizer step is memory-bound: Adam reads param, grad, m, v and writes param, m, v (28
// bytes per fp32 parameter) for ~10 flops. So the kernel touches every element once, in one
// pass that loads each operand, does all of the update in registers, and stores each result:
// no temporaries (torch's foreach path makes ~10 passes over the data), and one parallel
// region for the whole list rather than one per tensor (a list of ~150 tensors would pay ~150
// fork/joins, and tiny tensors are not worth a thread each).
//
// Work split: the tensors are laid end to end in one virtual index space [0, total) and a
// single at::parallel_for cuts that space into equal ranges (grain kGrain elements); a range
// runs over the (tensor, [begin, end)) pieces it covers. Splitting by elements rather than by
// tensors keeps the threads balanced whatever the mix of sizes, and a list smaller than one
// grain runs on the calling thread without waking the pool.
//
// Dtypes, per tensor (a list may mix them): the math runs in float64 for float64 params and in
// float32 otherwise. fp16/bf16 operands are widened on load and rounded on store; a "block"
// is two math vectors (16 fp32 lanes = one Vectorized<Half/BFloat16>, or 8 fp64 lanes). With
// master_params the fp32 master and the fp32 state carry the math and the param gets the new
// master rounded to its dtype.
//
// Exactness: every operation is the reference's, in its order and its precision (scalars are
// rounded to the math dtype as torch rounds a Python float multiplying a tensor; true divisions,
// not reciprocals), and the bias corrections are computed once per tensor in double as the
// reference does. The file is compiled with floating-point contraction off (below): a fused
// multiply-add would round once where the reference rounds twice. What remains: torch.sqrt on
// x86 CPUs goes through MKL's vsSqrt, which is within 1 ulp but not correctly rounded (~1 in 5
// fp32 results), while Vectorized::sqrt is; so a few elements per thousand land 1 ulp away
// from the reference run in the same dtype. NaN gradients propagate as in the reference.
//
// Speed: on the 2-core build machine an fp32 Adam step over 25M parameters runs at ~44 GB/s,
// the bandwidth torch's own in-place add_ reaches; software prefetch (1-4 KiB ahead) and a
// reciprocal instead of the bias-correction division measured no gain or a loss.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// After the includes, so only this file's own functions (and what is inlined into them) are
// affected: a*b + c stays two roundings, as in the reference's separate tensor ops.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace leedl_fast {
namespace {

using at::vec::Vectorized;

// Elements per parallel grain: a list below this runs on one thread; above it the index
// space is split evenly between the threads (the per-element cost is the same everywhere).
constexpr int64_t kGrain = 32768;

// ---------------------------------------------------------------------------------------------
// Storage <-> math vectors
// ---------------------------------------------------------------------------------------------

// Math dtype of a storage dtype: double for double, float for float/Half/BFloat16.
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Loads `count` (<= 2 lanes' worth) elements of T from p as two math vectors (missing lanes 0).
template <typename M, typename T, typename C>
inline void load2(const T* p, C count, Vectorized<M>& a, Vectorized<M>& b) {
  using V = Vectorized<M>;
  constexpr int64_t L = V::size();
  if constexpr (std::is_same_v<T, M>) {
    if (count == 2 * L) {
      a = V::loadu(p);
      b = V::loadu(p + L);
    } else {
      a = V::loadu(p, std::min<int64_t>(count, L));
      b = count > L ? V::loadu(p + L, count - L) : V(M(0));
    }
  } else {
    static_assert(std::is_same_v<M, float> && Vectorized<T>::size() == 2 * L,
                  "fp16/bf16 blocks are one Vectorized<T> = two Vectorized<float>");
    const Vectorized<T> x = count == 2 * L ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, count);
    std::tie(a, b) = at::vec::convert_to_float<T>(x);
  }
}

// Stores the first `count` elements of the two math vectors (a, b) to p, rounded to T.
template <typename M, typename T, typename C>
inline void store2(T* p, C count, const Vectorized<M>& a, const Vectorized<M>& b) {
  constexpr int64_t L = Vectorized<M>::size();
  if constexpr (std::is_same_v<T, M>) {
    if (count == 2 * L) {
      a.store(p);
      b.store(p + L);
    } else {
      a.store(p, std::min<int64_t>(count, L));
      if (count > L) b.store(p + L, count - L);
    }
  } else {
    const Vectorized<T> x = at::vec::convert_from_float<T>(a, b);
    if (count == 2 * L) x.store(p); else x.store(p, count);
  }
}

// ---------------------------------------------------------------------------------------------
// The tensors of one call
// ---------------------------------------------------------------------------------------------

// Storage layout of one tensor: param dtype, and whether fp32 master + fp32 state carry it.
enum class Layout { kFloat, kDouble, kHalf, kBFloat16, kHalfMaster, kBFloat16Master };

// One tensor of the list: its raw pointers (state pointers null where unused) and step count.
struct Slot {
  void* param;
  void* grad;
  void* master;
  void* state[3];
  int64_t numel;
  Layout layout;
  double step;
};

// Options shared by every tensor of a call.
struct Common {
  bool has_scale = false;
  float grad_scale = 1.f;  // grads are divided by it (and written back) when has_scale
  bool maximize = false;
};

template <typename P, typename S>
struct Types {
  using param = P;  // params and grads
  using state = S;  // state (and master params when S != P)
};

// Calls f(Types<P, S>{}) for the slot's storage layout.
template <typename F>
inline void dispatch_layout(Layout layout, F&& f) {
  switch (layout) {
    case Layout::kFloat: return f(Types<float, float>{});
    case Layout::kDouble: return f(Types<double, double>{});
    case Layout::kHalf: return f(Types<c10::Half, c10::Half>{});
    case Layout::kBFloat16: return f(Types<c10::BFloat16, c10::BFloat16>{});
    case Layout::kHalfMaster: return f(Types<c10::Half, float>{});
    case Layout::kBFloat16Master: return f(Types<c10::BFloat16, float>{});
  }
}

// Updates elements [begin, end) of one tensor: loads theta (master or param), the grad
// (unscaled and written back if asked, negated for maximize) and the used states, runs the
// op's per-vector update `k(theta, g, state)` on both halves of the block, stores it all.
template <typename P, typename S, typename K>
void update_range(const K& k, const Slot& t, const Common& c, int64_t begin, int64_t end) {
  using M = math_t<P>;
  using V = Vectorized<M>;
  static_assert(std::is_same_v<math_t<S>, M>, "state and param share the math dtype");
  constexpr int64_t kB = 2 * V::size();
  P* const param = static_cast<P*>(t.param);
  P* const grad = static_cast<P*>(t.grad);
  S* const master = static_cast<S*>(t.master);
  S* const st[3] = {static_cast<S*>(t.state[0]), static_cast<S*>(t.state[1]),
                    static_cast<S*>(t.state[2])};
  const V scale(M(c.grad_scale));
  auto block = [&](int64_t i, auto count) {
    V th[2], g[2], s[2][3];
    if (master) load2(master + i, count, th[0], th[1]); else load2(param + i, count, th[0], th[1]);
    load2(grad + i, count, g[0], g[1]);
    if (c.has_scale) {
      g[0] = g[0] / scale;
      g[1] = g[1] / scale;
      store2(grad + i, count, g[0], g[1]);
    }
    if (c.maximize) {
      g[0] = g[0].neg();
      g[1] = g[1].neg();
    }
    for (int j = 0; j < 3; ++j)
      if (st[j]) load2(st[j] + i, count, s[0][j], s[1][j]);
    k(th[0], g[0], s[0]);
    k(th[1], g[1], s[1]);
    for (int j = 0; j < 3; ++j)
      if (st[j]) store2(st[j] + i, count, s[0][j], s[1][j]);
    if (master) store2(master + i, count, th[0], th[1]);
    store2(param + i, count, th[0], th[1]);
  };
  int64_t i = begin;
  for (; i + kB <= end; i += kB) block(i, std::integral_constant<int64_t, kB>{});
  if (i < end) block(i, end - i);
}

// Runs op over every element of every slot: one parallel_for over the concatenated index space.
// Op::kernel<M>(slot) builds the per-tensor vector functor (scalars broadcast once per piece).
template <typename Op>
void run_all(const Op& op, const std::vector<Slot>& slots, const Common& c) {
  std::vector<int64_t> offset(slots.size() + 1, 0);
  for (size_t i = 0; i < slots.size(); ++i) offset[i + 1] = offset[i] + slots[i].numel;
  const int64_t total = offset.back();
  if (total == 0) return;
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    // the last tensor starting at or before `begin` (empty tensors share their successor's
    // offset and are skipped by upper_bound)
    size_t i = std::upper_bound(offset.begin(), offset.end(), begin) - offset.begin() - 1;
    for (int64_t pos = begin; pos < end; ++i) {
      const int64_t stop = std::min(end, offset[i + 1]);
      if (stop <= pos) continue;
      const Slot& t = slots[i];
      dispatch_layout(t.layout, [&](auto types) {
        using P = typename decltype(types)::param;
        using S = typename decltype(types)::state;
        update_range<P, S>(op.template kernel<math_t<P>>(t), t, c, pos - offset[i],
                           stop - offset[i]);
      });
      pos = stop;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Validation: every list, every tensor; builds the slots
// ---------------------------------------------------------------------------------------------

bool is_low(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

void check_tensor(const char* op, const char* name, size_t i, const at::Tensor& t,
                  const at::Tensor& param, at::ScalarType dtype, const char* why) {
  TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, "[", i,
              "] must be a dense (strided) tensor, got layout ", t.layout(),
              " (sparse gradients are not supported)");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, "[", i, "] must be on the CPU, got ",
              t.device());
  TORCH_CHECK(!at::isComplexType(t.scalar_type()), op, ": ", name, "[", i,
              "] is complex (", t.scalar_type(), "); complex tensors are not supported");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, "[", i, "] must be ", dtype, " (", why,
              "), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, "[", i, "] must be contiguous");
  TORCH_CHECK(t.numel() == param.numel(), op, ": ", name, "[", i, "] has ", t.numel(),
              " elements but params[", i, "] has ", param.numel());
}

// A 1-element float32 CPU tensor's value (steps, grad_scale, found_inf).
float scalar_value(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(t.defined() && t.layout() == at::kStrided && t.device().is_cpu(), op, ": ", name,
              " must be a dense CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, op, ": ", name,
              " must be a 1-element float32 tensor, got ", t.scalar_type(), " with ", t.numel(),
              " elements");
  return *t.data_ptr<float>();
}

// A per-tensor list of the op: it must have one tensor per param, or (when `optional`, i.e.
// the schema allows "unused") be empty. Returns whether it is used.
bool check_list_size(const char* op, const char* name, at::TensorList list, size_t n,
                     bool used, bool may_be_empty) {
  if (!used && list.empty()) return false;
  if (may_be_empty && list.empty()) return false;
  TORCH_CHECK(list.size() == n, op, ": ", name, " must have one tensor per param (", n,
              ")", (may_be_empty || !used) ? " or be empty" : "", ", got ", list.size());
  return used;
}

struct StateList {
  const char* name;
  at::TensorList list;
  bool used;          // the options need it
  bool may_be_empty;  // the schema lets it be empty (then it is unused)
};

// Validates the lists and returns one slot per param. `states` are at most 3, in the order the
// op's kernel indexes them; an unused state gets a null pointer.
std::vector<Slot> make_slots(const char* op, at::TensorList params, at::TensorList grads,
                             at::TensorList master_params, const std::vector<StateList>& states,
                             const at::TensorList* steps) {
  const size_t n = params.size();
  check_list_size(op, "grads", grads, n, true, false);
  const bool master = check_list_size(op, "master_params", master_params, n, true, true);
  std::vector<bool> used;
  for (const auto& s : states)
    used.push_back(check_list_size(op, s.name, s.list, n, s.used, s.may_be_empty));
  if (steps) check_list_size(op, "steps", *steps, n, true, false);

  std::vector<Slot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    const at::ScalarType pt = p.scalar_type();
    TORCH_CHECK(!at::isComplexType(pt), op, ": params[", i, "] is complex (", pt,
                "); complex tensors are not supported");
    TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || is_low(pt), op, ": params[", i,
                "] must be float32, float64, float16 or bfloat16, got ", pt);
    check_tensor(op, "params", i, p, p, pt, "a supported dtype");
    check_tensor(op, "grads", i, grads[i], p, pt, "the dtype of params[i]");
    const at::ScalarType state_t = master ? at::kFloat : pt;
    const char* why = master ? "float32 with master_params" : "the dtype of params[i]";
    Slot& t = slots[i];
    t.param = p.data_ptr();
    t.grad = grads[i].data_ptr();
    t.master = nullptr;
    t.numel = p.numel();
    t.step = 0;
    if (master) {
      TORCH_CHECK(is_low(pt), op, ": with master_params, params[", i,
                  "] must be float16 or bfloat16, got ", pt);
      check_tensor(op, "master_params", i, master_params[i], p, at::kFloat, "fp32 master weights");
      t.master = master_params[i].data_ptr();
    }
    for (size_t j = 0; j < 3; ++j) {
      t.state[j] = nullptr;
      if (j < states.size() && used[j]) {
        check_tensor(op, states[j].name, i, states[j].list[i], p, state_t, why);
        t.state[j] = states[j].list[i].data_ptr();
      }
    }
    if (steps) t.step = scalar_value(op, "steps[" + std::to_string(i) + "]", (*steps)[i]);
    switch (pt) {
      case at::kFloat: t.layout = Layout::kFloat; break;
      case at::kDouble: t.layout = Layout::kDouble; break;
      case at::kHalf: t.layout = master ? Layout::kHalfMaster : Layout::kHalf; break;
      default: t.layout = master ? Layout::kBFloat16Master : Layout::kBFloat16; break;
    }
  }
  return slots;
}

// grad_scale / found_inf. Returns false when found_inf says to skip the step (found_inf != 0,
// NaN included, as the reference's `float(found_inf) != 0`).
bool read_scaler(const char* op, const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf, bool maximize, Common& c) {
  c.maximize = maximize;
  if (grad_scale.has_value() && grad_scale->defined()) {
    c.has_scale = true;
    c.grad_scale = scalar_value(op, "grad_scale", *grad_scale);
  }
  if (found_inf.has_value() && found_inf->defined())
    return scalar_value(op, "found_inf", *found_inf) == 0.f;
  return true;
}

// ---------------------------------------------------------------------------------------------
// The four updates. Each kernel<M>(slot) returns a functor (theta, g, s[3]) -> theta, s updated
// in place, with the reference's operations in its order; scalars rounded to M once.
// ---------------------------------------------------------------------------------------------

// Adam/AdamW. s = {exp_avg, exp_avg_sq, max_exp_avg_sq}.
struct AdamOp {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled, amsgrad;

  template <typename M>
  struct Kernel {
    using V = Vectorized<M>;
    V beta1, one_minus_beta1, beta2, one_minus_beta2, wd, decay, step_size, bc2_sqrt, eps;
    bool l2, decoupled, amsgrad;
    void operator()(V& theta, V g, V* s) const {
      if (decoupled) theta = theta * decay;
      if (l2) g = g + wd * theta;
      s[0] = s[0] * beta1 + one_minus_beta1 * g;
      s[1] = s[1] * beta2 + one_minus_beta2 * g * g;
      V v = s[1];
      if (amsgrad) v = s[2] = at::vec::maximum(s[2], v);  // NaN-propagating, as torch.maximum
      const V denom = v.sqrt() / bc2_sqrt + eps;
      theta = theta - step_size * s[0] / denom;
    }
  };

  template <typename M>
  Kernel<M> kernel(const Slot& t) const {
    using V = Vectorized<M>;
    // bias corrections in double, once per tensor (the reference's Python floats)
    const double step_size = lr / (1 - std::pow(beta1, t.step));
    const double bc2_sqrt = std::sqrt(1 - std::pow(beta2, t.step));
    return {V(M(beta1)), V(M(1 - beta1)), V(M(beta2)), V(M(1 - beta2)), V(M(weight_decay)),
            V(M(1 - lr * weight_decay)), V(M(step_size)), V(M(bc2_sqrt)), V(M(eps)),
            weight_decay != 0 && !decoupled, weight_decay != 0 && decoupled, amsgrad};
  }
};

// SGD. s = {momentum_buffer}.
struct SgdOp {
  double lr, weight_decay, momentum, dampening;
  bool nesterov, first;

  template <typename M>
  struct Kernel {
    using V = Vectorized<M>;
    V lr, wd, mu, one_minus_dampening;
    bool l2, has_momentum, nesterov, first;
    void operator()(V& theta, V g, V* s) const {
      if (l2) g = g + wd * theta;
      if (has_momentum) {
        s[0] = first ? g : mu * s[0] + one_minus_dampening * g;
        g = nesterov ? g + mu * s[0] : s[0];
      }
      theta = theta - lr * g;
    }
  };

  template <typename M>
  Kernel<M> kernel(const Slot&) const {
    using V = Vectorized<M>;
    return {V(M(lr)), V(M(weight_decay)), V(M(momentum)), V(M(1 - dampening)),
            weight_decay != 0, momentum != 0, nesterov, first};
  }
};

// Adagrad. s = {state_sum}.
struct AdagradOp {
  double lr, lr_decay, weight_decay, eps;

  template <typename M>
  struct Kernel {
    using V = Vectorized<M>;
    V clr, wd, eps;
    bool l2;
    void operator()(V& theta, V g, V* s) const {
      if (l2) g = g + wd * theta;
      s[0] = s[0] + g * g;
      theta = theta - clr * g / (s[0].sqrt() + eps);
    }
  };

  template <typename M>
  Kernel<M> kernel(const Slot& t) const {
    using V = Vectorized<M>;
    const double clr = lr / (1 + (t.step - 1) * lr_decay);
    return {V(M(clr)), V(M(weight_decay)), V(M(eps)), weight_decay != 0};
  }
};

// RMSprop. s = {square_avg, grad_avg, momentum_buffer}.
struct RmspropOp {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered;

  template <typename M>
  struct Kernel {
    using V = Vectorized<M>;
    V lr, alpha, one_minus_alpha, eps, wd, mu;
    bool l2, centered, has_momentum;
    void operator()(V& theta, V g, V* s) const {
      if (l2) g = g + wd * theta;
      s[0] = alpha * s[0] + one_minus_alpha * g * g;
      V sigma;
      if (centered) {
        s[1] = s[1] + one_minus_alpha * (g - s[1]);
        sigma = (s[0] - s[1] * s[1]).sqrt() + eps;
      } else {
        sigma = s[0].sqrt() + eps;
      }
      if (has_momentum) {
        s[2] = mu * s[2] + g / sigma;
        theta = theta - lr * s[2];
      } else {
        theta = theta - lr * g / sigma;
      }
    }
  };

  template <typename M>
  Kernel<M> kernel(const Slot&) const {
    using V = Vectorized<M>;
    return {V(M(lr)), V(M(alpha)), V(M(1 - alpha)), V(M(eps)), V(M(weight_decay)),
            V(M(momentum)), weight_decay != 0, centered, momentum > 0};
  }
};

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

void fused_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList master_params, at::TensorList steps, double lr, double beta1,
                double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
                bool amsgrad, bool maximize, const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf) {
  const char* op = "fused_adam";
  const auto slots = make_slots(op, params, grads, master_params,
                                {{"exp_avgs", exp_avgs, true, false},
                                 {"exp_avg_sqs", exp_avg_sqs, true, false},
                                 {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad, !amsgrad}},
                                &steps);
  Common c;
  if (!read_scaler(op, grad_scale, found_inf, maximize, c)) return;
  run_all(AdamOp{lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad}, slots, c);
}

void fused_sgd(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               at::TensorList master_params, double lr, double weight_decay, double momentum,
               double dampening, bool nesterov, bool maximize, bool is_first_step,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  const char* op = "fused_sgd";
  const bool has_momentum = momentum != 0;
  const auto slots = make_slots(
      op, params, grads, master_params,
      {{"momentum_buffers", momentum_buffers, has_momentum, !has_momentum}}, nullptr);
  Common c;
  if (!read_scaler(op, grad_scale, found_inf, maximize, c)) return;
  run_all(SgdOp{lr, weight_decay, momentum, dampening, nesterov, is_first_step}, slots, c);
}

void fused_adagrad(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                   at::TensorList master_params, at::TensorList steps, double lr,
                   double lr_decay, double weight_decay, double eps, bool maximize,
                   const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf) {
  const char* op = "fused_adagrad";
  const auto slots = make_slots(op, params, grads, master_params,
                                {{"state_sums", state_sums, true, false}}, &steps);
  Common c;
  if (!read_scaler(op, grad_scale, found_inf, maximize, c)) return;
  run_all(AdagradOp{lr, lr_decay, weight_decay, eps}, slots, c);
}

void fused_rmsprop(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                   at::TensorList grad_avgs, at::TensorList momentum_buffers,
                   at::TensorList master_params, double lr, double alpha, double eps,
                   double weight_decay, double momentum, bool centered, bool maximize,
                   const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf) {
  const char* op = "fused_rmsprop";
  const bool has_momentum = momentum > 0;
  const auto slots = make_slots(
      op, params, grads, master_params,
      {{"square_avgs", square_avgs, true, false},
       {"grad_avgs", grad_avgs, centered, !centered},
       {"momentum_buffers", momentum_buffers, has_momentum, !has_momentum}},
      nullptr);
  Common c;
  if (!read_scaler(op, grad_scale, found_inf, maximize, c)) return;
  run_all(RmspropOp{lr, alpha, eps, weight_decay, momentum, centered}, slots, c);
}

void increment_steps(at::TensorList steps, const std::optional<at::Tensor>& found_inf) {
  const char* op = "increment_steps";
  for (size_t i = 0; i < steps.size(); ++i)  // every check before the first write
    scalar_value(op, "steps[" + std::to_string(i) + "]", steps[i]);
  if (found_inf.has_value() && found_inf->defined() &&
      scalar_value(op, "found_inf", *found_inf) != 0.f)
    return;
  for (const at::Tensor& s : steps) *s.data_ptr<float>() += 1.f;
}

}  // namespace

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("increment_steps", &increment_steps);
  m.impl("fused_adam", &fused_adam);
  m.impl("fused_sgd", &fused_sgd);
  m.impl("fused_adagrad", &fused_adagrad);
  m.impl("fused_rmsprop", &fused_rmsprop);
}

// A sparse gradient sends the call to the SparseCPU key, where the dispatcher alone would say
// only "could not run ... SparseCPU backend"; the same functions there name the argument.
TORCH_LIBRARY_IMPL(leedl_fast, SparseCPU, m) {
  m.impl("fused_adam", &fused_adam);
  m.impl("fused_sgd", &fused_sgd);
  m.impl("fused_adagrad", &fused_adagrad);
  m.impl("fused_rmsprop", &fused_rmsprop);
}

}  // namespace leedl_fast

#pragma GCC pop_options
