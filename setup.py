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


def _shared_libstdcxx():
    """Link arguments naming the shared libstdc++ that torch runs with, by its path.

    Some toolchains (the GPU machine's /opt/gcc wrapper) link libstdc++ statically. The
    extension then carries its own copy of the iostreams and locale, mixes it with the shared
    one torch loads, and formatting an integer into a TORCH_CHECK message segfaults (found on
    the H100, torch 2.11; reproduced here with -static-libstdc++). A plain -lstdc++ does not
    help: the g++ driver rewrites it under -static-libstdc++. A path to the .so is an ordinary
    input file that resolves every libstdc++ symbol first, so no archive member is pulled in.
    tests/test_build.py checks the result.
    """
    import torch  # noqa: F401  (maps the libstdc++ torch itself uses)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:  # not Linux: nothing to pin
        return []
    paths = sorted(p for p in paths if os.path.isfile(p))
    return paths[:1]


LINK_STDCXX = _shared_libstdcxx()


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
            extra_link_args=["-fopenmp"] + LINK_STDCXX,
        )
    ]
    cuda_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    if cuda_sources and _want_cuda():
        exts.append(
            cpp_extension.CUDAExtension(
                "leedl_fast._C_cuda",
                cuda_sources,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
                extra_link_args=LINK_STDCXX,
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
