"""`leedl-fast roofline OP [--shape k=v ...] [--dtype] [--device] [--plot [PATH]] [--list]`:
an op's roofline at a shape, before you write (or time) a kernel for it.

Prints the shape, the minimum bytes moved and the FLOPs (the op's own formulas, `OpSpec.nbytes`
and `OpSpec.flops`, the same numbers `leedl-fast check` uses), the arithmetic intensity, this
device's measured ceilings (copy GB/s, matmul GFLOP/s; leedl_fast/labs/roofline.py) with their
ridge point, which ceiling bounds the op and the time no kernel can beat. `--plot` then times
leedl_fast, torch and the reference at that shape and draws them on a log-log roofline PNG.

The numbers come from tensors on the "meta" device (shapes and dtypes, no memory): the op's
case for the shape is built under `torch.device("meta")`, so any shape works, even one larger
than this machine's memory. A spec whose inputs cannot be built on meta (one that needs real
values to build them) is built on the CPU instead, which costs the shape's memory. `--plot`
builds real inputs on the device, of course.

LEEDL_FAST_LAB_QUICK=1 (what the docs test sets) keeps `--plot` cheap: short timing blocks, and
without an explicit PATH the PNG goes to the temporary directory rather than bench/results/.
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

from .roofline import format_time

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# ----------------------------------------------------------------------------------------------
# the numbers
# ----------------------------------------------------------------------------------------------

def parse_shape(spec, items: list[str] | None) -> dict[str, int]:
    """The spec's default shape with the `k=v` items applied; ValueError names the valid keys."""
    if spec.shape_case is None or not spec.default_shape:
        raise ValueError(f"op {spec.name!r} has no roofline shape (its spec sets no "
                         "default_shape / shape_case)")
    shape = dict(spec.default_shape)
    valid = ", ".join(f"{k} (default {v})" for k, v in spec.default_shape.items())
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--shape expects KEY=VALUE, got {item!r}; {spec.name}'s keys: "
                             f"{valid}")
        if key not in shape:
            raise ValueError(f"unknown shape key {key!r} for {spec.name}; valid keys: {valid}")
        try:
            shape[key] = int(value)
        except ValueError:
            raise ValueError(f"--shape {key}={value!r}: not an integer") from None
        if shape[key] < 1:
            raise ValueError(f"--shape {key}={value}: must be >= 1")
    return shape


def build_inputs(spec, shape: dict[str, int], dtype=None, device: str = "meta", seed: int = 0):
    """(inputs, dtype, where built) for the op at `shape`. On "meta" nothing is allocated; a
    spec that cannot build on meta is built on the CPU (where = "cpu")."""
    import torch

    case = spec.shape_case(shape)
    dtype = dtype or case.dtype
    if device == "meta":
        try:
            with torch.device("meta"):
                return case.make("meta", dtype, torch.Generator().manual_seed(seed)), dtype, \
                    "meta"
        except Exception:  # noqa: BLE001 -- e.g. .item() or nonzero() on a meta tensor
            device = "cpu"
    return case.make(device, dtype, torch.Generator().manual_seed(seed)), dtype, device


def estimate(spec, inputs, ceil) -> dict:
    """Bytes, FLOPs, intensity, ridge point, the bounding ceiling and the time bound."""
    nbytes, flops = int(spec.nbytes(inputs)), int(spec.flops(inputs))
    mem_s, comp_s = nbytes / (ceil.gbps * 1e9), flops / (ceil.gflops * 1e9)
    return {"nbytes": nbytes, "flops": flops,
            "intensity": flops / nbytes if nbytes else float("inf"),
            "ridge": ceil.gflops / ceil.gbps, "limit": ceil.limit(nbytes, flops),
            "bound": ceil.bound(nbytes, flops), "memory_s": mem_s, "compute_s": comp_s}


def _fmt_bytes(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _describe(inputs) -> str:
    import torch

    parts = []
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
                         + ("" if v.is_contiguous() else " strided"))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(t, torch.Tensor) for t in v):
            parts.append(f"{k} [{len(v)} tensors]")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        return next(line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------
# --plot: measure and draw
# ----------------------------------------------------------------------------------------------

def measure(spec, inputs, device: str, quick: bool) -> list[tuple[str, float | None, str]]:
    """[(candidate, median seconds or None, note)] for leedl_fast, torch and the reference. A
    candidate slower than a second per call (the reference at a big shape) is timed by one call."""
    from .roofline import time_candidate

    rows = []
    for name, fn in (("leedl_fast", spec.ours), ("torch", spec.torch_fn),
                     ("reference", spec.reference)):
        if fn is not None:
            rows.append(time_candidate(name, functools.partial(fn, **inputs), device, quick,
                                       slow=1.0))
    return rows


def plot(path: Path, title: str, est: dict, ceil, rows) -> Path:
    """A log-log roofline: x = FLOP/byte, y = GFLOP/s, the two ceilings, one point per
    candidate. An op without FLOPs (a pure copy) is drawn as achieved GB/s vs the copy ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    timed = [(n, t) for n, t, _ in rows if t]
    if est["flops"] > 0:
        x0 = min(est["intensity"], est["ridge"]) / 30
        x1 = max(est["intensity"], est["ridge"]) * 30
        xs = [x0 * (x1 / x0) ** (i / 200) for i in range(201)]
        ax.plot(xs, [min(ceil.gbps * x, ceil.gflops) for x in xs], color="black", lw=2,
                label="roofline")
        ax.plot(xs, [ceil.gbps * x for x in xs], color="tab:blue", ls="--", lw=1,
                label=f"copy {ceil.gbps:.0f} GB/s")
        ax.axhline(ceil.gflops, color="tab:red", ls="--", lw=1,
                   label=f"matmul {ceil.gflops:.0f} GFLOP/s ({ceil.dtype})")
        ax.axvline(est["ridge"], color="grey", ls=":", lw=1)
        ax.annotate(f"ridge {est['ridge']:.3g}", (est["ridge"], ceil.gflops), fontsize=7,
                    xytext=(4, -12), textcoords="offset points", color="grey")
        ax.axvline(est["intensity"], color="tab:green", ls=":", lw=1)
        attainable = est["flops"] / est["bound"] / 1e9
        ax.plot([est["intensity"]], [attainable], marker="o", mfc="none", color="black", ms=9,
                ls="none", label=f"bound: {format_time(est['bound'])} ({est['limit']})")
        ys = [attainable] + [est["flops"] / t / 1e9 for _, t in timed]
        for k, (name, t) in enumerate(timed):
            y = est["flops"] / t / 1e9
            ax.plot([est["intensity"]], [y], marker="os^D"[k % 4], ls="none", ms=7,
                    label=f"{name}: {format_time(t)} ({100 * est['bound'] / t:.0f}% of bound)")
            ax.annotate(name, (est["intensity"], y), fontsize=8, textcoords="offset points",
                        xytext=(7, -3) if k % 2 == 0 else (-7, -3), ha="left" if k % 2 == 0
                        else "right")  # alternate sides: equal times would overprint
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x0, x1)
        ax.set_ylim(min(min(ys) / 5, ceil.gbps * x0), ceil.gflops * 3)
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("achieved GFLOP/s")
    else:
        names = [n for n, _ in timed]
        ax.bar(range(len(names)), [est["nbytes"] / t / 1e9 for _, t in timed])
        ax.set_xticks(range(len(names)), names)
        ax.axhline(ceil.gbps, color="tab:blue", ls="--", label=f"copy {ceil.gbps:.0f} GB/s")
        ax.set_ylabel("achieved GB/s (no FLOPs: bytes / time)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def default_plot_path(op: str, device: str, quick: bool) -> Path:
    """bench/results/roofline-<op>-<device>.png in the repository (a quick run: the temp dir)."""
    name = f"roofline-{op}-{device.split(':')[0]}.png"
    if quick:
        return Path(tempfile.gettempdir()) / "leedl-fast" / name
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench").is_dir():
        root = Path.cwd()
    return root / "bench" / "results" / name


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def _list(out) -> int:
    from .spec import all_specs

    for spec in sorted(all_specs().values(), key=lambda s: (s.family, s.name)):
        shape = " ".join(f"{k}={v}" for k, v in spec.default_shape.items()) \
            if spec.shape_case and spec.default_shape else "(no roofline shape)"
        out(f"{spec.family:10s} {spec.name:24s} --shape {shape}")
    return 0


def main(argv=None, out=print) -> int:
    p = argparse.ArgumentParser(
        prog="leedl-fast roofline",
        description="An op's minimum bytes and FLOPs at a shape, its arithmetic intensity, this "
                    "device's measured ceilings and the time no kernel can beat. --plot also "
                    "times leedl_fast, torch and the reference and draws the roofline.",
        epilog="example: leedl-fast roofline layer_norm --shape rows=8192 n=1024 --plot")
    p.add_argument("op", nargs="?", help="the op, e.g. layer_norm (see --list)")
    p.add_argument("--shape", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override the op's default shape (keys: see --list)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: the op's (fp32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PATH",
                   help="time leedl_fast, torch and the reference and write a roofline PNG "
                        "(default bench/results/roofline-<op>-<device>.png)")
    p.add_argument("--list", action="store_true", help="the ops and their shape keys")
    a = p.parse_args(argv)
    if a.list:
        return _list(out)
    if a.op is None and a.plot and not a.plot.endswith(".png"):  # `roofline --plot OP`
        a.op, a.plot = a.plot, ""
    if not a.op:
        p.error("OP is required (or --list)")

    import torch

    from .roofline import ceilings
    from .spec import get

    try:
        spec = get(a.op)
    except KeyError as e:
        out(f"leedl-fast roofline: {e.args[0]}")
        return 2
    try:
        shape = parse_shape(spec, a.shape)
    except ValueError as e:
        out(f"leedl-fast roofline: {e}")
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        out("leedl-fast roofline: --device cuda, but torch sees no CUDA device")
        return 2
    quick = os.environ.get("LEEDL_FAST_LAB_QUICK") == "1"
    dtype = getattr(torch, DTYPES[a.dtype]) if a.dtype else None
    inputs, dtype, where = build_inputs(spec, shape, dtype)
    ceil = ceilings(a.device, dtype)
    try:
        est = estimate(spec, inputs, ceil)
    except Exception:  # formulas that need values (.item()) fail on meta tensors
        if where != "meta":
            raise
        inputs, dtype, where = build_inputs(spec, shape, dtype, device="cpu")
        est = estimate(spec, inputs, ceil)
    dname = next((k for k, v in DTYPES.items() if getattr(torch, v) == dtype),
                 str(dtype).replace("torch.", ""))
    shape_s = " ".join(f"{k}={v}" for k, v in shape.items())

    out(f"leedl-fast roofline: {spec.name} at {shape_s}, {dname}, on {a.device}")
    out(f"  op           {spec.signature}")
    out(f"  inputs       {_describe(inputs)}"
        + ("" if where == "meta" else f"  (built on {where}: not buildable on meta)"))
    out(f"  bytes        {est['nbytes']:,} B ({_fmt_bytes(est['nbytes'])}): the minimum -- "
        "every input read once, every output written once")
    out(f"  FLOPs        {est['flops']:,}")
    out(f"  intensity    {est['intensity']:.3g} FLOP/byte")
    out(f"  ceilings     copy {ceil.gbps:.1f} GB/s, matmul {ceil.gflops:.1f} GFLOP/s "
        f"({ceil.dtype}), measured on {device_name(a.device)}")
    out(f"  ridge point  {est['ridge']:.3g} FLOP/byte (matmul / copy: an op below it is "
        "memory-bound, above it compute-bound)")
    cmp = "<" if est["limit"] == "memory" else ">="
    out(f"  bound by     {est['limit']}: intensity {est['intensity']:.3g} {cmp} ridge "
        f"{est['ridge']:.3g}")
    out(f"  time bound   {format_time(est['bound'])} (bytes / copy = {format_time(est['memory_s'])}"
        f", FLOPs / matmul = {format_time(est['compute_s'])}): no kernel can be faster")
    out(f"\npredict before you measure: write down how close to {format_time(est['bound'])} you "
        f"expect torch, leedl_fast and your kernel to get, then measure: leedl-fast roofline "
        f"{spec.name}{' --shape ' + shape_s if a.shape else ''} --plot  (or leedl-fast check "
        f"FILE --op {spec.name})")
    if a.plot is None:
        return 0

    del inputs
    real, _, _ = build_inputs(spec, shape, dtype, device=a.device)
    rows = measure(spec, real, a.device, quick)
    out(f"\nmeasured on {a.device} ({'quick, ' if quick else ''}median):")
    table = [["candidate", "time", "GB/s", "GFLOP/s", "% of bound", "note"]]
    for name, t, note in rows:
        table.append([name, format_time(t), f"{est['nbytes'] / t / 1e9:.1f}" if t else "-",
                      f"{est['flops'] / t / 1e9:.1f}" if t else "-",
                      f"{100 * est['bound'] / t:.1f}%" if t else "-", note])
    widths = [max(len(r[j]) for r in table) for j in range(len(table[0]))]
    for r in table:
        out("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    path = Path(a.plot) if a.plot else default_plot_path(spec.name, a.device, quick)
    title = f"{spec.name} {shape_s} {dname} on {device_name(a.device)}"
    out(f"\nwrote {plot(path, title, est, ceil, rows)}")
    return 0
