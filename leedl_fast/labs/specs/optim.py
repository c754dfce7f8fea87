"""Lab ops of the optimizer family (BOOK.md §3.3.3, §3.5): one AdamW step on one tensor, in place.

    adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay) -> None
        updates param, exp_avg, exp_avg_sq in place, with torch.optim.AdamW's semantics:
        θ ← θ (1 − η λ);  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
        θ ← θ − η / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    `step` is t, the step count after the increment (1 on the first step), a Python int.

Layouts: contiguous tensors only. leedl_fast's fused op refuses non-contiguous params (its
optimizers send a strided param through the reference instead), and torch's optimizer state is
created with zeros_like, so in real training the four tensors are contiguous alike.
"""
import math

import torch

from leedl_fast.labs.spec import Case, OpSpec, randn, register, tensor_bytes

# numel or shape: one element, a size no block divides, odd sizes across block edges, 2-D and 3-D
_SHAPES = [(1,), (1000,), (4099,), (64, 33), (3, 7, 129)]
_QUICK = [(1,), (1000,), (7, 33)]
# (step, fresh state): the first step (m = v = 0) and later steps with a history
_STEPS = [(1, True), (10, False), (1000, False)]
_HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}
_DEFAULT = {"numel": 2**22}


def _inputs(shape, step, fresh):
    def make(device, dtype, g):
        param = randn(shape, device, dtype, g)
        grad = randn(shape, device, dtype, g, scale=0.1)
        if fresh:
            exp_avg = torch.zeros(shape, device=device, dtype=dtype)
            exp_avg_sq = torch.zeros(shape, device=device, dtype=dtype)
        else:  # a plausible history: m of the grad's scale, v about g² (never 0)
            exp_avg = randn(shape, device, dtype, g, scale=0.05)
            exp_avg_sq = (randn(shape, device, torch.float64, g, scale=0.1) ** 2 + 1e-4) \
                .to(dtype)
        return {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                "step": step, **_HYPER}
    return make


def _label(shape):
    return "x".join(map(str, shape))


def _cases(quick):
    shapes = _QUICK if quick else _SHAPES
    cases = [Case(f"{_label(s)} fp32 step {t}", _inputs(s, t, fresh), torch.float32,
                  {"numel": math.prod(s)})
             for s in shapes for t, fresh in (_STEPS[:2] if quick else _STEPS)]
    last = shapes[-1]
    for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        cases.append(Case(f"{_label(last)} {tag} step 10", _inputs(last, 10, False), dtype,
                          {"numel": math.prod(last)}))
    return cases


def _bench(quick):
    numel = 2**16 if quick else _DEFAULT["numel"]
    return [Case(f"{numel} fp32", _inputs((numel,), 10, False), torch.float32,
                 {"numel": numel})]


def _shaped(shape):
    return Case(f"{shape['numel']}", _inputs((shape["numel"],), 10, False), torch.float32, shape)


def _oracle(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """AdamW in float64 (the checker passes float64 copies and reads them back)."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.copy_(beta1 * exp_avg + (1 - beta1) * grad)
    exp_avg_sq.copy_(beta2 * exp_avg_sq + (1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return param, exp_avg, exp_avg_sq


def _steps(step):
    return [torch.tensor([float(step)])]  # the step counts live on the host (non-capturable)


def _torch(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """torch's fused AdamW kernel on one tensor (torch.optim.AdamW(fused=True)'s step)."""
    torch._fused_adamw_([param], [grad], [exp_avg], [exp_avg_sq], [], _steps(step), lr=lr,
                        beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
                        amsgrad=False, maximize=False)
    return param, exp_avg, exp_avg_sq


def _ours(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    from leedl_fast.optim import fused_adam

    fused_adam([param], [grad], [exp_avg], [exp_avg_sq], [], [], _steps(step), lr, beta1, beta2,
               eps, weight_decay, True, False, False)
    return param, exp_avg, exp_avg_sq


def _reference(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    from leedl_fast.reference.optim import fused_adam

    fused_adam([param], [grad], [exp_avg], [exp_avg_sq], [], [], _steps(step), lr, beta1, beta2,
               eps, weight_decay, True, False, False)
    return param, exp_avg, exp_avg_sq


register(OpSpec(
    name="adam_step", family="optim",
    args=("param", "grad", "exp_avg", "exp_avg_sq", "step", "lr", "beta1", "beta2", "eps",
          "weight_decay"),
    outputs=("param", "exp_avg", "exp_avg_sq"), inplace=("param", "exp_avg", "exp_avg_sq"),
    doc="one AdamW step (§3.3.3, torch.optim.AdamW): param *= 1 - lr*weight_decay; exp_avg = "
        "beta1*exp_avg + (1-beta1)*grad; exp_avg_sq = beta2*exp_avg_sq + (1-beta2)*grad^2; param "
        "-= lr/(1-beta1^step) * exp_avg / (sqrt(exp_avg_sq)/sqrt(1-beta2^step) + eps); in place, "
        "step = the count after the increment (int); contiguous tensors, math in fp32",
    cases=_cases, bench_cases=_bench,
    oracle=_oracle, torch_fn=_torch, ours=_ours, reference=_reference,
    # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq
    nbytes=lambda i: 7 * tensor_bytes(i["param"]), flops=lambda i: 15 * i["param"].numel(),
    # fp32: |param| ~ 1 keeps ~1e-7 of rounding, the state ~1e-9; a wrong bias correction or
    # weight decay moves param by ~1e-3
    tol={"out": (1e-6, 1e-5)},
    default_shape=_DEFAULT, shape_case=_shaped,
))
