"""Glue for the fused optimizer family (schemas: csrc/ops.cpp; math: leedl_fast/reference/optim.py;
design: docs/optim.md).

The four ops update lists of tensors in place and return nothing, so the fakes are no-ops and
there is no autograd. This module registers the fakes and the GPU (Triton) kernels, and gives
validated entries with the ops' argument lists (`fused_adam(...)` etc.), which
leedl_fast.optim's optimizers call through `run` once they have checked their own lists.

Validation (`check`): every list as long as params (state lists may be empty where the schema
says "unused"), one device, contiguous dense real tensors of the param's numel, params float16/
bfloat16/float32/float64 with grads of the same dtype, state in the param dtype (fp32 with
master_params, which need fp16/bf16 params), steps 1-element float32, grad_scale/found_inf
1-element float32 on the params' device. The C++ kernels check the same again.
"""
import torch

from .. import _backend
from ..reference import optim as reference
from ._registry import _pick_direct_impl, register_gpu, triton_kernel

OPS = ("fused_adam", "fused_sgd", "fused_adagrad", "fused_rmsprop")
PARAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOW = (torch.float16, torch.bfloat16)

# which positional arguments of each op are the per-tensor state lists, and which of them are
# allowed to be empty (unused); "steps" lists hold the step counts
_LISTS = {
    "fused_adam": ("grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "master_params",
                   "steps"),
    "fused_sgd": ("grads", "momentum_buffers", "master_params"),
    "fused_adagrad": ("grads", "state_sums", "master_params", "steps"),
    "fused_rmsprop": ("grads", "square_avgs", "grad_avgs", "momentum_buffers", "master_params"),
}
_OPTIONAL = {"max_exp_avg_sqs", "momentum_buffers", "grad_avgs", "master_params"}


def _fake(*args, **kwargs):
    return None


for _op in OPS + ("increment_steps",):
    torch.library.register_fake(f"leedl_fast::{_op}")(_fake)


@torch.library.register_kernel("leedl_fast::increment_steps", "cuda")
def _(steps, found_inf=None):
    """On the GPU the counts are incremented by one list op, reading found_inf on the device
    (no host sync: CUDA-graph safe)."""
    if not steps:
        return
    if found_inf is None:
        torch._foreach_add_(steps, 1)
    else:
        keep = (found_inf.reshape(()) == 0).to(torch.float32)
        torch._foreach_add_(steps, [keep] * len(steps))


for _op in OPS:
    register_gpu(_op, triton=triton_kernel("optim", _op))


# ------------------------------------------------------------------------------- validation

def _fail(op, msg, exc=ValueError):
    raise exc(f"leedl_fast.{op}: {msg}")


def _check_scalar_tensor(op, name, t, device):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a Tensor or None, got {type(t).__name__}", TypeError)
    if t.numel() != 1 or t.dtype != torch.float32:
        _fail(op, f"{name} must be a 1-element float32 tensor, got shape {tuple(t.shape)} "
              f"{t.dtype}", TypeError)
    if t.device != device:
        _fail(op, f"{name} is on {t.device}, the params on {device}", RuntimeError)


def check_param(op, i, p, g):
    """One (param, grad) pair as every optimizer needs it."""
    if not isinstance(p, torch.Tensor):
        _fail(op, f"params[{i}] must be a Tensor, got {type(p).__name__}", TypeError)
    if p.is_sparse or p.layout != torch.strided:
        _fail(op, f"params[{i}] has layout {p.layout}: sparse parameters are not supported",
              TypeError)
    if p.is_complex() or p.dtype not in PARAM_DTYPES:
        _fail(op, f"params[{i}] has dtype {p.dtype}; supported: float16, bfloat16, float32, "
              "float64 (complex parameters: view them as real with torch.view_as_real)",
              TypeError)
    if not isinstance(g, torch.Tensor):
        _fail(op, f"grads[{i}] must be a Tensor, got {type(g).__name__}", TypeError)
    if g.is_sparse or g.layout != torch.strided:
        _fail(op, f"grads[{i}] is sparse ({g.layout}): sparse gradients are not supported "
              "(torch.optim.SparseAdam handles them)", TypeError)
    if g.dtype != p.dtype:
        _fail(op, f"grads[{i}] has dtype {g.dtype}, its param {p.dtype}", TypeError)
    if g.shape != p.shape:
        _fail(op, f"grads[{i}] has shape {tuple(g.shape)}, its param {tuple(p.shape)}")
    if g.device != p.device:
        _fail(op, f"grads[{i}] is on {g.device}, its param on {p.device}", RuntimeError)


def check(op, params, lists, grad_scale=None, found_inf=None):
    """Validate an op call: params and the op's other lists, by name (see _LISTS)."""
    if not isinstance(params, (list, tuple)):
        _fail(op, f"params must be a list of tensors, got {type(params).__name__}", TypeError)
    n = len(params)
    if n == 0:
        return
    device = params[0].device if isinstance(params[0], torch.Tensor) else None
    masters = lists.get("master_params") or []
    for name in _LISTS[op]:
        seq = lists[name]
        if not isinstance(seq, (list, tuple)):
            _fail(op, f"{name} must be a list of tensors, got {type(seq).__name__}", TypeError)
        if len(seq) != n and not (name in _OPTIONAL and len(seq) == 0):
            _fail(op, f"{name} has {len(seq)} tensors, params {n}"
                  + (" (or 0: unused)" if name in _OPTIONAL else ""))
    for i, p in enumerate(params):
        check_param(op, i, p, lists["grads"][i])
        if p.device != device:
            _fail(op, f"params[{i}] is on {p.device}, params[0] on {device}: one call per "
                  "device", RuntimeError)
        if not p.is_contiguous() or not lists["grads"][i].is_contiguous():
            _fail(op, f"params[{i}] and grads[{i}] must be contiguous")
        if masters:
            if p.dtype not in _LOW:
                _fail(op, f"master_params need float16/bfloat16 params; params[{i}] is "
                      f"{p.dtype}", TypeError)
            state_dtype = torch.float32
        else:
            state_dtype = p.dtype
        for name in _LISTS[op]:
            seq = lists[name]
            if name == "grads" or not seq:
                continue
            t = seq[i]
            if not isinstance(t, torch.Tensor):
                _fail(op, f"{name}[{i}] must be a Tensor, got {type(t).__name__}", TypeError)
            if name == "steps":
                if t.numel() != 1 or t.dtype != torch.float32:
                    _fail(op, f"steps[{i}] must be a 1-element float32 tensor, got shape "
                          f"{tuple(t.shape)} {t.dtype}", TypeError)
                continue
            if t.dtype != state_dtype:
                _fail(op, f"{name}[{i}] has dtype {t.dtype}, expected {state_dtype}", TypeError)
            if t.numel() != p.numel():
                _fail(op, f"{name}[{i}] has {t.numel()} elements, params[{i}] {p.numel()}")
            if t.device != device:
                _fail(op, f"{name}[{i}] is on {t.device}, params on {device}", RuntimeError)
            if not t.is_contiguous():
                _fail(op, f"{name}[{i}] must be contiguous")
    _check_scalar_tensor(op, "grad_scale", grad_scale, device)
    _check_scalar_tensor(op, "found_inf", found_inf, device)


# ---------------------------------------------------------------------------------- running

def run(op, *args):
    """Run leedl_fast::<op> on already-validated arguments (params first): through the
    dispatcher by device, or the forced backend (reference; Triton on CPU tensors under the
    interpreter, for tests)."""
    params = args[0]
    if not params:
        return
    forced = _backend.forced_backend()
    if forced == "reference":
        return getattr(reference, op)(*args)
    if forced in ("triton", "cuda") and params[0].device.type == "cpu":
        return _pick_direct_impl(op)(*args)  # the Triton interpreter (tests)
    if forced == "cpu" and params[0].device.type != "cpu":
        raise RuntimeError(f"leedl_fast.{op}: backend 'cpu' cannot run "
                           f"{params[0].device.type} tensors")
    getattr(torch.ops.leedl_fast, op).default(*args)


def fused_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr,
               beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
               grad_scale=None, found_inf=None):
    """One Adam/AdamW step over lists of tensors, in place (validated; see csrc/ops.cpp)."""
    check("fused_adam", params, dict(grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                                     max_exp_avg_sqs=max_exp_avg_sqs,
                                     master_params=master_params, steps=steps),
          grad_scale, found_inf)
    if amsgrad and len(max_exp_avg_sqs) != len(params):
        _fail("fused_adam", "amsgrad needs max_exp_avg_sqs, one per param")
    run("fused_adam", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
        steps, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        bool(decoupled_weight_decay), bool(amsgrad), bool(maximize), grad_scale, found_inf)


def fused_sgd(params, grads, momentum_buffers, master_params, lr, weight_decay, momentum,
              dampening, nesterov, maximize, is_first_step, grad_scale=None, found_inf=None):
    """One SGD (momentum/nesterov) step over lists of tensors, in place (validated)."""
    check("fused_sgd", params, dict(grads=grads, momentum_buffers=momentum_buffers,
                                    master_params=master_params), grad_scale, found_inf)
    if momentum != 0 and len(momentum_buffers) != len(params):
        _fail("fused_sgd", "momentum != 0 needs momentum_buffers, one per param")
    run("fused_sgd", params, grads, momentum_buffers, master_params, float(lr),
        float(weight_decay), float(momentum), float(dampening), bool(nesterov), bool(maximize),
        bool(is_first_step), grad_scale, found_inf)


def fused_adagrad(params, grads, state_sums, master_params, steps, lr, lr_decay, weight_decay,
                  eps, maximize, grad_scale=None, found_inf=None):
    """One Adagrad step over lists of tensors, in place (validated)."""
    check("fused_adagrad", params, dict(grads=grads, state_sums=state_sums,
                                        master_params=master_params, steps=steps),
          grad_scale, found_inf)
    run("fused_adagrad", params, grads, state_sums, master_params, steps, float(lr),
        float(lr_decay), float(weight_decay), float(eps), bool(maximize), grad_scale, found_inf)


def fused_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, lr,
                  alpha, eps, weight_decay, momentum, centered, maximize, grad_scale=None,
                  found_inf=None):
    """One RMSprop step over lists of tensors, in place (validated)."""
    check("fused_rmsprop", params, dict(grads=grads, square_avgs=square_avgs,
                                        grad_avgs=grad_avgs, momentum_buffers=momentum_buffers,
                                        master_params=master_params), grad_scale, found_inf)
    if centered and len(grad_avgs) != len(params):
        _fail("fused_rmsprop", "centered needs grad_avgs, one per param")
    if momentum > 0 and len(momentum_buffers) != len(params):
        _fail("fused_rmsprop", "momentum > 0 needs momentum_buffers, one per param")
    run("fused_rmsprop", params, grads, square_avgs, grad_avgs, momentum_buffers, master_params,
        float(lr), float(alpha), float(eps), float(weight_decay), float(momentum),
        bool(centered), bool(maximize), grad_scale, found_inf)
