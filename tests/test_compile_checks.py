"""Compile checks that need no GPU: the device code must build for the GPUs we ship to.

1. Triton: every @triton.jit kernel in kernels/*.py is compiled ahead of time, with
   `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` for sm_90 (H100) and sm_80
   (A100), at the configs its launcher really uses (BLOCK_N / SINGLE_BLOCK / num_warps come from the
   launcher's own helpers, e.g. `norm.fwd_config`). A test fails on a lowering error, on shared
   memory over the device limit, or on register spills (`ptxas -v`) not listed in ALLOWED_SPILLS.
2. nvcc: every csrc/cuda/*.cuh is compiled alone (torch-free device code) for sm_90a and sm_80;
   torch-free .cu files too.

Why a subprocess for the Triton part: tests/conftest.py sets TRITON_INTERPRET=1 before any kernel
module is imported, so in this process `norm_fwd_kernel` is an InterpretedFunction, the helpers it
calls (`_row_grad`, ...) are too, and the interpreter patches triton.language while kernels run.
Re-wrapping `kernel.fn` in a JITFunction is not enough (the code generator resolves `_row_grad`
through the module's globals and finds the interpreted one). A child process without
TRITON_INTERPRET imports the kernel modules afresh as real JITFunctions; it also keeps a crash in
LLVM or ptxas from taking pytest down. This file is that child's script (`--worker`), and running
it directly (`python tests/test_compile_checks.py`) prints a registers/spills/shared table.

Adding a family: add rows to CONFIGS and a resolver to RESOLVERS (it turns a row into the
signature, constexprs and num_warps the family's launcher would pass); test_every_kernel_has_configs
fails until every public @triton.jit function in kernels/<family>.py has at least one row.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "kernels"
CUDA_DIR = ROOT / "csrc" / "cuda"

# ---------------------------------------------------------------------------------- the table
# A row: (kernel, dtype, width, flags, arch). `width` is the row length N the launcher sees; the
# resolver maps it through the launcher's helpers to BLOCK_N / SINGLE_BLOCK / num_warps.
# Representative, not exhaustive (80 compiles, ~25 s on 2 cores):
#   * sm_90: every dtype x every benchmark width, with the heaviest flags (residual, weight, bias);
#   * sm_90: the other flag sets the ops really launch, in bf16, at the widest single-block width
#     and at a looped width (register pressure peaks at the widest single block);
#   * sm_80: every dtype at those two widths, heaviest flags;
#   * sm_90: every dtype at the widest single-block width minus one -- N not a multiple of 16, so
#     no 16-byte alignment and scalar loads, which costs registers (tests/test_norm.py uses 4099).
BENCH_WIDTHS = (256, 1024, 4096, 8192, 16384, 32768)
DTYPES = ("fp16", "bf16", "fp32")

# Flag sets the ops in leedl_fast/_ops/norm.py really launch (RMS norm never has a bias).
FWD_FLAGS = {
    "ln_res": dict(IS_RMS=False, HAS_RES=True, HAS_W=True, HAS_B=True),      # add_layer_norm
    "ln": dict(IS_RMS=False, HAS_RES=False, HAS_W=True, HAS_B=True),         # layer_norm
    "rms_res": dict(IS_RMS=True, HAS_RES=True, HAS_W=True, HAS_B=False),     # add_rms_norm
    "rms": dict(IS_RMS=True, HAS_RES=False, HAS_W=True, HAS_B=False),        # rms_norm
    "ln_noaffine": dict(IS_RMS=False, HAS_RES=False, HAS_W=False, HAS_B=False),
    "rms_noweight": dict(IS_RMS=True, HAS_RES=False, HAS_W=False, HAS_B=False),
}
BWD_FLAGS = {
    "ln_dres": dict(IS_RMS=False, HAS_W=True, HAS_B=True, HAS_DRES=True),
    "ln": dict(IS_RMS=False, HAS_W=True, HAS_B=True, HAS_DRES=False),
    "rms_dres": dict(IS_RMS=True, HAS_W=True, HAS_B=False, HAS_DRES=True),
    "rms": dict(IS_RMS=True, HAS_W=True, HAS_B=False, HAS_DRES=False),
    "ln_noaffine": dict(IS_RMS=False, HAS_W=False, HAS_B=False, HAS_DRES=False),
    "rms_noweight": dict(IS_RMS=True, HAS_W=False, HAS_B=False, HAS_DRES=False),
}


def _norm_rows():
    rows = []
    for kernel, flags, heavy, stress in (("norm_fwd_kernel", FWD_FLAGS, "ln_res", (16384, 32768)),
                                         ("norm_bwd_kernel", BWD_FLAGS, "ln_dres", (8192, 32768))):
        rows += [(kernel, dt, n, heavy, 90) for dt in DTYPES for n in BENCH_WIDTHS]
        rows += [(kernel, "bf16", n, name, 90) for name in flags if name != heavy for n in stress]
        rows += [(kernel, dt, n, heavy, 80) for dt in DTYPES for n in stress]
        rows += [(kernel, dt, stress[0] - 1, heavy, 90) for dt in DTYPES]
    rows += [("column_sum_kernel", dt, 4096, "", arch) for dt in DTYPES for arch in (90, 80)]
    return rows


# Attention: a row's `width` is the head dim; flags pick the masking variant the launcher runs.
ATTN_HEAD_DIMS = (64, 80, 128, 256)
ATTN_FLAGS = {"full": (None, None), "causal": (None, 0), "window": (256, 0),
              "boolmask": (None, None), "addmask": (None, 0)}
ATTN_MASK = {"boolmask": ("*u8", 1), "addmask": ("*fp32", 2)}  # (MASK type, MASK_KIND)


def _attention_rows():
    rows = [("attn_fwd_kernel", dt, d, "causal", 90) for dt in ("fp16", "bf16")
            for d in ATTN_HEAD_DIMS]
    rows += [("attn_fwd_kernel", "bf16", 128, f, 90) for f in ("full", "window")]
    rows += [("attn_fwd_kernel", "fp32", 64, "full", 90)]
    rows += [(kernel, "bf16", 128, f, 90) for f in ATTN_MASK
             for kernel in ("attn_fwd_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel")]
    rows += [("attn_fwd_kernel", "bf16", d, "causal", 80) for d in (64, 128)]
    for kernel in ("attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel"):
        rows += [(kernel, dt, d, "causal", 90) for dt in ("fp16", "bf16") for d in ATTN_HEAD_DIMS]
        rows += [(kernel, "bf16", 128, "window", 90), (kernel, "fp32", 64, "full", 90),
                 (kernel, "bf16", 128, "causal", 80)]
    # The backward's other autotune candidates (kernels/attention.py bwd_configs): "@i" picks
    # candidate i; the rows above compile candidate 0.
    for kernel, extra in (("attn_bwd_dkdv_kernel", 1), ("attn_bwd_dq_kernel", 2)):
        for i in range(1, extra + 1):
            rows += [(kernel, "bf16", d, f"{f}@{i}", arch) for d in (64, 128)
                     for f in ("causal", "boolmask") for arch in (90, 80)
                     if not (d == 64 and i > 1)]
    rows += [("attn_bwd_preprocess_kernel", dt, d, "", 90) for dt in ("bf16", "fp32")
             for d in (64, 80, 256)]
    return rows


# Recurrent step kernels: a row's `width` is the hidden size H (the launcher's step_config maps
# it to BLOCK_H / num_warps); flags: the GRU forward's bias, "unaligned" for an odd H whose
# per-step views and rows lose 16-byte alignment (the launcher passes views at t * B * kH).
RNN_KERNELS = ("lstm_fwd_step_kernel", "lstm_bwd_step_kernel", "gru_fwd_step_kernel",
               "gru_bwd_step_kernel")


def _rnn_rows():
    flags = {"gru_fwd_step_kernel": "bias"}
    rows = [(k, dt, h, flags.get(k, ""), 90) for k in RNN_KERNELS for dt in DTYPES
            for h in (256, 1024)]
    rows += [("gru_fwd_step_kernel", "bf16", 1024, "nobias", 90)]
    rows += [(k, "fp64", 256, flags.get(k, ""), 90) for k in RNN_KERNELS]
    rows += [(k, dt, 1023, "unaligned", 90) for k in RNN_KERNELS for dt in ("fp16", "fp32")]
    rows += [(k, dt, 1024, flags.get(k, ""), 80) for k in RNN_KERNELS for dt in ("fp16", "bf16")]
    return rows


# Convolution: a row's `width` is what the launcher's config helper sees (output channels per
# group for conv2d_fwd, all output channels for the separable block, C/groups for the dx GEMM; the
# kernel size k for the depthwise kernels, whose taps are unrolled or tiled by it). flags, '-'
# joined: the layout ("cl" channels_last / "nchw": which strides are the constant 1 the JIT
# specializes an int argument equal to 1 into; "cl3": channels_last with 3 channels, so no other
# stride is a multiple of 16), the geometry ("s1": stride, dilation and padding
# 1, constants as the JIT sees them for a 3x3 'same' conv; "s2": all of them runtime ints) and the
# variant ("full": bias + residual + gelu epilogue with z saved, "plain": none; for the dz kernel
# the activation, and "db" when dbias is summed; "flat": the flat (tap, channel) reduction of
# few channels per group, kernels/conv.py use_flat_k; "max2" / "avg3": the conv2d_pool_fwd
# epilogue, pool and window size, bias + activation (gelu with "full", else relu)).
CONV_HALF = ("fp16", "bf16")


def _conv_rows():
    gemm, sep = "conv2d_fwd_kernel", "separable_conv2d_fwd_kernel"
    dw = "depthwise_conv2d_fwd_kernel"
    rows = [(gemm, dt, n, "cl-s1-full", 90) for dt in CONV_HALF for n in (32, 64, 128)]
    rows += [(gemm, "bf16", 128, f, 90) for f in ("nchw-s2-full", "cl-s2-plain")]
    rows += [(gemm, "fp16", 64, "nchw-s1-full", 90), (gemm, "fp32", 64, "cl-s1-full", 90),
             (gemm, "fp64", 32, "cl-s1-full", 90)]
    rows += [(gemm, dt, 64, "cl3-s1-full-flat", 90) for dt in DTYPES]
    rows += [(gemm, "bf16", 64, "nchw-s2-plain-flat", 90),
             (gemm, "fp64", 64, "cl3-s2-full-flat", 90), (gemm, "bf16", 64, "cl3-s1-full-flat", 80)]
    rows += [(dw, "fp16", k, "cl-s1-full", 90) for k in (3, 5, 7, 31)]
    rows += [(dw, "bf16", 3, f, 90) for f in ("nchw-s2-full", "cl-s1-plain")]
    rows += [(dw, dt, 3, "cl-s1-full", 90) for dt in ("fp32", "fp64")]
    rows += [(sep, dt, o, "cl-s1-full", 90) for dt in CONV_HALF for o in (64, 256)]
    rows += [(sep, "bf16", 256, "nchw-s2-full", 90)]
    rows += [(sep, dt, 64, "cl-s1-full", 90) for dt in ("fp32", "fp64")]
    rows += [(k, dt, 3 if k == dw else 128, "cl-s1-full", 80) for k in (gemm, dw, sep)
             for dt in CONV_HALF]
    # conv2d_pool_fwd: the pooling epilogue (bias + gelu, no residual / z), 2x2 max and 3x3 avg
    # (16-row windows, 7 masked) on both kernels, every dtype, sm_90 and (16-bit) sm_80.
    for kernel, width in ((gemm, 64), (dw, 3)):
        rows += [(kernel, dt, width, f"cl-s1-full-{p}", arch) for dt in CONV_HALF
                 for p in ("max2", "avg3") for arch in (90, 80)]
        rows += [(kernel, dt, width, f"cl-s1-full-{p}", 90) for dt in ("fp32", "fp64")
                 for p in ("max2", "avg3")]
        rows += [(kernel, dt, width, "nchw-s2-full-avg3", 90) for dt in ("fp16", "fp32")]
    rows += [(gemm, "bf16", 128, f"cl-s1-full-{p}", 90) for p in ("max2", "avg3")]
    rows += [(gemm, dt, 64, f"cl3-s1-full-flat-{p}", 90) for dt in ("bf16", "fp32")
             for p in ("max2", "avg3")]
    return rows


def _conv_backward_rows():
    dz, dx, dw = "conv2d_bwd_dz_kernel", "conv2d_bwd_dx_kernel", "conv2d_bwd_dw_kernel"
    dw_dx, dw_dw = "depthwise_conv2d_bwd_dx_kernel", "depthwise_conv2d_bwd_dw_kernel"
    rows = [(dz, dt, 64, "cl-s1-gelu-db", 90) for dt in DTYPES + ("fp64",)]
    rows += [(dz, "bf16", 64, f, 90) for f in ("cl-s1-relu-db", "nchw-s1-silu", "nchw-s1-none-db")]
    rows += [(dx, dt, n, "cl-s1", 90) for dt in CONV_HALF for n in (32, 128)]
    rows += [(dx, "bf16", 128, "nchw-s2", 90), (dx, "fp32", 64, "cl-s1", 90),
             (dx, "fp64", 32, "cl-s2", 90)]
    rows += [(dw, dt, 64, "cl-s1", 90) for dt in DTYPES + ("fp64",)]
    rows += [(dw, "bf16", 64, "nchw-s2", 90)]
    rows += [(dw, dt, 64, "cl3-s1-flat", 90) for dt in DTYPES + ("fp64",)]
    rows += [(dw, "bf16", 64, "nchw-s2-flat", 90), (dw, "bf16", 64, "cl3-s1-flat", 80)]
    rows += [(dw_dx, dt, 3, "cl-s1", 90) for dt in DTYPES + ("fp64",)]
    rows += [(dw_dx, "bf16", 3, "nchw-s2", 90)]
    rows += [(dw_dw, "fp16", k, "cl-s1", 90) for k in (3, 5, 7, 13, 31)]
    rows += [(dw_dw, dt, 3, "cl-s1", 90) for dt in ("bf16", "fp32", "fp64")]
    rows += [(dw_dw, "bf16", 3, "nchw-s2", 90)]
    rows += [(dz, "bf16", 128, "cl-s1-gelu-db", 80)]
    rows += [(k, "bf16", 3 if k in (dw_dx, dw_dw) else 128, "cl-s1", 80)
             for k in (dx, dw, dw_dx, dw_dw)]
    return rows


# Quantized matmul: a row's `width` is M for the GEMV / int8 kernels (the GEMV's BLOCK_M is M's
# power of two; M = 1 is a JIT constant) and for the split-K sum, K for the row quantizer, and
# unused by the tiled weight-only kernel (its tiles depend on dtype and format only). flags,
# '-' joined: the weight format ("int8", "int4g<group_size>": 128 / 32 take one scale column per
# K tile, 6 gathers scales per element; "cb<bits>" codebook) and "split" for the GEMV's split-K
# partials. Every row has a bias; sizes as the GPU sees LLM layers (N, K multiples of 16).
QUANT_FORMATS = ("int8", "int4g128", "int4g32", "cb2", "cb3")


def _quant_rows():
    gemv, tiled = "quant_gemv_kernel", "quant_matmul_kernel"
    rows = [(gemv, dt, m, f"{f}-split", 90) for dt in DTYPES for f in QUANT_FORMATS
            for m in (1, 16)]
    rows += [(gemv, "bf16", 1, f, 90) for f in ("int8", "int4g128", "cb3", "int4g6-split")]
    rows += [(gemv, "fp32", 8, f"{f}-split", 90) for f in ("int4g128", "cb2")]
    rows += [(gemv, "bf16", m, f"{f}-split", 80) for f in QUANT_FORMATS for m in (1, 16)]
    rows += [(tiled, dt, 64, f, 90) for dt in DTYPES for f in QUANT_FORMATS + ("int4g6",)]
    rows += [(tiled, dt, 64, f, 80) for dt in ("bf16", "fp32") for f in QUANT_FORMATS]
    rows += [("splitk_sum_kernel", dt, 16, f, arch) for dt in DTYPES for f in ("int8", "cb2")
             for arch in (90, 80)]
    rows += [("quantize_rows_kernel", dt, 4096, "", arch) for dt in DTYPES for arch in (90, 80)]
    rows += [("int8_matmul_kernel", dt, m, "int8", arch) for dt in DTYPES for m in (1, 16, 128)
             for arch in (90, 80)]
    return rows


# Fused optimizers: a row's `width` is the BLOCK the launcher picks (kernels/optim.py
# launch_config: 16 bytes of the group's widest dtype per thread, 8 warps; the chunk per program
# is a runtime argument), a label only: the resolver asks launch_config itself.
# dtype: params, grads and state ("fp64": fp64 math). flags, '-' joined, are the constexprs the
# launcher sets: "master" (fp16/bf16 params + fp32 master weights and fp32 state), "scale" /
# "found" (grad_scale / found_inf given), "dev" (steps read in the kernel: capturable),
# "unaligned" (a tensor not 16-byte aligned: no vector-load hints), "max" (maximize), "wd"
# (weight decay); Adam: "l2" / "adamw" (coupled / decoupled decay), "ams"; SGD: "mom", "nest",
# "first" (first step: the buffer is written, not read); RMSProp: "centered", "mom".
OPTIM_DTYPES = ("fp16", "bf16", "fp32", "fp64")
OPTIM_HEAVY = {"optim_adam_kernel": "adamw-ams-max-scale-found-dev",
               "optim_sgd_kernel": "wd-mom-nest-max-scale-found",
               "optim_adagrad_kernel": "wd-max-scale-found-dev",
               "optim_rmsprop_kernel": "wd-centered-mom-max-scale-found"}
OPTIM_LIGHT = {"optim_adam_kernel": ("adamw", "l2", "dev"),
               "optim_sgd_kernel": ("", "mom", "wd-mom-first"),
               "optim_adagrad_kernel": ("", "wd"),
               "optim_rmsprop_kernel": ("", "wd-mom", "centered")}


def _optim_rows():
    def block(dt, flags):
        return 1024 if "master" in flags else {"fp16": 2048, "bf16": 2048, "fp32": 1024,
                                               "fp64": 512}[dt]

    rows = []
    for kernel, heavy in OPTIM_HEAVY.items():
        cases = [(dt, heavy, 90) for dt in OPTIM_DTYPES]
        cases += [(dt, f"master-{heavy}", 90) for dt in ("fp16", "bf16")]
        cases += [(dt, flags, 90) for dt in ("bf16", "fp32") for flags in OPTIM_LIGHT[kernel]]
        cases += [("fp32", f"unaligned-{heavy}", 90)]
        cases += [(dt, heavy, 80) for dt in ("bf16", "fp32")] + [("bf16", f"master-{heavy}", 80)]
        rows += [(kernel, dt, block(dt, flags), flags, arch) for dt, flags, arch in cases]
    return rows


CONFIGS = {"norm": _norm_rows(), "attention": _attention_rows(), "rnn": _rnn_rows(),
           "conv": _conv_rows(), "conv_backward": _conv_backward_rows(),
           "quant": _quant_rows(), "optim": _optim_rows()}

# Spills accepted on purpose, with the reason: {(kernel, case id): reason} for Triton cases and
# {(file name, arch): reason} for nvcc. Anything else that spills fails: fix it or justify it here.
ALLOWED_SPILLS = {
    ("norm_bwd_kernel", "norm_bwd_kernel-fp32-N8192-ln_dres-sm80"):
        "8 bytes at the 128-register cap of 16 warps on A100 only (H100: no spill); the "
        "alternative, the looped variant, re-reads the partial dweight/dbias rows from memory",
    ("optim_adagrad_kernel", "optim_adagrad_kernel-bf16-N2048-wd-max-scale-found-dev-sm90"):
        "8 bytes: one table address saved around the call to ptxas's fp64-division subroutine "
        "(the capturable path's clr = lr / (1 + (t - 1) lr_decay), once per program, before the "
        "element loop; SASS: one STL/LDL pair); the element loop itself has no spill",
}

# Largest shared memory one block may use (opt-in), in bytes: H100 227 KiB, A100 163 KiB (what
# triton's driver reads as max_shared_mem on those cards).
SHARED_LIMIT = {90: 232448, 80: 166912}


def case_id(kernel, dtype, width, flags, arch):
    return "-".join(p for p in (kernel, dtype, f"N{width}", flags, f"sm{arch}") if p)


# ---------------------------------------------------------------------------------- resolvers
# Each takes (kernel module, kernel name, dtype, width, flag-set name) and returns what the
# launcher would pass: {arg: type}, {constexpr: value}, num_warps, and the args it passes 16-byte
# aligned / divisible by 16 (torch allocations are; N is when width % 16 == 0). They run in the
# worker, where the module is the real (compiled, not interpreted) one.

def _resolve_norm(mod, kernel, dtype, width, flags):
    t, acc = f"*{dtype}", "*fp32"  # statistics and partials are fp32 for 16/32-bit inputs
    n_aligned = ["N"] if width % 16 == 0 else []
    if kernel == "column_sum_kernel":
        block_p, block_n, warps = mod.column_sum_config(is_cuda=True)
        sig = {"PART": acc, "OUT": t, "P": "i32", "N": "i32"}
        return sig, {"BLOCK_P": block_p, "BLOCK_N": block_n}, warps, ["PART", "OUT"] + n_aligned
    if kernel == "norm_fwd_kernel":
        block, single, warps = mod.fwd_config(width)
        sig = {a: t for a in ("X", "RES", "W", "B", "Y", "RES_OUT")}
        sig.update(MEAN=acc, RSTD=acc, N="i32", eps="fp32")
        consts = dict(FWD_FLAGS[flags], BLOCK_N=block, SINGLE_BLOCK=single)
        ptrs = ["X", "RES", "W", "B", "Y", "RES_OUT", "MEAN", "RSTD"]
    elif kernel == "norm_bwd_kernel":
        block, single, warps = mod.bwd_config(width)
        sig = {"DY": t, "X": t, "W": t, "MEAN": acc, "RSTD": acc, "DRES": t, "DX": t,
               "DW_PART": acc, "DB_PART": acc, "M": "i32", "N": "i32", "rows_per_program": "i32"}
        consts = dict(BWD_FLAGS[flags], BLOCK_N=block, SINGLE_BLOCK=single)
        ptrs = ["DY", "X", "W", "MEAN", "RSTD", "DRES", "DX", "DW_PART", "DB_PART"]
    else:
        raise KeyError(f"no resolver for {kernel}")
    return sig, consts, warps, ptrs + n_aligned


def _resolve_attention(mod, kernel, dtype, head_dim, flags):
    t = f"*{dtype}"
    if kernel == "attn_bwd_preprocess_kernel":  # attention_bwd(): BLOCK_M=64, default warps
        block_d = max(16, 1 << (head_dim - 1).bit_length())
        sig = {"O": t, "DO": t, "DELTA": "*fp32", "ROWS": "i32"}
        return sig, dict(HEAD_D=head_dim, BLOCK_M=64, BLOCK_D=block_d), 4, ["O", "DO", "DELTA"]
    if kernel != "attn_fwd_kernel":
        return _resolve_attention_bwd(mod, kernel, t, head_dim, flags)
    import torch

    dtype = {"*fp16": torch.float16, "*bf16": torch.bfloat16, "*fp32": torch.float32}[t]
    block_m, block_n, block_d, warps, stages = mod.fwd_config(head_dim, True, dtype)
    left, right = ATTN_FLAGS[flags]
    has_left, _, has_right, _ = mod.window_bounds(False, (left, right))
    mask_type, mask_kind = ATTN_MASK.get(flags, (t, 0))
    sig = {"Q": t, "K": t, "V": t, "O": t, "LSE": "*fp32", "MASK": mask_type,
           "qk_scale": "fp32"}
    ints = ("sq_b", "sq_h", "sq_m", "sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "so_b",
            "so_h", "so_m", "sm_b", "sm_h", "sm_m", "sm_n", "H", "GROUP", "LQ", "LK", "LEFT",
            "RIGHT")
    sig.update({a: "i32" for a in ints})
    consts = dict(HEAD_D=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
                  HAS_LEFT=has_left, HAS_RIGHT=has_right, MASK_KIND=mask_kind,
                  DOT_PRECISION="ieee" if t == "*fp32" else "tf32")
    strides = ["sq_b", "sq_h", "sq_m", "sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "so_b",
               "so_h", "so_m"] if head_dim % 16 == 0 else []
    return sig, consts, {"num_warps": warps, "num_stages": stages}, \
        ["Q", "K", "V", "O", "LSE"] + strides


def _resolve_attention_bwd(mod, kernel, t, head_dim, flags):
    import torch

    dtype = {"*fp16": torch.float16, "*bf16": torch.bfloat16, "*fp32": torch.float32}[t]
    flags, _, index = flags.partition("@")
    block_d, candidates = mod.bwd_configs(
        head_dim, True, dtype, "dkdv" if kernel == "attn_bwd_dkdv_kernel" else "dq")
    block_m, block_n, warps, stages = candidates[int(index or 0)]
    has_left, _, has_right, _ = mod.window_bounds(False, ATTN_FLAGS[flags])
    ptrs = ["Q", "K", "V", "DO", "LSE", "DELTA"] + (
        ["DK", "DV"] if kernel == "attn_bwd_dkdv_kernel" else ["DQ"])
    mask_type, mask_kind = ATTN_MASK.get(flags, (t, 0))
    sig = {a: t for a in ptrs}
    sig.update(LSE="*fp32", DELTA="*fp32", MASK=mask_type, qk_scale="fp32", sm_scale="fp32")
    sig.update({a: "i32" for a in ("sm_b", "sm_h", "sm_m", "sm_n", "H", "GROUP", "LQ", "LK",
                                   "LEFT", "RIGHT")})
    consts = dict(HEAD_D=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
                  HAS_LEFT=has_left, HAS_RIGHT=has_right, MASK_KIND=mask_kind,
                  DOT_PRECISION="ieee" if t == "*fp32" else "tf32")
    return sig, consts, {"num_warps": warps, "num_stages": stages}, ptrs


# The recurrent step kernels' arguments (kernels/rnn.py docstring): "t" is the input dtype, "acc"
# the fp32 (fp64) buffers. The GRU forward without bias gets its fp32 pre-activation buffer as the
# dummy B_HH pointer.
RNN_ARGS = {
    "lstm_fwd_step_kernel": dict(HW="acc", GX="t", C_PREV="acc", GATES="acc", C="acc", H_OUT="t"),
    "lstm_bwd_step_kernel": dict(GATES="acc", C="acc", C_PREV="acc", DY="t", DH_REC="acc",
                                 DC="acc", DG="t"),
    "gru_fwd_step_kernel": dict(HW="acc", B_HH="t", GX="t", H_PREV="t", SAVED="acc", H_OUT="t"),
    "gru_bwd_step_kernel": dict(SAVED="acc", H_PREV="t", DY="t", DH_REC="acc", DH_DIRECT="acc",
                                DGX="t", DGH="t"),
}


def _resolve_rnn(mod, kernel, dtype, hidden, flags):
    types = {"t": f"*{dtype}", "acc": "*fp64" if dtype == "fp64" else "*fp32"}
    args = dict(RNN_ARGS[kernel])
    if flags == "nobias":
        args["B_HH"] = "acc"
    sig = {name: types[kind] for name, kind in args.items()}
    sig["H"] = "i32"
    block, warps = mod.step_config(hidden)
    consts = {"BLOCK_H": block}
    if kernel == "gru_fwd_step_kernel":
        consts["HAS_BIAS"] = flags != "nobias"
    aligned = [] if flags == "unaligned" else list(args) + (["H"] if hidden % 16 == 0 else [])
    return sig, consts, warps, aligned


# The convolution kernels' pointer arguments: "t" in the input dtype, "acc" the fp32 (fp64)
# partial sums. Every other non-constexpr argument is an i32 (sizes, strides, geometry).
CONV_POINTERS = {
    "conv2d_fwd_kernel": dict(X="t", W="t", BIAS="t", RES="t", OUT="t", Z="t"),
    "depthwise_conv2d_fwd_kernel": dict(X="t", W="t", BIAS="t", RES="t", OUT="t", Z="t"),
    "separable_conv2d_fwd_kernel": dict(X="t", DW_W="t", DW_B="t", PW_W="t", PW_B="t", OUT="t"),
    "conv2d_bwd_dz_kernel": dict(DOUT="t", SAVED="t", DZ="t", DB_PART="acc"),
    "conv2d_bwd_dx_kernel": dict(DZ="t", W="t", DX="t"),
    "conv2d_bwd_dw_kernel": dict(DZ="t", X="t", DW_PART="acc"),
    "depthwise_conv2d_bwd_dx_kernel": dict(DZ="t", W="t", DX="t"),
    "depthwise_conv2d_bwd_dw_kernel": dict(DZ="t", X="t", DW_PART="acc"),
}
# Weight strides that are 1 in the layouts the launchers give the weights (kernels/conv.py
# weight_tiles and the dx kernel's (KH, KW, O, C/groups) copy).
CONV_WEIGHT_UNIT = {"conv2d_fwd_kernel": ("swo",), "depthwise_conv2d_fwd_kernel": ("swo",),
                    "separable_conv2d_fwd_kernel": ("sdc", "spo"),
                    "conv2d_bwd_dx_kernel": ("swc",), "depthwise_conv2d_bwd_dx_kernel": ("swo",)}
CONV_ACT = {"none": 0, "relu": 1, "gelu": 2, "silu": 3}


def _conv_constexprs(mod, kernel, dtype, width, layout, variant):
    """(constexprs, num_warps/num_stages) the conv launchers pass for this row."""
    full = "full" in variant
    epilogue = dict(HAS_BIAS=full, HAS_RES=full, ACT=2 if full else 0, SAVE_Z=full, POOL=0,
                    POOL_K=1)
    pool = re.search(r"(max|avg)(\d)", variant)
    if pool:  # conv2d_pool_fwd: bias + activation, no residual, no z
        epilogue = dict(HAS_BIAS=True, HAS_RES=False, ACT=2 if full else 1, SAVE_Z=False,
                        POOL=mod.POOLS[pool[1]], POOL_K=int(pool[2]))
    prec = {"DOT_PRECISION": mod.dot_precision(dtype)}
    if kernel in ("conv2d_fwd_kernel", "conv2d_bwd_dx_kernel"):
        bm, bn, bk, warps, stages = mod.fwd_config(width, dtype, vector=layout == "cl",
                                                   flat="flat" in variant)
        consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **prec)
        if kernel == "conv2d_fwd_kernel":
            consts.update(epilogue, FLAT_K="flat" in variant)
        return consts, {"num_warps": warps, "num_stages": stages}
    if kernel in ("depthwise_conv2d_fwd_kernel", "depthwise_conv2d_bwd_dx_kernel"):
        config = mod.depthwise_config if kernel.endswith("fwd_kernel") else mod.depthwise_dx_config
        bm, bc, warps = config(dtype)
        consts = dict(BLOCK_M=bm, BLOCK_C=bc)
        if kernel == "depthwise_conv2d_fwd_kernel":
            consts.update(epilogue, KH=width, KW=width)
        return consts, warps
    if kernel == "separable_conv2d_fwd_kernel":
        bm, bn, bk, warps, stages = mod.separable_config(width, dtype)
        return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, KH=3, KW=3, HAS_DW_BIAS=full,
                    DW_ACT=1 if full else 0, HAS_PW_BIAS=full, ACT=2 if full else 0, **prec), \
            {"num_warps": warps, "num_stages": stages}
    if kernel == "conv2d_bwd_dz_kernel":
        bm, bn, warps = mod.dz_config(dtype)
        act = CONV_ACT[variant.split("-")[0]]
        return dict(BLOCK_M=bm, BLOCK_N=bn, ACT=act, STORE_DZ=True,
                    HAS_DBIAS=variant.endswith("db")), warps
    if kernel == "conv2d_bwd_dw_kernel":
        bo, bc, bm, warps, stages = mod.dw_config(dtype)
        return dict(BLOCK_O=bo, BLOCK_C=bc, BLOCK_M=bm, FLAT="flat" in variant, **prec), \
            {"num_warps": warps, "num_stages": stages}
    if kernel == "depthwise_conv2d_bwd_dw_kernel":
        bm, bt, bc, warps = mod.depthwise_dw_config(width, width, dtype)
        return dict(BLOCK_M=bm, BLOCK_T=bt, BLOCK_C=bc), warps
    raise KeyError(f"no resolver for {kernel}")


def _resolve_conv(mod, kernel, dtype, width, flags):
    import torch

    fn = getattr(mod, kernel)
    layout, geometry, *variant = flags.split("-")
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                   "fp64": torch.float64}[dtype]
    types = {"t": f"*{dtype}", "acc": "*fp64" if dtype == "fp64" else "*fp32"}
    pointers = {a: types[kind] for a, kind in CONV_POINTERS[kernel].items()}
    sig = {a: pointers.get(a, "i32") for a in fn.arg_names}
    consts, warps = _conv_constexprs(mod, kernel, torch_dtype, width, layout, "-".join(variant))
    # Image tensors: x/out/residual (s?x/o/r), dout/saved/dz (s?g/s/d); separable's sd* and sp*
    # are weight strides.
    images = ("x", "o", "r") if kernel == "separable_conv2d_fwd_kernel" else \
        ("x", "o", "r", "g", "s", "d")
    unit = [f"s{t}{'w' if layout == 'nchw' else 'c'}" for t in images]
    unit += list(CONV_WEIGHT_UNIT.get(kernel, ()))
    if geometry == "s1":
        unit += ["SH", "SW", "PT", "PL", "DH", "DW", "MULT"]
    consts.update({a: 1 for a in unit if a in fn.arg_names and a not in consts})
    # channels_last with channel counts that are multiples of 16 (64, 128, ...): every other
    # stride and the channel counts are too, and the JIT marks them so (16-byte vector loads).
    # NCHW rows keep only the pointers aligned (W, e.g. 56, rarely is).
    aligned = list(pointers)
    if layout == "cl":
        aligned += [a for a in fn.arg_names if a not in consts and a not in pointers and (
            (a.startswith("s") and a[1:2] in "xorgsdwp" and len(a) == 3) or
            a in ("C_G", "O_G", "C", "O"))]
    return sig, consts, warps, aligned


def _quant_format(mod, flags):
    """(FORMAT, BITS, group_size, weight pointer type) of a quant row's format flag."""
    fmt = flags.split("-")[0]
    if fmt == "int8":
        return mod.INT8, 8, 1, "*i8"
    if fmt.startswith("int4g"):
        return mod.INT4, 4, int(fmt[5:]), "*u8"
    return mod.CODEBOOK, int(fmt[2:]), 1, "*u8"


def _resolve_quant(mod, kernel, dtype, width, flags):
    import torch

    t = f"*{dtype}"
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    fn = getattr(mod, kernel)
    if kernel == "quantize_rows_kernel":
        block_k, warps = mod.quantize_rows_config(width)
        return {"X": t, "XQ": "*i8", "SX": "*fp32", "K": "i32"}, {"BLOCK_K": block_k}, warps, \
            ["X", "XQ", "SX", "K"]
    fmt, bits, group, w_type = _quant_format(mod, flags)
    ptrs = {"X": t, "W": w_type, "SCALES": "*fp32", "ZEROS": "*fp32", "TABLE": "*fp32",
            "BIAS": t, "Y": t, "PART": "*fp32", "XQ": "*i8", "SX": "*fp32"}
    sig = {a: ptrs.get(a, "i32") for a in fn.arg_names}
    consts = {"M": 1} if width == 1 and kernel != "splitk_sum_kernel" else {}
    if kernel == "quant_gemv_kernel":
        block_m, block_n, block_k, group_tile, warps = mod.gemv_config(width, fmt, group)
        consts.update(FORMAT=fmt, BITS=bits, GROUP_TILE=group_tile, HAS_BIAS=True,
                      SPLIT=flags.endswith("split"), BLOCK_M=block_m, BLOCK_N=block_n,
                      BLOCK_K=block_k)
    elif kernel == "quant_matmul_kernel":
        block_m, block_n, block_k, group_tile, warps, stages = mod.matmul_config(torch_dtype,
                                                                                 fmt, group)
        consts.update(FORMAT=fmt, BITS=bits, GROUP_TILE=group_tile, HAS_BIAS=True,
                      BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                      DOT_PRECISION=mod.dot_precision(torch_dtype))
        warps = {"num_warps": warps, "num_stages": stages}
    elif kernel == "splitk_sum_kernel":
        consts.update(SCALE_N=fmt == mod.INT8, HAS_BIAS=True, BLOCK_M=width, BLOCK_N=128)
        warps = 4
    elif kernel == "int8_matmul_kernel":
        block_m, block_n, block_k, warps, stages = mod.int8_matmul_config(width)
        consts.update(HAS_BIAS=True, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                      GROUP_M=8)
        warps = {"num_warps": warps, "num_stages": stages}
    else:
        raise KeyError(f"no resolver for {kernel}")
    if "GROUP" in fn.arg_names and group == 1:
        consts["GROUP"] = 1  # int8 / codebook launches pass group_size 1: a JIT constant
    aligned = [a for a in fn.arg_names if a in ptrs or a in ("N", "K", "W_ROW", "K_SPLIT")]
    aligned += ["GROUP"] if group % 16 == 0 else []
    return sig, consts, warps, [a for a in aligned if a not in consts]


def _resolve_optim(mod, kernel, dtype, width, flags):
    import triton.language as tl

    f = set(flags.split("-")) - {""}
    t = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32, "fp64": tl.float64}[dtype]
    master = "master" in f
    block, warps = mod.launch_config(4 if master else t.primitive_bitwidth // 8)
    consts = dict(P_DT=t, G_DT=t, S_DT=tl.float32 if master else t,
                  M_DT=tl.float32 if master else t,
                  MATH=tl.float64 if dtype == "fp64" else tl.float32, HAS_MASTER=master,
                  HAS_SCALE="scale" in f, HAS_FOUND_INF="found" in f, ALIGNED="unaligned" not in f,
                  MAXIMIZE="max" in f, BLOCK=block)
    if kernel == "optim_adam_kernel":
        consts.update(WEIGHT_DECAY=2 if "adamw" in f else 1 if "l2" in f else 0,
                      AMSGRAD="ams" in f, STEP_ON_DEVICE="dev" in f)
    elif kernel == "optim_sgd_kernel":
        consts.update(HAS_WD="wd" in f, HAS_MOMENTUM="mom" in f, NESTEROV="nest" in f,
                      FIRST_STEP="first" in f)
    elif kernel == "optim_adagrad_kernel":
        consts.update(HAS_WD="wd" in f, STEP_ON_DEVICE="dev" in f)
    elif kernel == "optim_rmsprop_kernel":
        consts.update(HAS_WD="wd" in f, CENTERED="centered" in f, HAS_MOMENTUM="mom" in f)
    else:
        raise KeyError(f"no resolver for {kernel}")
    ptrs = {"META": "*i64", "CHUNKS": "*i64", "GRAD_SCALE": "*fp32", "FOUND_INF": "*fp32"}
    # The hyperparameters are annotated tl.float64; `chunk` is a multiple of BLOCK (the JIT marks
    # it divisible by 16), the tables are fresh torch allocations.
    sig = {a: ptrs.get(a, "i32" if a == "chunk" else "fp64")
           for a in getattr(mod, kernel).arg_names if a not in consts}
    return sig, consts, warps, list(ptrs) + ["chunk"]


RESOLVERS = {"norm": _resolve_norm, "attention": _resolve_attention, "rnn": _resolve_rnn,
             "conv": _resolve_conv, "conv_backward": _resolve_conv, "quant": _resolve_quant,
             "optim": _resolve_optim}


# ---------------------------------------------------------------------------------- the worker

def _ptxas_stats(ptxas, ptx, arch_name):
    """Registers / spills / stack from `ptxas -v`, run the way triton runs it (make_cubin)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, "-lineinfo", "-v", f"--gpu-name={arch_name}", str(src),
                               "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"ptxas -v failed:\n{log}")
    frames = re.findall(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    if not frames or not regs:
        raise RuntimeError(f"could not parse ptxas -v output:\n{log}")
    return {"regs": max(regs), "stack": sum(int(f[0]) for f in frames),
            "spill_stores": sum(int(f[1]) for f in frames),
            "spill_loads": sum(int(f[2]) for f in frames)}


def _probe():
    """None if the CUDA backend can compile here, else why not."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.compiler.compiler import make_backend
        make_backend(GPUTarget("cuda", 90, 32))
        ptxas = get_ptxas(90).path
        subprocess.run([ptxas, "--version"], check=True, capture_output=True)
    except Exception as e:  # noqa: BLE001 -- any failure here means "cannot check on this machine"
        return f"triton's CUDA backend cannot compile here: {type(e).__name__}: {e}"
    return None


def worker(jobs_path, out_path):
    """Compile every job in jobs_path; write {case id: result} to out_path."""
    import importlib
    import traceback

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jobs = json.loads(Path(jobs_path).read_text())
    skip = _probe()
    if skip:
        Path(out_path).write_text(json.dumps({"__skip__": skip}))
        return
    results, seen_ptx = {}, {}
    for job in jobs:
        cid = job["id"]
        try:
            mod = importlib.import_module(job["module"])
            fn = getattr(mod, job["kernel"])
            if not isinstance(fn, JITFunction):
                raise TypeError(f"{job['kernel']} is a {type(fn).__name__}, not a JITFunction "
                                "(is TRITON_INTERPRET set in the worker?)")
            sig, consts, warps, aligned = RESOLVERS[job["family"]](
                mod, job["kernel"], job["dtype"], job["width"], job["flags"])
            signature = {a: "constexpr" if a in consts else sig[a] for a in fn.arg_names}
            attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
            arch = job["arch"]
            options = warps if isinstance(warps, dict) else {"num_warps": warps}
            compiled = triton.compile(ASTSource(fn, signature, consts, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=options)
            ptx = compiled.asm["ptx"]
            key = (ptx, arch)
            if key not in seen_ptx:
                seen_ptx[key] = _ptxas_stats(get_ptxas(arch).path, ptx,
                                             sm_arch_from_capability(arch))
            results[cid] = {"ok": True, "shared": compiled.metadata.shared,
                            "num_warps": options["num_warps"],
                            "constexprs": {k: consts[k] for k in ("BLOCK_N", "SINGLE_BLOCK",
                                                                  "BLOCK_H")
                                           if k in consts}, **seen_ptx[key]}
        except Exception as e:  # noqa: BLE001 -- reported per case by the parent
            results[cid] = {"ok": False,
                            "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-4000:]}"}
    Path(out_path).write_text(json.dumps(results))


def _all_jobs():
    return [{"id": case_id(*row), "family": family, "module": f"leedl_fast.kernels.{family}",
             "kernel": row[0], "dtype": row[1], "width": row[2], "flags": row[3], "arch": row[4]}
            for family, rows in CONFIGS.items() for row in rows]


def run_workers(jobs, cache_dir, n_workers=None):
    """Run the jobs in a few child processes (round-robin split), merge their results."""
    n_workers = n_workers or max(1, min(4, os.cpu_count() or 1, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)  # fresh cache: every run really compiles
    procs, outs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_workers):
            jobs_path, out_path = Path(tmp) / f"jobs{i}.json", Path(tmp) / f"out{i}.json"
            jobs_path.write_text(json.dumps(jobs[i::n_workers]))
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(jobs_path),
                 str(out_path)], env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
            outs.append(out_path)
        results, logs = {}, []
        for proc, out in zip(procs, outs):
            log, _ = proc.communicate(timeout=900)
            if out.exists():
                results.update(json.loads(out.read_text()))
            else:  # the worker died (e.g. an LLVM abort): every one of its cases fails with this
                logs.append(f"worker exited with {proc.returncode}:\n{log[-6000:]}")
    return results, logs


# ---------------------------------------------------------------------------------- triton tests

@pytest.fixture(scope="session")
def triton_results(request, tmp_path_factory):
    pytest.importorskip("triton", reason="triton is not installed")
    # Compile only the cases this session selected (-k, a node id): all of them in a full run.
    selected = {case_id(*item.callspec.params["row"]) for item in request.session.items
                if getattr(item, "originalname", None) == "test_triton_kernel_compiles"}
    jobs = [job for job in _all_jobs() if job["id"] in selected]
    results, logs = run_workers(jobs, tmp_path_factory.mktemp("triton_cache"))
    if "__skip__" in results:
        pytest.skip(results["__skip__"])
    return results, logs


def _jit_functions(path):
    """Names of the @triton.jit functions defined in a kernels/ file (read, not imported)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                dec = dec.func if isinstance(dec, ast.Call) else dec
                if ast.unparse(dec) in ("triton.jit", "jit"):
                    names.append(node.name)
    return names


def test_every_kernel_has_configs():
    """Every public @triton.jit function (helpers start with `_`) has at least one config row."""
    for path in sorted(KERNEL_DIR.glob("*.py")):
        kernels = [k for k in _jit_functions(path) if not k.startswith("_")]
        if not kernels:
            continue
        covered = {row[0] for row in CONFIGS.get(path.stem, [])}
        missing = sorted(set(kernels) - covered)
        assert not missing, f"kernels/{path.name}: no CONFIGS rows for {missing}"
        assert path.stem in RESOLVERS, f"kernels/{path.name}: no resolver in RESOLVERS"
    for family, rows in CONFIGS.items():
        defined = set(_jit_functions(KERNEL_DIR / f"{family}.py"))
        stale = sorted({row[0] for row in rows} - defined)
        assert not stale, f"CONFIGS[{family!r}] names kernels that no longer exist: {stale}"


@pytest.mark.parametrize("row", [row for rows in CONFIGS.values() for row in rows],
                         ids=[case_id(*row) for rows in CONFIGS.values() for row in rows])
def test_triton_kernel_compiles(row, triton_results):
    results, logs = triton_results
    cid = case_id(*row)
    res = results.get(cid)
    if res is None:
        pytest.fail(f"{cid}: no result from the compile worker\n" + "\n".join(logs),
                    pytrace=False)
    if not res["ok"]:
        pytest.fail(f"{cid} failed to compile:\n{res['error']}", pytrace=False)
    kernel, arch = row[0], row[4]
    if res["shared"] > SHARED_LIMIT[arch]:
        pytest.fail(f"{cid}: {res['shared']} bytes of shared memory > the sm_{arch} limit "
                    f"{SHARED_LIMIT[arch]}", pytrace=False)
    if (res["spill_stores"] or res["spill_loads"]) and (kernel, cid) not in ALLOWED_SPILLS:
        pytest.fail(f"{cid}: register spills ({res['spill_stores']} B stored, {res['spill_loads']} "
                    f"B loaded, {res['regs']} registers, num_warps={res['num_warps']}, "
                    f"{res['constexprs']}); fix the config or add it to ALLOWED_SPILLS with a "
                    "reason", pytrace=False)


# ---------------------------------------------------------------------------------- nvcc tests
# .cuh files hold torch-free device code, so nvcc checks them alone: a translation unit that
# includes the header twice (self-contained, include guard works) with no torch include path (a
# torch include fails, as it should). Templates are only parsed unless something instantiates
# them, so the TU also takes the address of each launcher listed in CUDA_INSTANTIATE: that
# instantiates every kernel the launcher can pick, and ptxas then compiles them all and warns on
# register spills (which fail the test unless (file, arch) is in ALLOWED_SPILLS).
# .cu files that include torch/ATen/c10 headers are NOT compiled here: the CPU torch wheel ships
# ATen/cuda and c10/cuda headers but not c10/cuda/impl/cuda_cmake_macros.h, ATen/cuda/CUDAContext.h
# needs cusparse.h (not in a bare nvcc install), and even a TU with only <torch/extension.h> takes
# over two minutes under nvcc (measured) -- setup.py's CUDAExtension build on a CUDA machine
# compiles them; keep their device code in the .cuh. Torch-free .cu files are compiled as they are.
NVCC_ARCHS = ("sm_90a", "sm_80")
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|pybind11)/', re.MULTILINE)

# {header: [launcher template instances]}: every .cuh that defines __global__ kernels needs a row.
CUDA_INSTANTIATE = {
    "norm.cuh": [f"leedl_fast::cuda_norm::launch_norm_fwd<{t}>"
                 for t in ("float", "__half", "__nv_bfloat16")],
    "rnn.cuh": [f"leedl_fast::cuda_rnn::launch_{op}<{t}>"
                for op in ("lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd")
                for t in ("float", "__half", "__nv_bfloat16")],
}


def _cuda_files():
    if not CUDA_DIR.is_dir():
        return []
    return sorted(CUDA_DIR.glob("*.cuh")) + sorted(CUDA_DIR.glob("*.cu"))


def _nvcc_params():
    files = _cuda_files()
    if not files:
        return [pytest.param(None, None, id="no-csrc-cuda-files",
                             marks=pytest.mark.skip(reason="csrc/cuda has no .cu/.cuh files yet"))]
    return [pytest.param(f, arch, id=f"{f.name}-{arch}") for f in files for arch in NVCC_ARCHS]


def _demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not names or cxxfilt is None:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else names


@pytest.mark.parametrize("path, arch", _nvcc_params())
def test_nvcc_compiles(path, arch, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    source = path.read_text()
    if path.suffix == ".cuh":
        if TORCH_INCLUDE.search(source):
            pytest.fail(f"{path.name}: .cuh device code must be torch-free", pytrace=False)
        if "__global__" in source and path.name not in CUDA_INSTANTIATE:
            pytest.fail(f"{path.name} defines kernels but has no CUDA_INSTANTIATE row: nvcc would "
                        "only parse its templates", pytrace=False)
        lines = [f'#include "{path}"', f'#include "{path}"  // include guard']
        lines += [f"[[maybe_unused]] static auto leedl_instantiate_{i} = &{name};"
                  for i, name in enumerate(CUDA_INSTANTIATE.get(path.name, []))]
        tu = tmp_path / f"check_{path.stem}.cu"
        tu.write_text("\n".join(lines) + "\n")
    else:
        if TORCH_INCLUDE.search(source):
            pytest.skip(f"{path.name} includes torch headers: built by setup.py where torch has "
                        "CUDA (see the comment above NVCC_ARCHS)")
        tu = path
    cmd = [nvcc, f"-arch={arch}", "-std=c++17", "-c", "-o", os.devnull, "-Xptxas=-warn-spills",
           f"-I{CUDA_DIR}", f"-I{CUDA_DIR.parent}", str(tu)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        pytest.fail(f"nvcc failed on {path.name} ({arch}):\n{' '.join(cmd)}\n{log}", pytrace=False)
    spills = re.findall(r"spilled to local memory in function '(\w+)', (\d+) bytes spill stores, "
                        r"(\d+) bytes spill loads", log)
    if spills and (path.name, arch) not in ALLOWED_SPILLS:
        names = _demangle([name for name, _, _ in spills])
        pytest.fail(f"{path.name} ({arch}): register spills in {len(spills)} kernel(s):\n" +
                    "\n".join(f"  {n}: {st} B stored, {ld} B loaded"
                               for n, (_, st, ld) in zip(names, spills)), pytrace=False)


# ---------------------------------------------------------------------------------- script use

def _print_table():
    """python tests/test_compile_checks.py: compile everything and print one line per case."""
    with tempfile.TemporaryDirectory() as cache:
        results, logs = run_workers(_all_jobs(), cache)
    if "__skip__" in results:
        print("skipped:", results["__skip__"])
        return
    print("\n".join(logs))
    print(f"{'case':58} {'BLOCK_N':>7} {'single':>6} {'warps':>5} {'regs':>4} {'spill st/ld':>11} "
          f"{'stack':>5} {'shared':>6}")
    for job in _all_jobs():
        r = results.get(job["id"], {"ok": False, "error": "no result"})
        if not r["ok"]:
            print(f"{job['id']:58} FAILED: {r['error'].splitlines()[0]}")
            continue
        c = r["constexprs"]
        block = c.get("BLOCK_N", c.get("BLOCK_H", "-"))
        print(f"{job['id']:58} {block:>7} {str(c.get('SINGLE_BLOCK', '-')):>6} "
              f"{r['num_warps']:>5} {r['regs']:>4} {r['spill_stores']:>5}/{r['spill_loads']:<5} "
              f"{r['stack']:>5} {r['shared']:>6}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        _print_table()
