"""Stage 2: one launch for a whole list of tensors ("multi-tensor apply").

A model is hundreds of parameter tensors, many tiny (biases, norm weights). Stage 1 launches one
kernel per tensor: each launch costs ~5-20 us of host time (Python, argument handling, the
driver), and a tiny tensor's kernel finishes in less, so the GPU idles between launches. For
GPT-small (148 tensors, 124M params) that is ~1-3 ms of launches against ~1 ms of memory traffic
on an H100; for a small model the launches are nearly all of the step. Here the host writes two
small tables per call and one launch covers every tensor:

    ADDRS  (n_tensors, 5) int64   the addresses of p, g, m, v and the numel of tensor i
    BLOCKS (n_blocks, 2)  int64   program j updates tensor BLOCKS[j, 0] from element BLOCKS[j, 1]

A program reads its row of BLOCKS, then its tensor's row of ADDRS, turns the addresses into typed
pointers, and runs stage 1's update on its BLOCK elements. All tensors of a launch share a dtype
(it is a compile-time constant), so the launcher makes one launch per dtype. (The tables are
rebuilt and copied to the device on every call here; kernels/optim.py caches them, keyed by the
addresses, so a training loop builds them once.)

    leedl-fast check docs/labs/optim/stage2_multi_tensor.py --op adam_step --backend triton
"""
import math

import torch
import triton
import triton.language as tl

BLOCK = 1024
NUM_WARPS = 4
_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _adam_block(P, G, M, V, offs, mask, beta1, beta2, eps, decay, step_size,
                bias_correction2_sqrt):
    """Stage 1's update on the elements `offs` (mask None: all of them are in range)."""
    p = tl.load(P + offs, mask=mask).to(tl.float32)
    g = tl.load(G + offs, mask=mask).to(tl.float32)
    m = tl.load(M + offs, mask=mask).to(tl.float32)
    v = tl.load(V + offs, mask=mask).to(tl.float32)
    p = p * decay
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
    tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)
    tl.store(M + offs, m.to(M.dtype.element_ty), mask=mask)
    tl.store(V + offs, v.to(V.dtype.element_ty), mask=mask)


@triton.jit
def adam_multi_kernel(ADDRS, BLOCKS, beta1, beta2, eps, decay, step_size, bias_correction2_sqrt,
                      DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """ADDRS (n_tensors, 5) int64: p, g, m, v addresses and numel; BLOCKS (n_blocks, 2) int64:
    tensor index and first element of each program's block. Scalars as in stage 1."""
    pid = tl.program_id(0)
    tensor = tl.load(BLOCKS + 2 * pid)
    start = tl.multiple_of(tl.load(BLOCKS + 2 * pid + 1), BLOCK)
    row = ADDRS + 5 * tensor
    # An address read from memory becomes a typed pointer. The compiler cannot see that it is
    # 16-byte aligned (as it can for a tensor argument), so we say so -- the launcher checked --
    # and it can then use 16-byte vector loads.
    P = tl.multiple_of(tl.load(row + 0).to(tl.pointer_type(DTYPE)), 16)
    G = tl.multiple_of(tl.load(row + 1).to(tl.pointer_type(DTYPE)), 16)
    M = tl.multiple_of(tl.load(row + 2).to(tl.pointer_type(DTYPE)), 16)
    V = tl.multiple_of(tl.load(row + 3).to(tl.pointer_type(DTYPE)), 16)
    numel = tl.load(row + 4)
    offs = start + tl.arange(0, BLOCK)
    # numel comes from memory too, so a mask `offs < numel` would split every vector load:
    # full blocks go without a mask, only a tensor's last, partial block is masked.
    if start + BLOCK <= numel:
        _adam_block(P, G, M, V, offs, None, beta1, beta2, eps, decay, step_size,
                    bias_correction2_sqrt)
    else:
        _adam_block(P, G, M, V, offs, offs < numel, beta1, beta2, eps, decay, step_size,
                    bias_correction2_sqrt)


def _tables(params, grads, exp_avgs, exp_avg_sqs):
    """The two int64 tables on the params' device (built on the host, copied once)."""
    addrs, blocks = [], []
    for i, ts in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        assert all(t.is_contiguous() for t in ts), "contiguous tensors only"
        # the kernel assumes 16-byte aligned addresses (torch's allocations are; a view at an
        # odd offset is not -- kernels/optim.py launches those apart)
        assert all(t.data_ptr() % 16 == 0 for t in ts if t.numel()), "16-byte aligned only"
        numel = ts[0].numel()
        addrs.append([t.data_ptr() for t in ts] + [numel])
        blocks += [[i, start] for start in range(0, numel, BLOCK)]
    device = params[0].device
    return (torch.tensor(addrs, dtype=torch.int64, device=device),
            torch.tensor(blocks, dtype=torch.int64, device=device).reshape(-1, 2))


def adam_step_multi(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps,
                    weight_decay):
    """One AdamW step on lists of tensors (one launch per dtype), in place; `step` shared."""
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    groups = {}
    for i, p in enumerate(params):
        groups.setdefault(p.dtype, []).append(i)
    for dtype, idx in groups.items():
        lists = [[seq[i] for i in idx] for seq in (params, grads, exp_avgs, exp_avg_sqs)]
        addrs, blocks = _tables(*lists)
        if blocks.shape[0] == 0:  # only empty tensors
            continue
        # The tables hold raw addresses: the tensors must stay alive until the kernel has run.
        # They do here -- the caller holds them, and the launch is on the caller's stream.
        adam_multi_kernel[(blocks.shape[0],)](
            addrs, blocks, beta1, beta2, eps, 1 - lr * weight_decay, step_size,
            bias_correction2_sqrt, DTYPE=_TL_DTYPE[dtype], BLOCK=BLOCK, num_warps=NUM_WARPS)


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """The single-tensor op the checker grades: a list of one."""
    adam_step_multi([param], [grad], [exp_avg], [exp_avg_sq], step, lr, beta1, beta2, eps,
                    weight_decay)


_SCALARS = {"beta1": "fp32", "beta2": "fp32", "eps": "fp32", "decay": "fp32", "step_size": "fp32",
            "bias_correction2_sqrt": "fp32"}
COMPILE_CHECKS = [
    {"kernel": "adam_multi_kernel", "signature": {"ADDRS": "*i64", "BLOCKS": "*i64", **_SCALARS},
     "constexprs": {"DTYPE": dtype, "BLOCK": BLOCK}, "num_warps": NUM_WARPS}
    for dtype in (tl.float32, tl.bfloat16)
]
