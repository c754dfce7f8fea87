"""Generic benchmark harness: cases in, timed and checked records out.

A family module (`bench/norm.py`, later `bench/attention.py`, ...) only describes *what* to measure:
a list of `Case`s, each with its candidate callables and the minimum number of bytes the op must
move. Everything about *how* to measure lives here, once:

* GPU: `triton.testing.do_bench` (median; warm-up; L2 flushed before every run).
* CPU: `torch.utils.benchmark.Timer.blocked_autorange` (median of blocks), all candidates of a case
  timed in the same process, interleaved over a few rounds (order reversed every other round), each
  keeping its best median. On a small, noisy machine this is what makes a ratio trustworthy.
* Every candidate is called once before timing (torch.compile compiles there, Triton JITs there);
  a failure is recorded in the table instead of crashing the sweep, and the output is compared
  with torch eager's so that a fast-but-wrong kernel shows up as MISMATCH rather than as a win.
* Bandwidth is reported against a ceiling measured in the same run (a large `dst.copy_(src)`), so
  "% of ceiling" means the same thing on a 2-core build box and on an H100.
* On CPU, each case records how much CPU other processes took while it was timed; rows measured
  on a busy machine say so ("noisy: ..."), since on 2 cores that moves a ratio more than a kernel.
  Quiet runs still differ: the same eager add_layer_norm fwd at 512x16384 measured 3.7 ms in one
  sweep and 13-21 ms in others. The likely cause (suspected, not proven) is the allocator: an
  output of tens of MiB costs page faults when glibc maps fresh memory for it and little when it
  reuses a freed heap chunk, and which happens depends on what ran earlier in the process
  (`x.clone()` of 64 MiB runs at 1/5 of `copy_` into an existing tensor). At those shapes,
  compare ratios over several runs.

Reporting (tables, JSON, markdown, plots) is in `bench/report.py`.
"""
from __future__ import annotations

import functools
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

BENCH_DIR = Path(__file__).resolve().parent
EAGER = "torch eager"
COMPILE = "torch.compile"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
               torch.float64: "fp64"}
# Relative error (max |a - b| / max |b|) above which a candidate's result is flagged: loose enough
# for a different reduction order in low precision, tight enough to catch a wrong kernel.
MISMATCH_TOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 5e-2}
NOT_FAMILIES = {"__init__", "__main__", "harness", "report"}
NOISY_PERCENT = 10.0  # other processes' share of CPU during a case above which its rows say so


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class Case:
    """One op, in one mode, at one shape and dtype: one group of rows in a table.

    `build` runs only when the case is measured, so a sweep over 256 MB GPU tensors holds one case's
    inputs at a time. It returns {candidate name: zero-argument callable}; eager must be among them
    (it is the reference for speedups and for the mismatch check).
    `nbytes` is the minimum traffic of the op (the family documents the formula next to the case).
    `target` = (candidate, minimum speedup vs eager) puts the case in the acceptance summary.
    """

    family: str
    op: str
    mode: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    nbytes: int
    build: Callable[[], dict[str, Callable[[], Any]]]
    target: tuple[str, float] | None = None
    flops: int = 0  # useful FLOPs of one iteration, for compute-bound ops (TFLOP/s column)
    memory: bool = False  # GPU: note each candidate's peak allocated memory (its first call)

    @property
    def label(self) -> str:
        return f"{self.op} {self.mode} {'x'.join(map(str, self.shape))} {dtype_name(self.dtype)}"


# ----------------------------------------------------------------------------------------------
# Candidate helpers shared by every family
# ----------------------------------------------------------------------------------------------

@functools.cache
def leedl_backends(device: str) -> tuple[str, ...]:
    """Backends of leedl_fast worth timing on `device` (none if the package is not usable).

    On CPU the Triton backend is the interpreter (a correctness tool, thousands of times slower
    than a kernel), so it is never benchmarked."""
    try:
        import leedl_fast
        names = leedl_fast.available_backends(device)
    except (ImportError, AttributeError) as exc:  # keep the baselines measurable meanwhile
        print(f"warning: leedl_fast not usable ({exc}); timing baselines only", file=sys.stderr)
        return ()
    return tuple(n for n in names if not (device == "cpu" and n == "triton"))


def with_backend(fn: Callable, name: str) -> Callable:
    """`fn()` run under `leedl_fast.backend(name)`, so one entry point can be timed per backend.

    It wraps the whole iteration, backward included: the backend is chosen when an op runs, so a
    backward outside the block would silently use the default backend."""
    import leedl_fast

    def call():
        with leedl_fast.backend(name):
            return fn()

    return call


def step(fn: Callable, inputs: tuple, mode: str, leaves: tuple = (), grads: tuple = ()) -> Callable:
    """Zero-argument callable for one timed iteration.

    "fwd": the forward only (inputs do not require grad, so no graph is recorded).
    "fwd+bwd": forward plus the gradients of all outputs w.r.t. `leaves`. `torch.autograd.grad`
    returns fresh gradients instead of accumulating into `.grad`, so iterations are identical."""
    if mode == "fwd":
        return lambda: fn(*inputs)

    def forward_backward():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return torch.autograd.grad(outs, leaves, grads)

    return forward_backward


def no_grad(fn: Callable) -> Callable:
    """`fn()` under torch.no_grad(): inference candidates record no autograd graph."""
    def run():
        with torch.no_grad():
            return fn()
    return run


def candidates(eager: Callable, leedl: Callable | None, inputs: tuple, mode: str, device: str,
               leaves: tuple = (), grads: tuple = (), compile: bool = True) -> dict[str, Callable]:
    """The standard line-up: torch eager, torch.compile of eager, and every leedl_fast backend.

    torch.compile uses the default mode, fullgraph=True (a graph break would be a bug in the
    baseline) and dynamic=False (each shape gets its own static kernel, as a user's model would)."""
    fns = {EAGER: step(eager, inputs, mode, leaves, grads)}
    if compile:
        compiled = torch.compile(eager, fullgraph=True, dynamic=False)
        fns[COMPILE] = step(compiled, inputs, mode, leaves, grads)
    for name in leedl_backends(device) if leedl is not None else ():
        fns[f"leedl_fast:{name}"] = with_backend(step(leedl, inputs, mode, leaves, grads), name)
    return fns


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def warm_allocator() -> None:
    """Make glibc serve every allocation below 1 GiB from its heap and never give it back, so
    outputs of the same size recycle already-mapped memory. Why: by default a large output
    (>= ~32 MiB, or smaller ones depending on what the process freed before) comes from a fresh
    mmap and page-faults on first touch; that cost can dominate a memory-bound op, and whether
    it is paid depends on the allocator's history -- ratios at one shape then swing by 2x from
    run to run. Linux/glibc only; elsewhere a warning and no change."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        ok = False
    print("warm allocator: glibc mmap/trim thresholds set to 1 GiB" if ok
          else "warning: --warm-allocator needs glibc; allocator left as is", file=sys.stderr)


def set_threads() -> int:
    """Use every core we may run on (torch may default to fewer; Timer defaults to one)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def load_average() -> float:
    """1-minute load average (0 where unknown): a CPU run on a busy machine is not a result."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cpu_counters() -> tuple[int, int, int] | None:
    """(busy jiffies of the machine, jiffies of this process, all jiffies) from /proc, or None.

    Two snapshots tell how much CPU *other* processes took while a case was timed: on a small
    shared machine that, not the kernel, is the usual reason a ratio moves between runs."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return sum(ticks) - ticks[3] - ticks[4], int(own[11]) + int(own[12]), sum(ticks)
    except (OSError, ValueError, IndexError):
        return None


def others_cpu_percent(before, after) -> float | None:
    """Share of the machine's CPU time used by other processes between two `cpu_counters()`."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    busy, own, total = (a - b for a, b in zip(after, before))
    return max(0.0, 100.0 * (busy - own) / total)


def time_once(fn: Callable, device: str, min_run_time: float) -> float:
    """Median seconds of `fn()`: do_bench on GPU, Timer.blocked_autorange on CPU."""
    if device.startswith("cuda"):
        from triton.testing import do_bench
        # ~0.1 s per candidate instead of do_bench's default 0.25 s: still hundreds of runs for a
        # memory-bound kernel of ~100 us, and it keeps the GPU suite inside its 10-minute budget.
        return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e-3
    from torch.utils.benchmark import Timer
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_interleaved(fns: dict[str, Callable], device: str, min_run_time: float, rounds: int,
                     failures: dict[str, str]) -> dict[str, float]:
    """Best median per candidate over `rounds` interleaved rounds (order reversed every round), so
    slow drifts of a shared machine (turbo, neighbours) hit every candidate alike. A candidate
    that raises while timed (out of memory, say) drops out with its error in `failures`."""
    best = {name: math.inf for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in failures:
                continue
            try:
                best[name] = min(best[name], time_once(fns[name], device, min_run_time))
            except Exception as exc:
                failures[name] = _failure(name, exc)
    return {name: t for name, t in best.items() if name not in failures}


def copy_ceiling(device: str) -> float:
    """Copy bandwidth of the device in GB/s (bytes read + bytes written), best of a few runs.

    The tensor is far larger than any cache (512 MB on GPU, 128 MB on CPU), so this is the memory
    system's practical limit for a streaming kernel; a norm can at best approach it."""
    nbytes = (512 if device.startswith("cuda") else 128) * 2**20
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    if device.startswith("cuda"):
        from triton.testing import do_bench
        seconds = do_bench(lambda: dst.copy_(src), return_mode="min") * 1e-3
    else:
        from torch.utils.benchmark import Timer
        timer = Timer("dst.copy_(src)", globals={"dst": dst, "src": src},
                      num_threads=torch.get_num_threads())
        seconds = min(timer.blocked_autorange(min_run_time=0.5).times)
    return 2 * nbytes / seconds / 1e9


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------

def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def mismatch(out, ref, dtype: torch.dtype) -> str | None:
    """Note for the table when `out` differs from eager's `ref` beyond MISMATCH_TOL[dtype]."""
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        return f"MISMATCH: {len(outs)} outputs vs eager's {len(refs)}"
    worst = 0.0
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return f"MISMATCH: shape {tuple(o.shape)} vs eager's {tuple(r.shape)}"
        scale = r.detach().float().abs().max().clamp_min(1e-12)
        worst = max(worst, ((o.detach().float() - r.detach().float()).abs().max() / scale).item())
    if worst > MISMATCH_TOL.get(dtype, 1e-2):
        return f"MISMATCH vs eager: rel err {worst:.1e}"
    return None


def _failure(name: str, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:120]
    return f"{'compile ' if name == COMPILE else ''}failed: {type(exc).__name__}: {first}"


def progress(items: list, label: Callable[[Any], str]):
    """tqdm bar on stderr (label of the current item as postfix); plain prints without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        for i, item in enumerate(items):
            print(f"[{i + 1}/{len(items)}] {label(item)}", file=sys.stderr, flush=True)
            yield item
        return
    with tqdm(items, file=sys.stderr, dynamic_ncols=True, unit="case") as bar:
        for item in bar:
            bar.set_postfix_str(label(item))
            yield item


def run_case(case: Case, *, compile: bool, min_run_time: float, rounds: int, ceiling: float,
             compile_state: dict) -> list[dict]:
    """Warm up, check and time every candidate of one case; one record per candidate.

    `compile_state` = {"budget": seconds, "spent": seconds} is shared over the sweep: once the
    compile budget is spent, later torch.compile candidates are skipped (and say so), which keeps
    a GPU sweep inside its time limit whatever the compiler's cache state."""
    if compile:
        torch._dynamo.reset()  # fresh caches: no recompile limit, no automatic dynamic shapes
    fns = case.build()
    if not compile:
        fns.pop(COMPILE, None)
    notes: dict[str, str] = {}
    ref = None
    for name in list(fns):
        if name == COMPILE and compile_state["spent"] > compile_state["budget"]:
            notes[name] = "skipped: compile budget spent"
            del fns[name]
            continue
        start = time.perf_counter()
        gpu_memory = case.memory and case.device.startswith("cuda")
        if gpu_memory:
            torch.cuda.reset_peak_memory_stats()
        try:
            out = fns[name]()
            synchronize(case.device)
        except Exception as exc:  # a failing candidate is a result, not a crash
            notes[name] = _failure(name, exc)
            del fns[name]
            continue
        else:
            if gpu_memory:
                notes[name] = f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        finally:
            if name == COMPILE:
                compile_state["spent"] += time.perf_counter() - start
        if name == EAGER:
            ref = out
        elif ref is not None and (note := mismatch(out, ref, case.dtype)):
            notes[name] = f"{notes[name]}; {note}" if name in notes else note
        del out
    del ref
    counters = cpu_counters()
    times = time_interleaved(fns, case.device, min_run_time, rounds, notes)
    others = None if case.device.startswith("cuda") else others_cpu_percent(counters,
                                                                             cpu_counters())
    eager_time = times.get(EAGER)
    records = []
    for name in [*fns, *(n for n in notes if n not in fns)]:
        seconds = times.get(name)
        gbps = case.nbytes / seconds / 1e9 if seconds else None
        record = {
            "family": case.family, "op": case.op, "mode": case.mode, "shape": list(case.shape),
            "dtype": dtype_name(case.dtype), "backend": name, "time_s": seconds,
            "speedup": eager_time / seconds if seconds and eager_time else None,
            "gbps": gbps, "pct_ceiling": 100 * gbps / ceiling if gbps else None,
            "nbytes": case.nbytes, "note": notes.get(name, ""), "others_cpu_pct": others,
            "tflops": case.flops / seconds / 1e12 if seconds and case.flops else None,
        }
        if others is not None and others > NOISY_PERCENT and not record["note"]:
            record["note"] = f"noisy: other processes took {others:.0f}% CPU"
        if case.target and case.target[0] == name:
            record["target"] = case.target[1]
        records.append(record)
    del fns
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return records


def known_families() -> list[str]:
    """Every `bench/<family>.py` module (anything here that is not the harness itself)."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_FAMILIES)


def collect_cases(families: list[str], device: str, quick: bool) -> list[Case]:
    cases = []
    for family in families:
        module = importlib.import_module(f"bench.{family}")
        cases.extend(module.cases(device, quick))
    return cases


def collect_tables(families: list[str], device: str, quick: bool) -> dict[str, list[dict]]:
    """{family: [{"title", "headers", "rows"}]} from the families that define `tables(device,
    quick)`: results that are not timings (the models family's quantized accuracy)."""
    out = {}
    for family in families:
        module = importlib.import_module(f"bench.{family}")
        if hasattr(module, "tables"):
            out[family] = module.tables(device, quick)
    return out


def run(cases: list[Case], *, device: str, compile: bool = True, min_run_time: float = 0.1,
        rounds: int = 5, compile_budget: float = math.inf) -> tuple[float, list[dict]]:
    """Measure the ceiling, then every case; returns (ceiling GB/s, records)."""
    load = load_average()
    if not device.startswith("cuda") and load > 0.5:
        print(f"warning: load average {load:.1f} before the run: other processes share the CPU, "
              "so CPU timings will be noisy", file=sys.stderr)
    ceiling = copy_ceiling(device)
    print(f"copy ceiling on {device}: {ceiling:.1f} GB/s (read + write)", file=sys.stderr)
    state = {"budget": compile_budget, "spent": 0.0}
    records = []
    for case in progress(cases, lambda c: c.label):
        records += run_case(case, compile=compile, min_run_time=min_run_time, rounds=rounds,
                            ceiling=ceiling, compile_state=state)
    if compile and state["spent"]:
        print(f"torch.compile warm-ups took {state['spent']:.0f} s", file=sys.stderr)
    return ceiling, records
