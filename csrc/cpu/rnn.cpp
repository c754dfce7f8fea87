// CPU kernels for the recurrent family: a whole LSTM or GRU layer (one direction) in one call,
// forward and backward (the GRU at the end of the file follows the LSTM's plan). The math is docs/rnn.md (book §5.5-5.6, torch's gate order i, f, g, o).
//
// The input projection x_t W_ih^T + b (half of the FLOPs) has no time dependence: the caller
// does it for all steps in one big GEMM and passes its result, gates_x (T, B, 4H). What remains
// is the recurrence, which is latency-bound: step t needs all of h_{t-1}. So the kernel is a
// persistent team of threads (one OpenMP parallel region for the whole sequence, as a GPU's
// persistent kernel is one launch), each owning a slice of the hidden units for every step:
//
//   gates[t][:, slice of each gate] = h_{t-1} W_hh[slice]^T (+ gates_x[t])   (4 tile products)
//   i, f, o = sigmoid, g = tanh;  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)  (fused, in place)
//   barrier                                   (step t+1 reads every unit of h_t)
//
// W_hh is transposed once (H x 4H) so every tile product is a plain row-major A B (blas.h).
// The activated gates and the cells are kept for the backward, which runs the same team
// backwards in time, one barrier per step:
//
//   dh = dy_t + dh_next;  dc = dc_next + dh o (1 - tanh^2 c_t)
//   dG_t = (dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c_t) o(1-o));  dc_next = dc f
//   barrier;  dh_next[:, slice] = dG_t W_hh[:, slice]      (each thread its own columns)
//
// and leaves dW_hh = sum_t dG_t^T h_{t-1} to one GEMM over all steps afterwards.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#include <omp.h>

#include "blas.h"
#include "fast_math.h"
#include "vec_loops.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace leedl_fast {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// The hidden units [begin, end) thread `rank` of `team` owns: whole vectors where possible.
std::pair<int64_t, int64_t> unit_slice(int64_t H, int rank, int team) {
  constexpr int64_t kAlign = 16;
  const int64_t per = ((H + team - 1) / team + kAlign - 1) / kAlign * kAlign;
  const int64_t begin = std::min(H, rank * per);
  return {begin, std::min(H, begin + per)};
}

// Threads for the persistent team: torch's setting, one inside an enclosing parallel region,
// and no more than there are 16-unit slices.
int team_size(int64_t H) {
  if (at::in_parallel_region()) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                  (H + 15) / 16)));
}

// The gate nonlinearities: fast_math.h's for fp32 (a fifth of the step's time went to Sleef's
// tanh before), ATen's otherwise.
template <typename T>
inline Vec<T> sigmoid(Vec<T> x) {
#if defined(LEEDL_FAST_FAST_MATH)
  if constexpr (std::is_same_v<T, float>) return Vec<T>(sigmoid_ps(x));
#endif
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

template <typename T>
inline Vec<T> tanh(Vec<T> x) {
#if defined(LEEDL_FAST_FAST_MATH)
  if constexpr (std::is_same_v<T, float>) return Vec<T>(tanh_ps(x));
#endif
  return x.tanh();
}

template <typename T>
void lstm_fwd_kernel(int64_t T_, int64_t B, int64_t H, const T* wt /* (H, 4H) */, const T* h0,
                     const T* c0, const T* gates_x /* (T, B, 4H) */, T* gates /* (T, B, 4H) */,
                     T* y /* (T, B, H) */, T* cells /* (T, B, H) */) {
  const int64_t G = 4 * H;
  const int team = team_size(H);
#pragma omp parallel num_threads(team)
  {
    const auto [j0, j1] = unit_slice(H, omp_get_thread_num(), omp_get_num_threads());
    const int64_t n = j1 - j0;
    for (int64_t t = 0; t < T_; ++t) {
      T* g_t = gates + t * B * G;
      const T* h_prev = t == 0 ? h0 : y + (t - 1) * B * H;
      const T* c_prev = t == 0 ? c0 : cells + (t - 1) * B * H;
      if (n > 0) {
        for (int64_t gate = 0; gate < 4; ++gate)
          matmul(B, n, H, h_prev, H, wt + gate * H + j0, G, g_t + gate * H + j0, G,
                 /*accumulate=*/false);
        for (int64_t b = 0; b < B; ++b) {
          T* row = g_t + b * G;
          const T* xrow = gates_x + (t * B + b) * G;
          const T* cp = c_prev + b * H;
          T* c = cells + (t * B + b) * H;
          T* h = y + (t * B + b) * H;
          auto step = [&](int64_t j, int64_t count) {
            auto pre = [&](int64_t gate) {  // recurrent part + input projection
              return Vec<T>::loadu(row + gate * H + j, count) +
                     Vec<T>::loadu(xrow + gate * H + j, count);
            };
            const Vec<T> i = sigmoid(pre(0));
            const Vec<T> f = sigmoid(pre(1));
            const Vec<T> gg = tanh(pre(2));
            const Vec<T> o = sigmoid(pre(3));
            const Vec<T> cn = f * Vec<T>::loadu(cp + j, count) + i * gg;
            i.store(row + j, count);
            f.store(row + H + j, count);
            gg.store(row + 2 * H + j, count);
            o.store(row + 3 * H + j, count);
            cn.store(c + j, count);
            (o * tanh(cn)).store(h + j, count);
          };
          for_each_vec<T>(n, [&](int64_t i, auto count) { step(j0 + i, count); });
        }
      }
#pragma omp barrier
    }
    matmul_release();  // on every thread of the team: oneDNN's state is per thread
  }
}

template <typename T>
void lstm_bwd_kernel(int64_t T_, int64_t B, int64_t H, const T* w /* (4H, H) */,
                     const T* gates /* activated */, const T* cells, const T* c0, const T* dy,
                     T* dgates /* (T, B, 4H) out */, T* dh_next /* (B, H) in/out */,
                     T* dc_next /* (B, H) in/out */) {
  const int64_t G = 4 * H;
  const int team = team_size(H);
#pragma omp parallel num_threads(team)
  {
    const auto [j0, j1] = unit_slice(H, omp_get_thread_num(), omp_get_num_threads());
    const int64_t n = j1 - j0;
    const Vec<T> one(T(1));
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* c_prev = t == 0 ? c0 : cells + (t - 1) * B * H;
      T* dg_t = dgates + t * B * G;
      if (n > 0) {
        for (int64_t b = 0; b < B; ++b) {
          const T* row = gates + (t * B + b) * G;
          T* drow = dg_t + b * G;
          const T* c = cells + (t * B + b) * H;
          const T* cp = c_prev + b * H;
          const T* dyr = dy + (t * B + b) * H;
          T* dh = dh_next + b * H;
          T* dc = dc_next + b * H;
          auto step = [&](int64_t j, int64_t count) {
            const Vec<T> i = Vec<T>::loadu(row + j, count);
            const Vec<T> f = Vec<T>::loadu(row + H + j, count);
            const Vec<T> gg = Vec<T>::loadu(row + 2 * H + j, count);
            const Vec<T> o = Vec<T>::loadu(row + 3 * H + j, count);
            const Vec<T> tc = tanh(Vec<T>::loadu(c + j, count));
            const Vec<T> dhv = Vec<T>::loadu(dyr + j, count) + Vec<T>::loadu(dh + j, count);
            const Vec<T> dcv = Vec<T>::loadu(dc + j, count) + dhv * o * (one - tc * tc);
            (dcv * gg * i * (one - i)).store(drow + j, count);
            (dcv * Vec<T>::loadu(cp + j, count) * f * (one - f)).store(drow + H + j, count);
            (dcv * i * (one - gg * gg)).store(drow + 2 * H + j, count);
            (dhv * tc * o * (one - o)).store(drow + 3 * H + j, count);
            (dcv * f).store(dc + j, count);
          };
          for_each_vec<T>(n, [&](int64_t i, auto count) { step(j0 + i, count); });
        }
      }
#pragma omp barrier
      // dh_{t-1} for this thread's units: every gate of every unit feeds them (K = 4H).
      if (n > 0) matmul(B, n, G, dg_t, G, w + j0, H, dh_next + j0, H, /*accumulate=*/false);
    }
    matmul_release();
  }
}

// ------------------------------------------------------------------------------------- GRU
//
// torch's GRU (gate order r, z, n; the book's §5 "two gates"):
//   r = sigmoid(x W_ir + b_ir + h W_hr + b_hr),  z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
//   hn = h W_hn + b_hn,  n = tanh(x W_in + b_in + r * hn),  h' = (1 - z) n + z h
// gates_x holds the input projections with b_ih; b_hh is added here, since b_hn sits inside
// r * (.). Saved per step: r, z, n, hn (T, B, 4H).

template <typename T>
void gru_fwd_kernel(int64_t T_, int64_t B, int64_t H, const T* wt /* (H, 3H) */,
                    const T* b_hh /* (3H) or null */, const T* h0, const T* gates_x,
                    T* hp /* (B, 3H) per-step scratch */, T* saved /* (T, B, 4H) */,
                    T* y /* (T, B, H) */) {
  const int64_t G = 3 * H;
  const int team = team_size(H);
#pragma omp parallel num_threads(team)
  {
    const auto [j0, j1] = unit_slice(H, omp_get_thread_num(), omp_get_num_threads());
    const int64_t n = j1 - j0;
    const Vec<T> one(T(1));
    for (int64_t t = 0; t < T_; ++t) {
      const T* h_prev = t == 0 ? h0 : y + (t - 1) * B * H;
      if (n > 0) {
        for (int64_t gate = 0; gate < 3; ++gate)
          matmul(B, n, H, h_prev, H, wt + gate * H + j0, G, hp + gate * H + j0, G,
                 /*accumulate=*/false);
        for (int64_t b = 0; b < B; ++b) {
          const T* hrow = hp + b * G;
          const T* xrow = gates_x + (t * B + b) * G;
          const T* hpr = h_prev + b * H;
          T* srow = saved + (t * B + b) * 4 * H;
          T* h = y + (t * B + b) * H;
          auto step = [&](int64_t j, int64_t count) {
            auto rec = [&](int64_t gate) {  // h W_h(gate) + b_h(gate)
              Vec<T> v = Vec<T>::loadu(hrow + gate * H + j, count);
              return b_hh ? v + Vec<T>::loadu(b_hh + gate * H + j, count) : v;
            };
            auto inp = [&](int64_t gate) { return Vec<T>::loadu(xrow + gate * H + j, count); };
            const Vec<T> r = sigmoid(inp(0) + rec(0));
            const Vec<T> z = sigmoid(inp(1) + rec(1));
            const Vec<T> hn = rec(2);
            const Vec<T> nn = tanh(inp(2) + r * hn);
            r.store(srow + j, count);
            z.store(srow + H + j, count);
            nn.store(srow + 2 * H + j, count);
            hn.store(srow + 3 * H + j, count);
            ((one - z) * nn + z * Vec<T>::loadu(hpr + j, count)).store(h + j, count);
          };
          for_each_vec<T>(n, [&](int64_t i, auto count) { step(j0 + i, count); });
        }
      }
#pragma omp barrier
    }
    matmul_release();  // on every thread of the team: oneDNN's state is per thread
  }
}

// Backward, with dh = dy_t + dh_next:
//   dn_pre = dh (1 - z)(1 - n^2),  dz_pre = dh (h_prev - n) z(1 - z),
//   dr_pre = dn_pre hn r(1 - r);   the recurrent side sees dn_pre * r for the n gate;
//   dh_prev = dh z + [dr_pre, dz_pre, dn_pre r] W_hh.
template <typename T>
void gru_bwd_kernel(int64_t T_, int64_t B, int64_t H, const T* w /* (3H, H) */,
                    const T* saved, const T* y, const T* h0, const T* dy,
                    T* dgates_x /* (T, B, 3H) */, T* dgates_h /* (T, B, 3H) */,
                    T* dh_next /* (B, H) in/out */) {
  const int64_t G = 3 * H;
  const int team = team_size(H);
#pragma omp parallel num_threads(team)
  {
    const auto [j0, j1] = unit_slice(H, omp_get_thread_num(), omp_get_num_threads());
    const int64_t n = j1 - j0;
    const Vec<T> one(T(1));
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* h_prev = t == 0 ? h0 : y + (t - 1) * B * H;
      T* dgh_t = dgates_h + t * B * G;
      if (n > 0) {
        for (int64_t b = 0; b < B; ++b) {
          const T* srow = saved + (t * B + b) * 4 * H;
          T* dxr = dgates_x + (t * B + b) * G;
          T* dhr = dgh_t + b * G;
          const T* hpr = h_prev + b * H;
          const T* dyr = dy + (t * B + b) * H;
          T* dh = dh_next + b * H;
          auto step = [&](int64_t j, int64_t count) {
            const Vec<T> r = Vec<T>::loadu(srow + j, count);
            const Vec<T> z = Vec<T>::loadu(srow + H + j, count);
            const Vec<T> nn = Vec<T>::loadu(srow + 2 * H + j, count);
            const Vec<T> hn = Vec<T>::loadu(srow + 3 * H + j, count);
            const Vec<T> dhv = Vec<T>::loadu(dyr + j, count) + Vec<T>::loadu(dh + j, count);
            const Vec<T> dn = dhv * (one - z) * (one - nn * nn);
            const Vec<T> dz = dhv * (Vec<T>::loadu(hpr + j, count) - nn) * z * (one - z);
            const Vec<T> dr = dn * hn * r * (one - r);
            dr.store(dxr + j, count);
            dz.store(dxr + H + j, count);
            dn.store(dxr + 2 * H + j, count);
            dr.store(dhr + j, count);
            dz.store(dhr + H + j, count);
            (dn * r).store(dhr + 2 * H + j, count);
            (dhv * z).store(dh + j, count);  // the direct path; the product adds the rest
          };
          for_each_vec<T>(n, [&](int64_t i, auto count) { step(j0 + i, count); });
        }
      }
#pragma omp barrier
      if (n > 0) matmul(B, n, G, dgh_t, G, w + j0, H, dh_next + j0, H, /*accumulate=*/true);
    }
    matmul_release();
  }
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_lstm_args(const char* op, const at::Tensor& gates_x, const at::Tensor& w_hh,
                     const at::Tensor& h0, const at::Tensor& c0) {
  TORCH_CHECK(gates_x.dim() == 3, op, ": gates_x must be (T, B, 4H), got ", gates_x.sizes());
  const int64_t B = gates_x.size(1), H = w_hh.size(-1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H, op, ": w_hh must be (4H, H), got ",
              w_hh.sizes());
  TORCH_CHECK(gates_x.size(2) == 4 * H, op, ": gates_x's last dim ", gates_x.size(2),
              " must be 4 * hidden size ", 4 * H);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"h0", &h0},
                                std::pair<const char*, const at::Tensor*>{"c0", &c0}}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == B && t->size(1) == H, op, ": ", name,
                " must be (B, H) = (", B, ", ", H, "), got ", t->sizes());
  }
  for (const at::Tensor* t : {&gates_x, &w_hh, &h0, &c0}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": every tensor must be on the CPU");
    TORCH_CHECK(t->scalar_type() == gates_x.scalar_type(), op,
                ": every tensor must have gates_x's dtype ", gates_x.scalar_type());
  }
  TORCH_CHECK(at::isFloatingType(gates_x.scalar_type()), op, ": floating point only");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_sequence_fwd_cpu(
    const at::Tensor& gates_x, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0) {
  check_lstm_args("lstm_sequence_fwd", gates_x, w_hh, h0, c0);
  const int64_t T_ = gates_x.size(0), B = gates_x.size(1), H = w_hh.size(1);
  const auto type = compute_type(gates_x);
  const at::Tensor gx = gates_x.to(type).contiguous();
  at::Tensor gates = at::empty({T_, B, 4 * H}, gx.options());
  at::Tensor y = at::empty({T_, B, H}, gates.options());
  at::Tensor cells = at::empty({T_, B, H}, gates.options());
  const at::Tensor wt = w_hh.to(type).t().contiguous();
  const at::Tensor h0c = h0.to(type).contiguous(), c0c = c0.to(type).contiguous();
  AT_DISPATCH_FLOATING_TYPES(type, "lstm_sequence_fwd_cpu", [&] {
    lstm_fwd_kernel<scalar_t>(T_, B, H, wt.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
                              c0c.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              gates.data_ptr<scalar_t>(),
                              y.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>());
  });
  const auto dtype = gates_x.scalar_type();
  at::Tensor h_n = T_ > 0 ? y[T_ - 1] : h0c;
  at::Tensor c_n = T_ > 0 ? cells[T_ - 1] : c0c;
  return {y.to(dtype), h_n.to(dtype, false, true), c_n.to(dtype, false, true), cells, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_sequence_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
    const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& y, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh) {
  TORCH_CHECK(gates.dim() == 3 && w_hh.dim() == 2, "lstm_sequence_bwd: gates must be "
              "(T, B, 4H) and w_hh (4H, H)");
  const int64_t T_ = gates.size(0), B = gates.size(1), H = w_hh.size(1);
  TORCH_CHECK(gates.size(2) == 4 * H && w_hh.size(0) == 4 * H,
              "lstm_sequence_bwd: gates ", gates.sizes(), " and w_hh ", w_hh.sizes(),
              " disagree on the hidden size");
  const std::vector<int64_t> seq{T_, B, H}, state{B, H};
  TORCH_CHECK(dy.sizes() == seq && y.sizes() == seq && cells.sizes() == seq,
              "lstm_sequence_bwd: dy, y and cells must be (T, B, H)");
  TORCH_CHECK(dh_n.sizes() == state && dc_n.sizes() == state && h0.sizes() == state &&
                  c0.sizes() == state,
              "lstm_sequence_bwd: dh_n, dc_n, h0 and c0 must be (B, H)");
  for (const at::Tensor* t : {&dy, &dh_n, &dc_n, &gates, &cells, &y, &h0, &c0, &w_hh})
    TORCH_CHECK(t->device().is_cpu(), "lstm_sequence_bwd: every tensor must be on the CPU");
  const auto type = compute_type(h0);
  const auto dtype = h0.scalar_type();
  const at::Tensor gc = gates.to(type).contiguous(), cc = cells.to(type).contiguous();
  const at::Tensor dyc = dy.to(type).contiguous(), w = w_hh.to(type).contiguous();
  const at::Tensor h0c = h0.to(type).contiguous(), c0c = c0.to(type).contiguous();
  at::Tensor dgates = at::empty({T_, B, 4 * H}, gc.options());
  at::Tensor dh = dh_n.to(type, false, true).contiguous();
  at::Tensor dc = dc_n.to(type, false, true).contiguous();
  AT_DISPATCH_FLOATING_TYPES(type, "lstm_sequence_bwd_cpu", [&] {
    lstm_bwd_kernel<scalar_t>(T_, B, H, w.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                              cc.data_ptr<scalar_t>(), c0c.data_ptr<scalar_t>(),
                              dyc.data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>(),
                              dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>());
  });
  // dW_hh = sum_t dG_t^T h_{t-1}: one GEMM over all steps, h_{-1} = h0.
  at::Tensor h_prev = T_ == 0 ? at::empty({0, B, H}, h0c.options())
                              : at::cat({h0c.unsqueeze(0), y.to(type).narrow(0, 0, T_ - 1)});
  at::Tensor dw = at::mm(dgates.reshape({T_ * B, 4 * H}).t(), h_prev.reshape({T_ * B, H}));
  return {dgates.to(dtype), dw.to(dtype), dh.to(dtype), dc.to(dtype)};
}

void check_gru_args(const char* op, const at::Tensor& gates_x, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0) {
  TORCH_CHECK(gates_x.dim() == 3, op, ": gates_x must be (T, B, 3H), got ", gates_x.sizes());
  const int64_t B = gates_x.size(1), H = w_hh.size(-1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H, op, ": w_hh must be (3H, H), got ",
              w_hh.sizes());
  TORCH_CHECK(gates_x.size(2) == 3 * H, op, ": gates_x's last dim ", gates_x.size(2),
              " must be 3 * hidden size ", 3 * H);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, op, ": h0 must be (B, H) = (",
              B, ", ", H, "), got ", h0.sizes());
  std::vector<const at::Tensor*> all{&gates_x, &w_hh, &h0};
  if (b_hh.has_value()) {
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == 3 * H, op, ": b_hh must be (3H,), got ",
                b_hh->sizes());
    all.push_back(&*b_hh);
  }
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->device().is_cpu(), op, ": every tensor must be on the CPU");
    TORCH_CHECK(t->scalar_type() == gates_x.scalar_type(), op,
                ": every tensor must have gates_x's dtype ", gates_x.scalar_type());
  }
  TORCH_CHECK(at::isFloatingType(gates_x.scalar_type()), op, ": floating point only");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_sequence_fwd_cpu(
    const at::Tensor& gates_x, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0) {
  check_gru_args("gru_sequence_fwd", gates_x, w_hh, b_hh, h0);
  const int64_t T_ = gates_x.size(0), B = gates_x.size(1), H = w_hh.size(1);
  const auto type = compute_type(gates_x);
  const at::Tensor gx = gates_x.to(type).contiguous();
  const at::Tensor wt = w_hh.to(type).t().contiguous();
  const at::Tensor h0c = h0.to(type).contiguous();
  const at::Tensor bc = b_hh.has_value() ? b_hh->to(type).contiguous() : at::Tensor();
  at::Tensor hp = at::empty({B, 3 * H}, gx.options());
  at::Tensor saved = at::empty({T_, B, 4 * H}, gx.options());
  at::Tensor y = at::empty({T_, B, H}, gx.options());
  AT_DISPATCH_FLOATING_TYPES(type, "gru_sequence_fwd_cpu", [&] {
    gru_fwd_kernel<scalar_t>(T_, B, H, wt.data_ptr<scalar_t>(),
                             bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                             h0c.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                             hp.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(),
                             y.data_ptr<scalar_t>());
  });
  const auto dtype = gates_x.scalar_type();
  at::Tensor h_n = T_ > 0 ? y[T_ - 1] : h0c;
  return {y.to(dtype), h_n.to(dtype, false, true), saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_sequence_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& saved, const at::Tensor& y,
    const at::Tensor& h0, const at::Tensor& w_hh, bool has_bias) {
  TORCH_CHECK(saved.dim() == 3 && w_hh.dim() == 2, "gru_sequence_bwd: saved must be "
              "(T, B, 4H) and w_hh (3H, H)");
  const int64_t T_ = saved.size(0), B = saved.size(1), H = w_hh.size(1);
  TORCH_CHECK(saved.size(2) == 4 * H && w_hh.size(0) == 3 * H,
              "gru_sequence_bwd: saved ", saved.sizes(), " and w_hh ", w_hh.sizes(),
              " disagree on the hidden size");
  const std::vector<int64_t> seq{T_, B, H}, state{B, H};
  TORCH_CHECK(dy.sizes() == seq && y.sizes() == seq, "gru_sequence_bwd: dy and y must be "
              "(T, B, H)");
  TORCH_CHECK(dh_n.sizes() == state && h0.sizes() == state,
              "gru_sequence_bwd: dh_n and h0 must be (B, H)");
  for (const at::Tensor* t : {&dy, &dh_n, &saved, &y, &h0, &w_hh})
    TORCH_CHECK(t->device().is_cpu(), "gru_sequence_bwd: every tensor must be on the CPU");
  const auto type = compute_type(h0);
  const auto dtype = h0.scalar_type();
  const at::Tensor sc = saved.to(type).contiguous(), yc = y.to(type).contiguous();
  const at::Tensor dyc = dy.to(type).contiguous(), w = w_hh.to(type).contiguous();
  const at::Tensor h0c = h0.to(type).contiguous();
  at::Tensor dgx = at::empty({T_, B, 3 * H}, sc.options());
  at::Tensor dgh = at::empty({T_, B, 3 * H}, sc.options());
  at::Tensor dh = dh_n.to(type, false, true).contiguous();
  AT_DISPATCH_FLOATING_TYPES(type, "gru_sequence_bwd_cpu", [&] {
    gru_bwd_kernel<scalar_t>(T_, B, H, w.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
                             yc.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
                             dyc.data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(),
                             dgh.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>());
  });
  at::Tensor h_prev = T_ == 0 ? at::empty({0, B, H}, h0c.options())
                              : at::cat({h0c.unsqueeze(0), yc.narrow(0, 0, T_ - 1)});
  const at::Tensor dgh2 = dgh.reshape({T_ * B, 3 * H});
  at::Tensor dw = at::mm(dgh2.t(), h_prev.reshape({T_ * B, H}));
  at::Tensor db = has_bias ? dgh2.sum(0) : at::empty({0}, sc.options());
  return {dgx.to(dtype), dw.to(dtype), db.to(dtype), dh.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(leedl_fast, CPU, m) {
  m.impl("lstm_sequence_fwd", &lstm_sequence_fwd_cpu);
  m.impl("lstm_sequence_bwd", &lstm_sequence_bwd_cpu);
  m.impl("gru_sequence_fwd", &gru_sequence_fwd_cpu);
  m.impl("gru_sequence_bwd", &gru_sequence_bwd_cpu);
}

}  // namespace leedl_fast
