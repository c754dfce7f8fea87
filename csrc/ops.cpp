// Every leedl_fast op schema, defined once. Kernels register per device elsewhere:
// CPU in csrc/cpu/<family>.cpp (TORCH_LIBRARY_IMPL), CUDA/Triton from Python
// (leedl_fast/_ops/<family>.py, torch.library.register_kernel).
//
// Conventions for the normalization family:
//   x is 2-D (rows M, width N) and contiguous; the Python glue flattens the leading dims.
//   mean/rstd have shape (M,), float32 (float64 for float64 x), saved for the backward.
//   Backward outputs that are not needed (no weight / no bias) come back as shape (0,).
#include <torch/extension.h>

TORCH_LIBRARY(leedl_fast, m) {
  // --- normalization (docs/norm.md) ---
  m.def("layer_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps)"
        " -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("rms_norm_fwd(Tensor x, Tensor? weight, float eps) -> (Tensor out, Tensor rstd)");
  // "Add & Norm": residual_out = x + residual; out = norm(residual_out), one pass over memory.
  m.def("add_layer_norm_fwd(Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def("add_rms_norm_fwd(Tensor x, Tensor residual, Tensor? weight, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor rstd)");
  // x is the tensor that was normalized (residual_out for the add variants); dresidual, when
  // given, is the gradient flowing into residual_out from elsewhere and is added to dx.
  m.def("layer_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd,"
        " Tensor? dresidual, bool has_bias) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("rms_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, Tensor? dresidual)"
        " -> (Tensor dx, Tensor dweight)");

  // --- attention (docs/attention.md) ---
  // q (B, Hq, Lq, D), k/v (B, Hk, Lk, D) with Hq a multiple of Hk (GQA); attn_mask boolean
  // (true = may attend) or additive, broadcastable to (B, Hq, Lq, Lk); window_left/right < 0
  // means unbounded (causal is window_right = 0, aligned bottom-right). lse (B, Hq, Lq): natural
  // log, fp32 (fp64 for fp64 inputs), +inf for a query that sees no key.
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, float scale,"
        " bool is_causal, int window_left, int window_right) -> (Tensor out, Tensor lse)");
  m.def("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor? attn_mask, float scale, bool is_causal, int window_left, int window_right)"
        " -> (Tensor dq, Tensor dk, Tensor dv)");

  // --- recurrent (docs/rnn.md) ---
  // One LSTM layer, one direction, the whole sequence. gates_x (T, B, 4H) = x W_ih^T + b_ih +
  // b_hh (the input projection, done by the caller for all steps at once), w_hh (4H, H),
  // h0/c0 (B, H); torch's gate order i, f, g, o. cells (T, B, H) and gates (T, B, 4H, the
  // activated i, f, g, o) are saved for the backward, in fp32 (fp64 for fp64 inputs).
  m.def("lstm_sequence_fwd(Tensor gates_x, Tensor w_hh, Tensor h0, Tensor c0)"
        " -> (Tensor y, Tensor h_n, Tensor c_n, Tensor cells, Tensor gates)");
  m.def("lstm_sequence_bwd(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor gates, Tensor cells,"
        " Tensor y, Tensor h0, Tensor c0, Tensor w_hh)"
        " -> (Tensor dgates_x, Tensor dw_hh, Tensor dh0, Tensor dc0)");
  // One GRU layer, one direction (gate order r, z, n). gates_x (T, B, 3H) = x W_ih^T + b_ih;
  // b_hh is applied inside (b_hn sits inside r * (h W_hn + b_hn)). saved (T, B, 4H): r, z, n
  // and h W_hn + b_hn per step, fp32 (fp64 for fp64). db_hh is (0,) when b_hh was None.
  m.def("gru_sequence_fwd(Tensor gates_x, Tensor w_hh, Tensor? b_hh, Tensor h0)"
        " -> (Tensor y, Tensor h_n, Tensor saved)");
  m.def("gru_sequence_bwd(Tensor dy, Tensor dh_n, Tensor saved, Tensor y, Tensor h0,"
        " Tensor w_hh, bool has_bias) -> (Tensor dgates_x, Tensor dw_hh, Tensor db_hh,"
        " Tensor dh0)");

  // --- convolution (docs/conv.md) ---
  // x (N, C, H, W), NCHW or channels_last (any strides: kernels read x through its strides or
  // the glue makes it contiguous in one of the two formats); weight (O, C / groups, KH, KW);
  // bias (O,); residual shaped like out. padding is (top, bottom, left, right) -- 'same' with an
  // even kernel pads one more on the bottom/right, as torch does. The epilogue:
  //   z = conv(x, weight) + bias + residual;  out = activation(z)
  // activation is "none", "relu", "gelu" (exact, erf) or "silu". out has x's dtype and x's
  // memory format. z is saved for the backward only where the activation needs it (gelu,
  // silu); otherwise it is (0,) and the backward uses out (relu: out > 0).
  m.def("conv2d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride,"
        " int[4] padding, int[2] dilation, int groups, str activation) -> (Tensor out, Tensor z)");
  // dz = dout * activation'(z); dx = the transposed convolution of dz, dweight = the
  // correlation of x with dz, dbias = dz summed over (N, H, W), dresidual = dz. An output whose
  // output_mask entry is false comes back as (0,). dweight and dbias in weight's dtype
  // (accumulated in fp32 for fp16/bf16).
  m.def("conv2d_bwd(Tensor dout, Tensor x, Tensor weight, Tensor out, Tensor z, int[2] stride,"
        " int[4] padding, int[2] dilation, int groups, str activation, bool[4] output_mask)"
        " -> (Tensor dx, Tensor dweight, Tensor dbias, Tensor dresidual)");
  // Conv -> activation -> pooling in one pass, inference only (no autograd; training runs
  // conv2d_fwd then torch's pooling): out = pool(activation(conv(x, weight) + bias)), pool
  // "max" or "avg" over non-overlapping pool_size x pool_size windows (stride = pool_size, no
  // padding, floor: the book's pooling and torch's MaxPool2d/AvgPool2d(pool_size) defaults),
  // out (N, O, OH / pool_size, OW / pool_size) in x's memory format. The full-resolution
  // activation is never written to memory.
  m.def("conv2d_pool_fwd(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding,"
        " int[2] dilation, int groups, str activation, str pool, int pool_size) -> Tensor");
  // The depthwise-separable block, inference only (no autograd; training composes two
  // conv2d_fwd calls): mid = dw_activation(depthwise(x, dw_weight) + dw_bias), groups = C,
  // dw_weight (C, 1, KH, KW) -- a BatchNorm after the depthwise conv is folded into dw_weight
  // and dw_bias; out = activation(mid @ pw_weight (O, C, 1, 1) + pw_bias). mid is kept on chip
  // where it fits, never written whole to memory.
  m.def("separable_conv2d_fwd(Tensor x, Tensor dw_weight, Tensor? dw_bias, str dw_activation,"
        " Tensor pw_weight, Tensor? pw_bias, str activation, int[2] stride, int[4] padding,"
        " int[2] dilation) -> Tensor");

  // --- quantized matmul (docs/quant.md) ---
  // y = x W^T + bias with W (N, K) stored quantized; x (M, K) float16/bfloat16/float32
  // (the glue flattens leading dims), y (M, N) in x's dtype, bias (N,) in x's dtype.
  // Scales, zeros and tables are float32. Kernels never materialize the float weight.
  //
  // int8 weight-only, per output channel, symmetric: W[n, k] = qweight[n, k] * scales[n],
  // qweight int8 (N, K), scales (N,).
  m.def("int8_weight_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor");
  // int4 weight-only, group-wise asymmetric: q in [0, 15], W[n, k] = (q[n, k] - zeros[n, g]) *
  // scales[n, g] with g = k / group_size; packed uint8 (N, K / 2): byte j of row n holds
  // q[n, 2j] in its low nibble and q[n, 2j + 1] in its high nibble; scales and zeros
  // (N, K / group_size). K is a multiple of group_size, group_size a multiple of 2.
  m.def("int4_weight_linear(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group_size,"
        " Tensor? bias) -> Tensor");
  // int8 dynamic: each row of x is quantized on the fly, sx[m] = max_k |x[m, k]| / 127,
  // xq = round(x / sx) (ties to even) in int8; acc = xq qweight^T exactly in int32;
  // y = acc * sx[m] * scales[n] + bias. qweight int8 (N, K), scales (N,) as above.
  m.def("int8_dynamic_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor");
  // Codebook (the book's weight clustering, §17.3): W[n, k] = table[idx[n, k]], idx in
  // [0, 2^bits), bits in {1, 2, 3, 4}; packed uint8 (N, ceil(K * bits / 8)): the index of
  // W[n, k] is bits [k * bits, (k + 1) * bits) of row n's byte string, least significant bit
  // first (bit i of the string is bit i % 8 of byte i / 8); table (2^bits,) float32.
  m.def("codebook_linear(Tensor x, Tensor packed, Tensor table, int bits, int in_features,"
        " Tensor? bias) -> Tensor");

  // --- fused optimizers (docs/optim.md; the math: leedl_fast/reference/optim.py) ---
  // One call updates every tensor of a list in place: params[i] with grads[i] and its state
  // tensors (same shape, contiguous). Empty state lists mean "not used" (amsgrad off, no master
  // weights, no momentum). Mixed precision: params may be float16/bfloat16 with their state in
  // the param dtype (torch's layout; the math runs in fp32), or, when master_params is given, the
  // math reads and writes the fp32 master_params and the fp32 state, and params[i] receives
  // master_params[i] rounded to its dtype. grad_scale / found_inf (1-element fp32 tensors on the
  // params' device, as torch.amp.GradScaler makes them): when found_inf != 0 nothing is written;
  // otherwise every grad is divided by grad_scale, written back unscaled, and used. steps[i]
  // (1-element float32) is the step count *after* this step's increment (the caller adds 1).
  // steps[i] += 1 for every tensor of the list, unless found_inf != 0 (the optimizers' step
  // count, one call instead of one dispatch per param: 148 CPU scalars cost ~230 us through
  // torch._foreach_add_). steps: 1-element float32 tensors on one device.
  m.def("increment_steps(Tensor(a!)[] steps, Tensor? found_inf=None) -> ()");
  m.def("fused_adam(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs,"
        " Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] master_params,"
        " Tensor[] steps, float lr, float beta1, float beta2, float eps, float weight_decay,"
        " bool decoupled_weight_decay, bool amsgrad, bool maximize, Tensor? grad_scale=None,"
        " Tensor? found_inf=None) -> ()");
  // SGD with momentum / dampening / nesterov. is_first_step: the momentum buffers are
  // initialised to the (decayed) gradient instead of updated, as torch does on a fresh buffer.
  m.def("fused_sgd(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers,"
        " Tensor(d!)[] master_params, float lr, float weight_decay, float momentum,"
        " float dampening, bool nesterov, bool maximize, bool is_first_step,"
        " Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def("fused_adagrad(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums,"
        " Tensor(d!)[] master_params, Tensor[] steps, float lr, float lr_decay,"
        " float weight_decay, float eps, bool maximize, Tensor? grad_scale=None,"
        " Tensor? found_inf=None) -> ()");
  // grad_avgs only when centered, momentum_buffers only when momentum > 0.
  m.def("fused_rmsprop(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs,"
        " Tensor(d!)[] grad_avgs, Tensor(e!)[] momentum_buffers, Tensor(f!)[] master_params,"
        " float lr, float alpha, float eps, float weight_decay, float momentum, bool centered,"
        " bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}

// Importable as a Python module so `import leedl_fast._C` loads the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "leedl_fast C++ ops; use them through torch.ops.leedl_fast";
}
