"""Stage 1: the whole AdamW step in one Triton kernel (one launch per tensor).

Each program owns BLOCK consecutive elements: it loads p, g, m, v once, does the ~15 flops of the
update in registers (fp32), and stores p, m, v once. 7 tensor-sized reads and writes instead of
stage 0's ~41, no temporaries: the kernel runs at the speed memory delivers the bytes.

Triton compiles a kernel per "specialization": tensor arguments whose address is a multiple of
16 bytes and integers divisible by 16 are marked so. Then every group of 4 fp32 lanes is known
to be aligned and wholly in or out of the mask, and the loads become 16-byte vector loads
(ld.global.v4 in the PTX) -- the widest memory instructions the GPU has.

    leedl-fast check docs/labs/optim/stage1_fused.py --op adam_step --backend triton
"""
import math

import triton
import triton.language as tl

BLOCK = 1024     # elements per program: 8 per thread with 4 warps (two 16-byte loads of fp32)
NUM_WARPS = 4


@triton.jit
def adam_kernel(P, G, M, V, numel, beta1, beta2, eps, decay, step_size, bias_correction2_sqrt,
                BLOCK: tl.constexpr):
    """P, G, M, V: (numel,) contiguous, one dtype (the math is fp32).
    decay = 1 - lr * weight_decay; step_size = lr / (1 - beta1^t);
    bias_correction2_sqrt = sqrt(1 - beta2^t)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    p = tl.load(P + offs, mask=mask).to(tl.float32)
    g = tl.load(G + offs, mask=mask).to(tl.float32)
    m = tl.load(M + offs, mask=mask).to(tl.float32)
    v = tl.load(V + offs, mask=mask).to(tl.float32)

    p = p * decay                                  # decoupled weight decay
    m = beta1 * m + (1 - beta1) * g                # first moment
    v = beta2 * v + (1 - beta2) * g * g            # second moment
    # m_hat / (sqrt(v_hat) + eps) with the bias corrections folded into two scalars
    denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    p = p - step_size * m / denom

    tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)
    tl.store(M + offs, m.to(M.dtype.element_ty), mask=mask)
    tl.store(V + offs, v.to(V.dtype.element_ty), mask=mask)


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on one tensor, in place (contiguous tensors of one dtype)."""
    tensors = (param, grad, exp_avg, exp_avg_sq)
    assert all(t.is_contiguous() for t in tensors), "stage 1 handles contiguous tensors only"
    numel = param.numel()
    # The per-step scalars are computed once on the host (in double), not per element.
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    grid = (triton.cdiv(numel, BLOCK),)
    adam_kernel[grid](param, grad, exp_avg, exp_avg_sq, numel, beta1, beta2, eps,
                      1 - lr * weight_decay, step_size, bias_correction2_sqrt,
                      BLOCK=BLOCK, num_warps=NUM_WARPS)


_SCALARS = {"numel": "i32", "beta1": "fp32", "beta2": "fp32", "eps": "fp32", "decay": "fp32",
            "step_size": "fp32", "bias_correction2_sqrt": "fp32"}
COMPILE_CHECKS = [
    {"kernel": "adam_kernel",
     "signature": {"P": f"*{t}", "G": f"*{t}", "M": f"*{t}", "V": f"*{t}", **_SCALARS},
     "constexprs": {"BLOCK": BLOCK}, "num_warps": NUM_WARPS}
    for t in ("fp32", "bf16")
]
