"""`leedl-fast` command line: bench, info, check, roofline, test.

    leedl-fast bench [family ...] [--plot] [--no-compile] [--quick] ...   (= python -m bench ...)
    leedl-fast info                                                      versions, device, backends
    leedl-fast check FILE --op OP [--device] [--backend]                 grade a student's kernel
    leedl-fast roofline OP [--shape ...] [--plot]                        bytes, FLOPs, time bound
    leedl-fast test [pytest args ...]                                    pytest -q tests

`bench` and `test` need the repository (the benchmarks and tests are not part of the installed
package); with an editable install the repository is the parent of this package, otherwise the
current directory is tried.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding bench/ and tests/: next to this package, else the working directory."""
    for candidate in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (candidate / "bench").is_dir() or (candidate / "tests").is_dir():
            return candidate
    raise SystemExit("leedl-fast: run this from the leedl_fast repository "
                     "(no bench/ or tests/ found)")


def bench(argv: list[str]) -> int:
    root = repo_root()
    try:
        import bench.__main__ as bench_main
    except ImportError:
        sys.path.insert(0, str(root))
        import bench.__main__ as bench_main
    return bench_main.main(argv, prog="leedl-fast bench")


def info() -> int:
    import torch

    import leedl_fast

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        ("leedl_fast", f"{getattr(leedl_fast, '__version__', '?')} "
                       f"({Path(leedl_fast.__file__).parent})"),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version),
        ("cpu", f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"),
        ("cpu backends", ", ".join(leedl_fast.available_backends("cpu"))),
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines += [
            ("cuda", f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)"),
            ("gpu", f"{props.name}, sm_{props.major}{props.minor}, "
                    f"{props.total_memory / 2**30:.0f} GiB"),
            ("cuda backends", ", ".join(leedl_fast.available_backends("cuda"))),
        ]
    else:
        lines.append(("cuda", f"not available (torch built with CUDA {torch.version.cuda})"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return 0


def test(argv: list[str]) -> int:
    root = repo_root()
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "tests", *argv], cwd=root)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="leedl-fast",
                                     description="leedl_fast: benchmarks, labs, info, tests")
    sub = parser.add_subparsers(dest="command", metavar="{bench,info,check,roofline,test}")
    sub.add_parser("bench", help="run benchmarks (see `leedl-fast bench --help`)", add_help=False)
    sub.add_parser("info", help="versions, device and available backends")
    sub.add_parser("check", help="grade your kernel for an op: correctness, then speed "
                                 "(see `leedl-fast check --help`)", add_help=False)
    sub.add_parser("roofline", help="an op's minimum bytes and FLOPs, the device's ceilings and "
                                    "the time bound (see `leedl-fast roofline --help`)",
                   add_help=False)
    sub.add_parser("test", help="run the test suite (extra arguments go to pytest)",
                   add_help=False)
    # These forward their arguments untouched (their own parsers own --help etc.).
    if argv and argv[0] == "bench":
        return bench(argv[1:])
    if argv and argv[0] == "check":
        from .labs.check import main as check_main
        return check_main(argv[1:])
    if argv and argv[0] == "roofline":
        from .labs.roofline_cli import main as roofline_main
        return roofline_main(argv[1:])
    if argv and argv[0] == "test":
        return test(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
