"""The device's measured ceilings and an op's roofline bound (used by `leedl-fast check` and
`leedl-fast roofline`).

    memory ceiling   copy bandwidth, GB/s (bytes read + bytes written), of a buffer far larger
                     than any cache: what a streaming kernel can at best reach
    compute ceiling  matmul throughput, GFLOP/s, of a large square GEMM in the given dtype (fp32
                     on the CPU; on the GPU fp32 without TF32, or bf16/fp16 on the tensor cores)
    time bound       max(bytes / memory ceiling, FLOPs / compute ceiling): no kernel can be faster;
                     "% of roofline" = bound / measured time
"""
from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class Ceilings:
    device: str
    gbps: float       # copy bandwidth, GB/s
    gflops: float     # matmul, GFLOP/s
    dtype: str

    def bound(self, nbytes: int, flops: int) -> float:
        """Seconds: the roofline's lower bound on the time of an op moving nbytes and doing flops."""
        return max(nbytes / (self.gbps * 1e9), flops / (self.gflops * 1e9))

    def limit(self, nbytes: int, flops: int) -> str:
        """'memory' or 'compute': which ceiling bounds an op of this arithmetic intensity."""
        return "memory" if nbytes / (self.gbps * 1e9) >= flops / (self.gflops * 1e9) else "compute"


def format_time(seconds: float | None) -> str:
    """'12.3 us' / '4.56 ms' / '1.23 s', or '-' for no time."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def time_fn(fn, device: str, min_run_time: float = 0.2) -> float:
    """Median seconds of fn(): triton's do_bench on a GPU, torch's Timer on the CPU."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=max(20, int(min_run_time * 250)),
                        return_mode="median") * 1e-3
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_candidate(name, call, device, quick, slow=2.0):
    """(name, median seconds or None, note) for one candidate of a side-by-side timing. A
    candidate whose first call takes over `slow` seconds (0.5 when quick; the Triton
    interpreter) is timed by one more call instead of a sweep; one that raises gets no time and
    the error as its note, so the other rows still come out."""
    import time

    def once():
        t0 = time.perf_counter()
        call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    try:
        if once() > (0.5 if quick else slow):
            return name, once(), "one call"
        return name, time_fn(call, device, 0.05 if quick else 0.3), ""
    except Exception as e:  # noqa: BLE001 -- a candidate that cannot run this case is a row
        return name, None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


def _best(fn, device, runs=5):
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    import time

    best = float("inf")
    for _ in range(runs):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) * 1e-3)
        else:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best


def _copy_seconds(nbytes, device):
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return _best(lambda: dst.copy_(src), device)


@functools.cache
def ceilings(device: str = "cpu", dtype: torch.dtype = torch.float32) -> Ceilings:
    """Measure (once per process) the copy bandwidth and the matmul throughput of `device`."""
    gpu = device.startswith("cuda")
    nbytes = (512 if gpu else 128) * 2**20
    gbps = 2 * nbytes / _copy_seconds(nbytes, device) / 1e9
    mm_dtype = dtype if gpu and dtype in (torch.float16, torch.bfloat16) else torch.float32
    n = 8192 if gpu else 2048
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    gflops = 2 * n**3 / _best(lambda: a @ b, device) / 1e9
    return Ceilings(device, gbps, gflops, str(mm_dtype).replace("torch.", ""))
