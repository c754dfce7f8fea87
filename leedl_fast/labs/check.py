"""`leedl-fast check FILE --op OP`: grade a student's kernel for correctness and speed.

The student's file is imported in a worker process (a fresh one per check, forked from a
server that has torch imported; so a segfault or a hang in the student's code kills only the worker: the checker reports it, starts a new worker and goes
on with the next case). For each correctness case the worker builds fresh random inputs (odd
sizes, non-contiguous layouts), calls the student's function with every tensor it allocates
through torch.empty* poisoned with NaN, and compares each output with the float64 oracle under
the op's tolerance (see leedl_fast/labs/spec.py). Then it times the reference, torch, leedl_fast
and the student side by side and places each against the device's roofline.

Exit status: 0 when every case passes, 1 when one fails (wrong, unwritten, crash, timeout), 2
when the check cannot start (no such file, op or function).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import multiprocessing as mp
import os
import sys
import traceback
from pathlib import Path

from .roofline import format_time

OURS = "leedl_fast"  # FILE value that checks leedl_fast's own kernel for the op


@dataclasses.dataclass
class Result:
    label: str
    status: str          # PASS, FAIL, ERROR, CRASH, TIMEOUT
    message: str = ""
    worst: float | None = None   # worst |error| / tolerance over all outputs (<= 1 passes)


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------

_POISONED = ("empty", "empty_like", "empty_strided")


@contextlib.contextmanager
def poisoned_allocations():
    """torch.empty / empty_like / empty_strided / Tensor.new_empty return NaN-filled tensors
    (integer ones a sentinel, -123) while the student's function runs: an output element it
    never writes then reads NaN instead of whatever memory held."""
    import torch

    def poison(t):
        if isinstance(t, torch.Tensor) and t.numel():
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            elif t.dtype != torch.bool:
                t.fill_(-123 if t.dtype not in (torch.uint8,) else 123)
        return t

    def poisoning(allocate):
        def wrapper(*args, **kwargs):
            return poison(allocate(*args, **kwargs))
        return wrapper

    saved = {name: getattr(torch, name) for name in _POISONED}
    saved_new = torch.Tensor.new_empty
    try:
        for name, fn in saved.items():
            setattr(torch, name, poisoning(fn))
        torch.Tensor.new_empty = poisoning(saved_new)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
        torch.Tensor.new_empty = saved_new


def _load_candidate(path: str, spec, func: str | None, backend: str = "python"):
    """The callable to grade: the student's function, or leedl_fast's own for FILE=leedl_fast
    (run under leedl_fast.backend(backend) when a backend other than "python" is named)."""
    if path == OURS:
        if backend in (None, "python"):
            return spec.ours
        import leedl_fast

        def ours(*args):
            with leedl_fast.backend(backend):
                return spec.ours(*args)
        return ours
    module_spec = importlib.util.spec_from_file_location(f"student_{spec.name}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    name = func or spec.name
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and
                       getattr(v, "__module__", None) == module.__name__)
        raise LookupError(f"{path} has no function {name!r} (expected {spec.signature}); "
                          f"its functions: {', '.join(found) or 'none'}")
    return fn


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fmt_index(name, idx):
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]"


def compare(spec, got, expected, torch_out=None):
    """(ok, worst ratio, message): each output against the float64 oracle. For fp16/bf16 the
    allowance is the larger of the fixed tolerance and 3 x torch's own largest error in that
    dtype plus one ulp at the output's scale (the rule of our own tests)."""
    import torch

    from .spec import as_tuple

    got, expected = as_tuple(got), as_tuple(expected)
    if len(got) != len(expected):
        return False, None, (f"returned {len(got)} output(s), expected {len(expected)}: "
                             f"{', '.join(spec.outputs)}")
    worst, where = 0.0, ""
    torch_out = as_tuple(torch_out) if torch_out is not None else (None,) * len(got)
    for name, g, e, t in zip(spec.outputs, got, expected, torch_out):
        if not isinstance(g, torch.Tensor):
            return False, None, f"output {name} is a {type(g).__name__}, not a tensor"
        if tuple(g.shape) != tuple(e.shape):
            return False, None, f"output {name} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        if g.device.type != e.device.type:
            return False, None, f"output {name} is on {g.device}, expected {e.device.type}"
        want_dtype = t.dtype if t is not None else g.dtype
        if g.dtype != want_dtype:
            return False, None, f"output {name} is {g.dtype}, expected {want_dtype}"
        g64, e64 = g.detach().double(), e.detach().double()
        atol, rtol = spec.tolerance(name)
        allowed = atol + rtol * e64.abs()
        if g.dtype in (torch.float16, torch.bfloat16) and t is not None:
            # our tests' rule for half types: the largest error at most 3x torch's own largest
            # error in the same dtype, plus one ulp at the output's scale
            finite = torch.isfinite(e64)
            theirs = (t.double() - e64).abs()[finite].nan_to_num(0.0).max() if finite.any() \
                else torch.tensor(0.0, dtype=torch.float64)
            ulp = torch.finfo(g.dtype).eps * (e64[finite].abs().max() if finite.any() else 0.0)
            allowed = torch.maximum(allowed, (3 * theirs + ulp).expand_as(e64))
        bad_nan = ~torch.isfinite(g64) & torch.isfinite(e64)
        if bad_nan.any():
            idx = bad_nan.nonzero()[0].tolist()
            return False, math.inf, (
                f"{int(bad_nan.sum())} of {g.numel()} elements of {name} are NaN/inf where the "
                f"oracle is finite, first at {_fmt_index(name, idx)} (an output element never "
                f"written? outputs from torch.empty* start as NaN here; or an input read outside "
                f"its strides? the gaps of a strided input hold NaN)")
        err = (g64 - e64).abs().nan_to_num(0.0)
        ratio = err / allowed
        r = float(ratio.max()) if ratio.numel() else 0.0
        if r > worst:
            idx = (ratio == ratio.max()).nonzero()[0].tolist()
            worst = r
            where = (f"|err| {float(err.flatten()[ratio.flatten().argmax()]):.3g} at "
                     f"{_fmt_index(name, idx)} (got {float(g64[tuple(idx)]):.6g}, "
                     f"want {float(e64[tuple(idx)]):.6g})")
    msg = f"worst {worst:.3g} of tolerance" + (f", {where}" if where else "")
    return worst <= 1.0, worst, msg


def _fresh(case, device, seed):
    import torch

    return case.make(device, case.dtype, torch.Generator().manual_seed(seed))


def _run_case(spec, fn, case, device, seed):
    import torch

    from .spec import to_double

    # Fresh and identical inputs for each party (the same seed): the student may not change
    # its inputs, the oracle gets float64 copies, torch its own.
    oracle_in = to_double(_fresh(case, device, seed))
    expected = spec.oracle(**oracle_in)
    if spec.inplace:
        expected = tuple(oracle_in[n] for n in spec.inplace)
    torch_out = None
    if case.dtype in (torch.float16, torch.bfloat16):
        tin = _fresh(case, device, seed)
        torch_out = spec.torch_fn(**tin)
        if spec.inplace:
            torch_out = tuple(tin[n] for n in spec.inplace)
    student_in = _fresh(case, device, seed)
    pristine = _fresh(case, device, seed)
    with poisoned_allocations():
        got = fn(*[student_in[a] for a in spec.args])
        _sync(device)
    if spec.inplace:
        got = tuple(student_in[n] for n in spec.inplace)
    else:
        for name in spec.args:
            a, b = student_in[name], pristine[name]
            if isinstance(a, torch.Tensor) and not torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)):
                return Result(case.label, "FAIL", f"modified its input {name!r} "
                                                 "(inputs are read-only)")
    ok, worst, msg = compare(spec, got, expected, torch_out)
    return Result(case.label, "PASS" if ok else "FAIL", msg, worst)


def _caller(spec, fn, inputs, positional):
    """fn on these inputs, as a zero-argument callable: the student's function positionally in
    the documented order, the spec's own callables by keyword."""
    if positional:
        args = [inputs[a] for a in spec.args]
        return lambda: fn(*args)
    return lambda: fn(**inputs)


def _bench_case(spec, fn, case, device, seed, quick):
    """[(candidate, seconds or None, note)] for the reference, torch, leedl_fast and the student."""
    from .roofline import time_candidate

    candidates = [("reference", spec.reference), ("torch", spec.torch_fn),
                  ("leedl_fast", spec.ours), ("yours", fn)]
    return [time_candidate(name, _caller(spec, candidate, _fresh(case, device, seed),
                                         positional=name == "yours"), device, quick)
            for name, candidate in candidates if candidate is not None]


def _worker(conn, path, op, func, device, backend, quick):
    try:
        import torch  # noqa: F401

        from .spec import get

        spec = get(op)
        fn = _load_candidate(path, spec, func, backend)
    except BaseException as e:  # noqa: BLE001 -- the student's module failed to import (even
        # sys.exit in it): report it, don't crash
        conn.send(("load_error", f"{type(e).__name__}: {e}\n" +
                   "".join(traceback.format_exc().splitlines(True)[-6:])))
        return
    conn.send(("ready", None))
    cases = spec.cases(quick)
    bench_cases = spec.bench_cases(quick)
    while True:
        kind, i = conn.recv()
        if kind == "stop":
            return
        try:
            if kind == "case":
                conn.send(("result", _run_case(spec, fn, cases[i], device, 1000 + i)))
            else:
                from .roofline import ceilings

                c = bench_cases[i]
                rows = _bench_case(spec, fn, c, device, 2000 + i, quick)
                inputs = _fresh(c, device, 2000 + i)
                conn.send(("bench", (rows, spec.nbytes(inputs), spec.flops(inputs),
                                     ceilings(device, c.dtype))))
        except Exception as e:  # noqa: BLE001 -- the student's error is the case's result
            tb = traceback.format_exc().splitlines()
            where = next((line.strip() for line in reversed(tb)
                          if line.strip().startswith("File")), "")
            label = (cases if kind == "case" else bench_cases)[i].label
            conn.send(("result", Result(label, "ERROR", f"{type(e).__name__}: {e} ({where})")))


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------

def _context():
    """Workers come from a fork server with torch and leedl_fast already imported: a fresh
    process per check (or after a crash) then costs a fork, not a 2-3 s interpreter start. Only
    imports run in the server (no OpenMP region, no CUDA, no triton: a worker imports triton
    under the caller's TRITON_INTERPRET). Where there is no fork server (Windows): spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "leedl_fast"])
    return ctx


class _Worker:
    def __init__(self, args):
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()

    def request(self, msg, timeout):
        """('ok', reply) | ('crash', description) | ('timeout', None)."""
        if msg is not None:
            try:
                self.conn.send(msg)
            except (BrokenPipeError, OSError):
                return "crash", self._death()
        if not self.conn.poll(timeout) and self.proc.is_alive():
            self.kill()
            return "timeout", None
        try:
            return "ok", self.conn.recv()
        except (EOFError, OSError):
            return "crash", self._death()

    def _death(self):
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            import signal

            try:
                return f"the process died of signal {signal.Signals(-code).name}"
            except ValueError:
                return f"the process died of signal {-code}"
        return f"the process exited with status {code}"

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def stop(self):
        with contextlib.suppress(Exception):
            self.conn.send(("stop", None))
        self.proc.join(5)
        self.kill()


def check(path: str, op: str, *, device: str = "cpu", backend: str = "python",
          func: str | None = None, quick: bool | None = None, timeout: float = 60.0,
          bench: bool = True, out=print, record: dict | None = None) -> int:
    """Run the check; print the report through `out`; return the exit status (0 pass, 1 fail,
    2 cannot start). `record`, when given, receives the results: record["cases"] = [Result],
    record["timings"] = [{"case", "candidate", "seconds", "nbytes", "flops", "bound", "note"}]."""
    if record is None:
        record = {}
    record.setdefault("cases", [])
    record.setdefault("timings", [])
    from .spec import get

    if quick is None:
        quick = os.environ.get("LEEDL_FAST_LAB_QUICK") == "1"
    try:
        spec = get(op)
    except KeyError as e:
        out(f"leedl-fast check: {e.args[0]}")
        return 2
    if path != OURS and backend not in ("python", "triton"):
        out(f"leedl-fast check: --backend {backend} names one of leedl_fast's own backends: "
            "use it with FILE=leedl_fast (your file's backend is python or triton)")
        return 2
    if backend == "triton" and not device.startswith("cuda") and \
            os.environ.get("TRITON_INTERPRET") != "1":
        out("leedl-fast check: --backend triton on the CPU runs Triton kernels in the "
            "interpreter, which triton reads from the environment: run "
            "`export TRITON_INTERPRET=1` first (or --device cuda on a GPU)")
        return 2
    if path != OURS and not Path(path).is_file():
        out(f"leedl-fast check: no such file: {path}")
        return 2
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            out("leedl-fast check: --device cuda, but torch sees no CUDA device")
            return 2
    path = path if path == OURS else str(Path(path).resolve())
    args = (path, op, func, device, backend, quick)
    who = "leedl_fast's own kernel" if path == OURS else path
    out(f"leedl-fast check: {who}\n  op      {spec.signature}\n  device  {device}, backend "
        f"{backend}{' (Triton interpreter)' if backend == 'triton' and device == 'cpu' else ''}"
        f"{', quick' if quick else ''}")

    worker = _Worker(args)
    status, reply = worker.request(None, max(timeout, 120.0))  # import: torch, triton, the file
    if status != "ok" or reply[0] != "ready":
        why = reply[1] if status == "ok" else (reply or f"no answer in {max(timeout, 120.0):.0f} s")
        out(f"\nFAIL  could not load the function: {why}")
        worker.kill()
        return 2 if status == "ok" and "no function" in str(why) else 1

    results = []
    tol = ", ".join(f"{k} atol {a:g} rtol {r:g}" for k, (a, r) in spec.tol.items())
    out(f"\ncorrectness: float64 oracle, {tol}; fp16/bf16: max error within 3x torch's own "
        "+ 1 ulp")
    cases = spec.cases(quick)
    interpreted = backend == "triton" and not device.startswith("cuda")
    for i, case in enumerate(cases):
        if interpreted and str(case.dtype) == "torch.bfloat16":
            # CONVENTIONS.md: under the interpreter tl.dot on bf16 is silently wrong (numpy has
            # no bf16), so a correct kernel could fail here and a wrong one pass
            result = Result(case.label, "SKIP", "bf16 is not checked under the Triton "
                                                "interpreter (its tl.dot on bf16 is wrong); "
                                                "run with --device cuda")
            record["cases"].append(result)
            out(f"  {result.status:7s} {case.label:28s} {result.message}")
            continue
        status, reply = worker.request(("case", i), timeout)
        if status == "ok":
            result = reply[1]
        else:
            result = Result(case.label, "TIMEOUT" if status == "timeout" else "CRASH",
                            f"no result in {timeout:.0f} s (a hang?); the worker was killed"
                            if status == "timeout" else reply)
            worker = _Worker(args)
            s2, r2 = worker.request(None, max(timeout, 120.0))
            if s2 != "ok" or r2[0] != "ready":
                out(f"  {result.status:7s} {case.label}: {result.message}")
                out("  cannot restart the worker; stopping")
                worker.kill()
                return 1
        results.append(result)
        record["cases"].append(result)
        out(f"  {result.status:7s} {case.label:28s} {result.message}")
    failed = [r for r in results if r.status != "PASS"]
    skipped = len(cases) - len(results)
    out(f"\n{len(results) - len(failed)}/{len(results)} cases pass"
        + (f" ({skipped} skipped)" if skipped else ""))

    if bench and not failed:
        out("\nspeed (median time; % roofline = the device's time bound / the time)")
        header = ["case", "candidate", "time", "vs torch", "GB/s", "TFLOP/s", "% roofline", "note"]
        rows = []
        for i, case in enumerate(spec.bench_cases(quick)):
            status, reply = worker.request(("bench", i), max(timeout, 600.0))
            if status != "ok" or reply[0] != "bench":
                msg = reply[1].message if status == "ok" else status
                rows.append([case.label, "yours", "-", "-", "-", "-", "-", f"failed: {msg}"])
                if status != "ok":
                    worker = _Worker(args)
                    worker.request(None, max(timeout, 120.0))
                continue
            timings, nbytes, flops, ceil = reply[1]
            torch_t = next((t for n, t, _ in timings if n == "torch"), None)
            bound = ceil.bound(nbytes, flops)
            for name, t, note in timings:
                record["timings"].append({"case": case.label, "candidate": name, "seconds": t,
                                          "nbytes": nbytes, "flops": flops, "bound": bound,
                                          "note": note})
                rows.append([case.label, name, format_time(t),
                             f"{torch_t / t:.2f}x" if t and torch_t else "-",
                             f"{nbytes / t / 1e9:.1f}" if t else "-",
                             f"{flops / t / 1e12:.3f}" if t else "-",
                             f"{100 * bound / t:.1f}%" if t else "-", note])
            rows.append([case.label, "bound", format_time(bound), "", "", "",
                         f"{ceil.limit(nbytes, flops)}",
                         (f"{nbytes:,} B, {flops:,} FLOP; ceilings {ceil.gbps:.0f} GB/s, "
                          f"{ceil.gflops:.0f} GFLOP/s ({ceil.dtype} matmul)")])
        widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
        for r in [header, ["-" * w for w in widths], *rows]:
            out("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    elif bench:
        out("speed: not measured (fix the failing cases first)")
    worker.stop()
    out("\nRESULT: " + ("PASS" if not failed else
                        f"FAIL ({len(failed)} of {len(results)} cases: " +
                        ", ".join(sorted({r.status for r in failed})) + ")"))
    return 0 if not failed else 1


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="leedl-fast check",
        description="Grade your kernel for OP: correctness against a float64 oracle (fresh random "
                    "inputs, odd shapes, strided layouts, every output element written), then "
                    "speed against the reference, torch and leedl_fast. FILE=leedl_fast checks "
                    "leedl_fast's own kernel. `leedl-fast check --list` lists the ops and their "
                    "signatures.")
    p.add_argument("file", nargs="?", help="your .py file (or leedl_fast)")
    p.add_argument("--op", help="the op, e.g. layer_norm (see --list)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="python",
                   choices=["python", "triton", "cpu", "cuda", "reference"],
                   help="triton: your function launches Triton kernels (on the CPU: in the "
                        "interpreter, with TRITON_INTERPRET=1 in the environment). With FILE=leedl_fast: which of "
                        "leedl_fast's backends to check (triton, cpu, cuda, reference; "
                        "default: the one it would pick)")
    p.add_argument("--func", help="the function's name in FILE (default: the op's name)")
    p.add_argument("--quick", action="store_true", default=None,
                   help="a few small cases (also LEEDL_FAST_LAB_QUICK=1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
    p.add_argument("--no-bench", action="store_true", help="correctness only")
    p.add_argument("--list", action="store_true", help="list the ops")
    a = p.parse_args(argv)
    if a.list:
        from .spec import all_specs

        for spec in sorted(all_specs().values(), key=lambda s: (s.family, s.name)):
            print(f"{spec.family:10s} {spec.signature}\n{'':10s}   {spec.doc}")
        return 0
    if not a.file or not a.op:
        p.error("FILE and --op are required (or --list)")
    return check(a.file, a.op, device=a.device, backend=a.backend, func=a.func, quick=a.quick,
                 timeout=a.timeout, bench=not a.no_bench)
