"""How the C++/CUDA extensions were built and linked.

The first H100 run (torch 2.11, the machine's /opt/gcc toolchain) found the extension linked
against a static copy of libstdc++: every TORCH_CHECK whose message formats an integer crashed
the process. setup.py now links the shared libstdc++ explicitly; these tests keep it that way.
"""
import glob
import os
import shutil
import subprocess
import sys

import pytest

import leedl_fast

PKG = os.path.dirname(leedl_fast.__file__)
EXTENSIONS = sorted(glob.glob(os.path.join(PKG, "_C*.so")))


def needed_libraries(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
@pytest.mark.parametrize("path", EXTENSIONS, ids=os.path.basename)
def test_extension_uses_the_shared_libstdcxx(path):
    needed = needed_libraries(path)
    assert any(lib.startswith("libstdc++.so") for lib in needed), \
        f"{os.path.basename(path)} links libstdc++ statically (NEEDED: {needed}); see setup.py"


def test_error_messages_with_integers_do_not_crash():
    """In a child process: a crash there is this test failing, not the test run dying."""
    code = (
        "import torch, leedl_fast\n"
        "for call in (lambda: torch.ops.leedl_fast.layer_norm_fwd(torch.randn(2, 3, 4), None,"
        " None, 1e-5),\n"
        "             lambda: torch.ops.leedl_fast.attention_fwd(torch.randn(3, 5, 16),"
        " torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16), None, 1.0, False, -1, -1)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        print(str(e).splitlines()[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert "3-D" in lines[0] and "[3, 5, 16]" in lines[1], lines
