"""The op pattern's shared plumbing (docs/ARCHITECTURE.md), used by every family's glue module.

Each op's schema lives in csrc/ops.cpp and its CPU kernel is registered in C++. This module adds:

* `register_gpu(op, triton=..., cuda=...)`: one torch.library kernel for the "cuda" device that
  runs the Triton or the CUDA C++ implementation, by the forced backend (default: the family's
  choice, Triton until a CUDA C++ kernel is measured faster).
* `register_autograd(op, setup_context, backward)`: torch.library.register_autograd, plus the
  same pair wrapped in an autograd.Function for the direct path below.
* `call(op, *args)`: how glue code runs an op. Normally through the dispatcher
  (torch.ops.leedl_fast.<op>), so autograd, torch.compile and opcheck see a real op. When a GPU
  backend is forced on CPU tensors (the Triton interpreter in tests), the dispatcher would pick the
  C++ kernel, so the chosen implementation is called directly instead, with the same autograd.
"""
import torch

from .. import _backend

_GPU_IMPLS = {}  # op name -> {"triton": fn, "cuda": fn | None}
_AUTOGRAD_FNS = {}  # op name -> autograd.Function running the op's direct implementation


def _pick_gpu_impl(op, name):
    impls = _GPU_IMPLS[op]
    forced = _backend.forced_backend()
    if forced in (None, "reference"):
        forced = impls["default"]
        if forced == "cuda" and not _backend.has_cuda_extension():
            forced = "triton"  # a default of "cuda" means: where the extension is built
    if forced == "cpu":
        raise RuntimeError(f"leedl_fast.{name}: backend 'cpu' cannot run CUDA tensors")
    impl = impls.get(forced)
    if impl is None and forced == "cuda":
        impl, forced = impls["triton"], "triton"  # e.g. a backward with no CUDA C++ kernel
    if impl is None:
        raise NotImplementedError(f"leedl_fast.{name}: no '{forced}' kernel for this op; "
                                  f"available: {[k for k in ('triton', 'cuda') if impls[k]]}")
    if forced == "cuda" and not _backend.has_cuda_extension():
        raise RuntimeError(f"leedl_fast.{name}: the CUDA extension leedl_fast._C_cuda is not "
                           "built (it needs torch with CUDA and nvcc at install time)")
    if forced == "triton" and not _backend.has_triton():
        raise RuntimeError(f"leedl_fast.{name}: backend 'triton' needs the triton package")
    return impl


def triton_kernel(family, name):
    """The launcher `name` of kernels/<family>.py, imported when first called (triton is an
    optional dependency): what a family passes to register_gpu as its Triton implementation."""
    def run(*args):
        import importlib

        return getattr(importlib.import_module(f"leedl_fast.kernels.{family}"), name)(*args)

    run.__name__ = f"{name}_triton"
    return run


def register_gpu(op, triton, cuda=None, default="triton"):
    """Register the "cuda"-device kernel of leedl_fast::<op>: `default` runs unless a backend
    is forced. A family makes "cuda" its default only once the GPU benchmark shows it faster;
    that default runs Triton where leedl_fast._C_cuda is not built."""
    _GPU_IMPLS[op] = {"triton": triton, "cuda": cuda, "default": default}

    def gpu_kernel(*args):
        return _pick_gpu_impl(op, op)(*args)

    torch.library.register_kernel(f"leedl_fast::{op}", "cuda", gpu_kernel)


def register_autograd(op, setup_context, backward):
    torch.library.register_autograd(f"leedl_fast::{op}", backward, setup_context=setup_context)

    def forward(*args):
        return _pick_direct_impl(op)(*args)

    _AUTOGRAD_FNS[op] = type(f"{op}_direct", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


def _pick_direct_impl(op):
    if _backend.forced_backend() == "triton" and not _backend.triton_interpreted():
        raise RuntimeError(f"leedl_fast.{op}: backend 'triton' on CPU tensors needs the Triton "
                           "interpreter, enabled in the environment before triton is imported "
                           "(as tests/conftest.py does)")
    return _pick_gpu_impl(op, op)


_OP_HANDLES = {}  # op name -> torch.ops.leedl_fast.<op>.default (attribute lookups cost µs)


def _op_handle(op):
    handle = _OP_HANDLES.get(op)
    if handle is None:
        handle = _OP_HANDLES[op] = getattr(torch.ops.leedl_fast, op).default
    return handle


def call(op, *args):
    """Run leedl_fast::<op> on args (the first argument is a tensor that fixes the device)."""
    forced = _backend.forced_backend()
    if forced is None or forced == "reference":
        return _op_handle(op)(*args)  # the common case: the dispatcher picks by device
    device = args[0].device.type
    if forced in ("triton", "cuda") and device == "cpu":
        fn = _AUTOGRAD_FNS.get(op)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if fn is not None and needs_grad:
            return fn.apply(*args)
        return _pick_direct_impl(op)(*args)
    if forced == "cpu" and device != "cpu":
        raise RuntimeError(f"leedl_fast.{op}: backend 'cpu' cannot run {device} tensors")
    return _op_handle(op)(*args)


def register_no_double_backward(op):
    """A backward op's own autograd: it raises. Without it, differentiating through a backward
    (create_graph=True: gradient penalties, Hessian-vector products) would treat the backward op
    as a constant and silently give wrong second derivatives."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"leedl_fast::{op}: double backward (create_graph=True "
                                  "through this op's gradient) is not supported")

    torch.library.register_autograd(f"leedl_fast::{op}", backward,
                                    setup_context=lambda ctx, inputs, output: None)
