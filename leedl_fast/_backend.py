"""Which implementation runs an op: by the tensors' device by default, or forced by
`leedl_fast.backend(name)`.

    cpu        the C++ kernels (csrc/cpu), CPU tensors; the default there
    triton     the Triton kernels (kernels/), CUDA tensors; also CPU tensors under the Triton
               interpreter (enabled in the environment before triton is imported, as
               tests/conftest.py does) -- for tests
    cuda       the CUDA C++ kernels (csrc/cuda) where a family has them, CUDA tensors
    reference  the readable pure-PyTorch versions (leedl_fast.reference), any device

The choice is read when an op runs, so a backward that runs after the `with` block has ended uses
the default backend again; run forward and backward inside the block to pin both.
"""
import contextlib
import functools
import importlib.util

BACKENDS = ("cpu", "triton", "cuda", "reference")
_forced = []  # a stack: nested `with backend(...)` blocks


@contextlib.contextmanager
def backend(name):
    """Force one backend inside the block: `with leedl_fast.backend("triton"): ...`."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def forced_backend():
    """The backend forced by the innermost `backend(...)` block, or None."""
    return _forced[-1] if _forced else None


@functools.lru_cache(None)
def has_triton():
    return importlib.util.find_spec("triton") is not None


def triton_interpreted():
    """Whether Triton runs kernels in its interpreter (the only way it runs CPU tensors)."""
    if not has_triton():
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)


@functools.lru_cache(None)
def has_cuda_extension():
    try:
        import leedl_fast._C_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device="cpu"):
    """Backends that can run tensors on `device` on this machine (benchmarks use this list;
    the Triton interpreter on CPU tensors is for tests, not timing, so it is not listed)."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return ["cpu", "reference"]
    names = ["triton"] if has_triton() else []
    if has_cuda_extension():
        names.append("cuda")
    return names + ["reference"]
