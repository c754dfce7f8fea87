"""Builds leedl_fast._C from csrc/.

- C++ CPU kernels (csrc/ops.cpp + csrc/cpu/*.cpp) always, with -O3 -fopenmp (without -fopenmp
  at::parallel_for silently runs on one thread).
- CUDA kernels (csrc/cuda/*.cu) are added only when the installed torch was built with CUDA and
  nvcc is found; the CPU wheel cannot build a CUDAExtension.
- The Triton kernels in kernels/ ship as the subpackage leedl_fast.kernels.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _want_cuda():
    if os.environ.get("LEEDL_FAST_NO_CUDA") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _cpu_flags():
    """ISA flags for the C++ kernels. leedl_fast is built from source on the machine that runs
    it (make install), so the kernels use ATen's AVX2 Vectorized<float> when the build host has
    AVX2+FMA (8 fp32 lanes per instruction; ATen's default build is scalar-emulated and ~5x
    slower here). LEEDL_FAST_PORTABLE=1 builds the generic version, e.g. for a wheel."""
    if os.environ.get("LEEDL_FAST_PORTABLE") == "1":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    if {"avx2", "fma", "f16c"} <= flags:
        # CPU_CAPABILITY names ATen's inline namespace, so these Vectorized instantiations
        # cannot clash with the DEFAULT ones in torch's own headers.
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return []


def extensions():
    cpp_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))
                       + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    # No -std: torch's cpp_extension picks the standard its headers need (C++17 for 2.11,
    # C++20 for 2.13).
    cxx_flags = ["-O3", "-fopenmp"] + _cpu_flags()
    exts = [
        cpp_extension.CppExtension(
            "leedl_fast._C",
            cpp_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]
    cuda_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    if cuda_sources and _want_cuda():
        exts.append(
            cpp_extension.CUDAExtension(
                "leedl_fast._C_cuda",
                cuda_sources,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
                # A failed CUDA build must not block the install: the Triton kernels still
                # serve CUDA tensors, and `leedl-fast info` reports the extension as missing.
                optional=True,
            )
        )
    return exts


packages = find_packages(include=["leedl_fast", "leedl_fast.*"]) + ["leedl_fast.kernels"]

setup(
    packages=packages,
    package_dir={"leedl_fast.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
