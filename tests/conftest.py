"""Test set-up shared by every family's tests.

TRITON_INTERPRET=1 must be in the environment before triton (or any kernels/ module) is imported,
so that CPU-only machines can run the Triton kernels on CPU tensors. `make test-gpu` sets
TRITON_INTERPRET=0 to compile the kernels for the real GPU instead.
"""
import os
import random
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import leedl_fast  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()


def cpu_backends():
    """Backends that run CPU tensors here: the C++ kernels, the reference, and Triton when the
    interpreter is on."""
    names = ["cpu", "reference"]
    if INTERPRETED and leedl_fast._backend.has_triton():
        names.insert(1, "triton")
    return names


def gpu_backends():
    return [b for b in leedl_fast.available_backends("cuda") if b != "reference"] if HAS_CUDA \
        else []


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


# Fresh random inputs every run, reproducible: rerun with LEEDL_TEST_SEED=<the header's seed>.
RUN_SEED = int(os.environ.get("LEEDL_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"leedl_fast: LEEDL_TEST_SEED={RUN_SEED} TRITON_INTERPRET={int(INTERPRETED)}"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed((RUN_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31))
