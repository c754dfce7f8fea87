"""The optimizers' update equations (BOOK.md §3.2–3.5), one parameter tensor at a time.

These are the oracles of the fused multi-tensor kernels (csrc/cpu/optim.cpp, kernels/optim.py)
and take the same arguments as the ops (csrc/ops.cpp): lists of tensors updated in place. The
notation is the book's: θ the parameters, g the gradient, η the learning rate.

    momentum (§3.2.2)   b ← μ b + (1 − dampening) g          (b ← g on the first step)
                        θ ← θ − η (g + μ b)  with nesterov, else θ ← θ − η b
    AdaGrad (§3.3.1)    s ← s + g²                            (torch keeps the sum, not the mean)
                        θ ← θ − η_t g / (√s + ε),   η_t = η / (1 + (t − 1) · lr_decay)
    RMSProp (§3.3.2)    v ← α v + (1 − α) g²                  (σ² of the book's eq. 3.23)
                        σ = √v + ε  (centered: σ = √(v − ḡ²) + ε with ḡ ← α ḡ + (1 − α) g)
                        θ ← θ − η g / σ,   or with momentum b ← μ b + g / σ, θ ← θ − η b
    Adam (§3.3.3)       m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²      (RMSProp + momentum)
                        θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
                        amsgrad: v̂ ← max(v̂, v) replaces v in the denominator

Weight decay λ: L2 (g ← g + λ θ) everywhere, or decoupled for AdamW (θ ← θ (1 − η λ) before the
update). maximize negates g. The operation order follows torch.optim's fused kernels, so a
trajectory matches torch's to rounding.

Dtypes: the math runs in float64 for float64 tensors and in float32 otherwise (float16/bfloat16
params and state are read, updated in fp32, and rounded back on store). With master_params the
fp32 master copy and fp32 state carry the math and params[i] receives the master rounded to its
dtype. grad_scale/found_inf follow torch's fused optimizers (see csrc/ops.cpp).
"""
import math

import torch


def _math_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _skip(found_inf):
    return found_inf is not None and float(found_inf.reshape(-1)[0]) != 0.0


def _read_grad(grad, grad_scale, maximize, dtype):
    """g in the math dtype: unscaled (and the unscaled grad written back, as torch does)."""
    g = grad.to(dtype)
    if grad_scale is not None:
        g = g / grad_scale.reshape(()).to(dtype)
        grad.copy_(g)
    return -g if maximize else g


def _read_param(i, params, master_params):
    if master_params:
        return master_params[i].to(_math_dtype(master_params[i]))
    return params[i].to(_math_dtype(params[i]))


def _write_param(i, theta, params, master_params):
    if master_params:
        master_params[i].copy_(theta)
    params[i].copy_(theta)


def fused_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr,
               beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
               grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    for i in range(len(params)):
        theta = _read_param(i, params, master_params)
        dt = theta.dtype
        g = _read_grad(grads[i], grad_scale, maximize, dt)
        t = float(steps[i].reshape(-1)[0])
        if weight_decay != 0:
            if decoupled_weight_decay:
                theta = theta * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * theta
        m = exp_avgs[i].to(dt) * beta1 + (1 - beta1) * g
        v = exp_avg_sqs[i].to(dt) * beta2 + (1 - beta2) * g * g
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i].to(dt), v)
            max_exp_avg_sqs[i].copy_(v)
        step_size = lr / (1 - beta1 ** t)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** t)
        denom = v.sqrt() / bias_correction2_sqrt + eps
        _write_param(i, theta - step_size * m / denom, params, master_params)


def fused_sgd(params, grads, momentum_buffers, master_params, lr, weight_decay, momentum,
              dampening, nesterov, maximize, is_first_step, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    for i in range(len(params)):
        theta = _read_param(i, params, master_params)
        g = _read_grad(grads[i], grad_scale, maximize, theta.dtype)
        if weight_decay != 0:
            g = g + weight_decay * theta
        if momentum != 0:
            if is_first_step:
                b = g
            else:
                b = momentum * momentum_buffers[i].to(theta.dtype) + (1 - dampening) * g
            momentum_buffers[i].copy_(b)
            g = g + momentum * b if nesterov else b
        _write_param(i, theta - lr * g, params, master_params)


def fused_adagrad(params, grads, state_sums, master_params, steps, lr, lr_decay, weight_decay,
                  eps, maximize, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    for i in range(len(params)):
        theta = _read_param(i, params, master_params)
        g = _read_grad(grads[i], grad_scale, maximize, theta.dtype)
        t = float(steps[i].reshape(-1)[0])
        if weight_decay != 0:
            g = g + weight_decay * theta
        clr = lr / (1 + (t - 1) * lr_decay)
        s = state_sums[i].to(theta.dtype) + g * g
        state_sums[i].copy_(s)
        _write_param(i, theta - clr * g / (s.sqrt() + eps), params, master_params)


def fused_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, lr,
                  alpha, eps, weight_decay, momentum, centered, maximize, grad_scale=None,
                  found_inf=None):
    if _skip(found_inf):
        return
    for i in range(len(params)):
        theta = _read_param(i, params, master_params)
        dt = theta.dtype
        g = _read_grad(grads[i], grad_scale, maximize, dt)
        if weight_decay != 0:
            g = g + weight_decay * theta
        v = alpha * square_avgs[i].to(dt) + (1 - alpha) * g * g
        square_avgs[i].copy_(v)
        if centered:
            gbar = grad_avgs[i].to(dt) + (1 - alpha) * (g - grad_avgs[i].to(dt))
            grad_avgs[i].copy_(gbar)
            sigma = (v - gbar * gbar).sqrt() + eps
        else:
            sigma = v.sqrt() + eps
        if momentum > 0:
            b = momentum * momentum_buffers[i].to(dt) + g / sigma
            momentum_buffers[i].copy_(b)
            theta = theta - lr * b
        else:
            theta = theta - lr * g / sigma
        _write_param(i, theta, params, master_params)
