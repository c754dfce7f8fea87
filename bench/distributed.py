"""Data-parallel scaling of examples/train_gpt_distributed.py: 1 process vs N processes (torchrun)
on the same global batch, DDP and FSDP2, tokens/s of the whole group.

    python -m bench.distributed                        # the committed CPU table (~4 min, 2 cores)
    python -m bench.distributed --shape 256x4 --nproc 1 2 4 --repeats 5
    python -m bench.distributed --size base --length 1024 --global-batch 64 --nproc 1 8  # GPUs

Every process runs with --threads 1 (on a CPU: 1 process = 1 core, N processes = N cores), so the
speedup is what data parallelism buys over one core. One more row per shape, "1 x N threads",
gives the alternative: the same single process using the N cores through intra-op threads.
The runs of a shape are interleaved round-robin --repeats times and each configuration keeps
its best tokens/s (the build machine is shared; the range is printed too). The table goes to
bench/results/distributed-<device>.md unless --no-save.

Shapes: D_MODELxLAYERS of the GPT (heads: the preset's). The default pair is the tiny book model
(64x2, 0.1 M params: each step is a few ms of compute, so per-collective latency decides) and
256x4 (3.2 M params, ~0.6 s per step on one core: compute decides).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from bench import report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_gpt_distributed.py"
HEADERS = ["processes", "threads/process", "strategy", "tokens/s", "range", "speedup",
           "efficiency"]
report.NUMERIC.update(  # right-aligned in report's tables
    {"processes", "threads/process", "tokens/s", "speedup", "efficiency"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--shape", action="append", metavar="DxL",
                   help="d_model x layers, repeatable (default: 64x2 and 256x4 for --size tiny,"
                        " the preset for base)")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--strategy", nargs="+", choices=["ddp", "fsdp"], default=["ddp", "fsdp"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration, best kept")
    p.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.shape is None:
        args.shape = ["64x2", "256x4"] if args.size == "tiny" else [None]
    if 1 not in args.nproc:
        p.error("--nproc must include 1 (the baseline)")
    return args


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, shape, nproc, threads, strategy):
    """One run of the example; its RESULT dict."""
    if nproc == 1:
        cmd = [sys.executable, str(EXAMPLE)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(EXAMPLE)]
    cmd += ["--size", args.size, "--steps", str(args.steps), "--global-batch",
            str(args.global_batch), "--length", str(args.length), "--strategy", strategy,
            "--threads", str(threads), "--quiet"]
    if shape:
        d_model, layers = shape.split("x")
        cmd += ["--d-model", d_model, "--layers", layers]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout,
                          check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(lines[0][len("RESULT "):])


def configurations(args):
    """(processes, threads per process, strategy); the 1-process 1-thread runs first."""
    configs = [(n, 1, s) for s in args.strategy for n in sorted(args.nproc)]
    configs += [(1, n, args.strategy[0]) for n in sorted(args.nproc) if n > 1]
    return configs


def measure(args, shape):
    """{config: [tokens/s of each repeat]} and one RESULT (for the model's description)."""
    runs, example = {}, None
    for r in range(args.repeats):
        for config in configurations(args):
            result = launch(args, shape, *config)
            runs.setdefault(config, []).append(result["tokens_per_s"])
            example = example or result
            print(f"  [{r + 1}/{args.repeats}] {config[0]} proc x {config[1]} threads "
                  f"{config[2]}: {result['tokens_per_s']:.0f} tokens/s", flush=True)
    return runs, example


def rows(runs):
    out = []
    for (nproc, threads, strategy), values in runs.items():
        best = max(values)
        base = max(runs[(1, 1, strategy)])
        speedup = best / base
        out.append([str(nproc), str(threads), strategy, f"{best:.0f}",
                    f"{min(values):.0f}-{best:.0f}", f"{speedup:.2f}x",
                    f"{speedup / (nproc * threads):.0%}"])
    return out


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    sections = []
    for shape in args.shape:
        print(f"shape {shape or args.size}: global batch {args.global_batch} x {args.length}, "
              f"{args.steps} steps, {args.repeats} repeats", flush=True)
        runs, example = measure(args, shape)
        table = rows(runs)
        print(report.format_text(HEADERS, table), flush=True)
        title = (f"GPT {example['layers']} layers x "
                 f"{example['d_model']} ({example['params'] / 1e6:.2f} M params), global batch "
                 f"{args.global_batch} x {args.length} tokens")
        sections.append(f"## {title}\n\n{report.format_markdown(HEADERS, table)}\n")
    load_after = os.getloadavg()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    header = (
        f"# Data-parallel scaling on {report.device_name(device)}\n\n"
        f"Generated by `{' '.join(['python -m bench.distributed', *(argv or sys.argv[1:])])}`"
        f" on {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
        f"commit `{report.git_commit()}`, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after.\n\n"
        "examples/train_gpt_distributed.py on the char corpus, leedl_fast modules and "
        "leedl_fast.optim.AdamW; every process uses `--threads 1` unless the row says otherwise, "
        f"so N processes use N cores. tokens/s: the whole group's, steps after the first 2, best "
        f"of {args.repeats} interleaved runs (range: worst-best; the machine is shared). "
        "speedup: vs 1 process x 1 thread of the same strategy; efficiency: speedup / cores.\n")
    text = header + "\n" + "\n".join(sections)
    if args.save:
        report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = report.RESULTS_DIR / f"distributed-{report.device_slug(device)}.md"
        path.write_text(text)
        print(f"saved {path.relative_to(ROOT)}")
    return text


if __name__ == "__main__":
    main()
