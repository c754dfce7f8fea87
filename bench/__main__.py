"""Command line of the benchmarks: `python -m bench [family ...] [--plot] [--no-compile] [--quick]`.

Full runs append to `bench/results/<device>.json` and rewrite `<device>.md`; `--quick` runs (one
small shape per op, a smoke test) print their tables but save nothing unless `--save` is given,
so the committed results always come from full sweeps.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch

from bench import harness, report


def parse_args(argv: list[str] | None, prog: str = "python -m bench") -> argparse.Namespace:
    families = harness.known_families()
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("families", nargs="*", metavar="family",
                   help=f"families to run (default: all of {families})")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--quick", action="store_true", help="one small shape per op (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--plot", action="store_true", help="write PNG plots to bench/results/")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=None,
                   help="write bench/results/ files (default: on for full runs, off for --quick)")
    p.add_argument("--min-run-time", type=float,
                   help="CPU seconds per timing block (default 0.1, quick 0.05)")
    p.add_argument("--rounds", type=int,
                   help="interleaved timing rounds, best kept (default 5 on CPU, 1 on GPU)")
    p.add_argument("--compile-budget", type=float,
                   help="seconds of torch.compile warm-up before later compiles are skipped "
                        "(default 240 on GPU, unlimited on CPU)")
    p.add_argument("--only", metavar="REGEX",
                   help="keep cases whose label matches, e.g. '^layer_norm fwd\\+bwd 4096x768'")
    p.add_argument("--out", type=Path, help="results folder (default: bench/results)")
    p.add_argument("--warm-allocator", action="store_true",
                   help="CPU: make glibc recycle freed memory (no page faults on fresh outputs "
                        "for any candidate): kernel-against-kernel numbers, independent of the "
                        "allocator's history. Default: the allocator as users get it")
    args = p.parse_args(argv)
    unknown = sorted(set(args.families) - set(families))
    if unknown:
        p.error(f"unknown families {unknown}; known: {families}")
    args.families = args.families or families
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 0.1
    if args.rounds is None:
        args.rounds = 1 if gpu else 5
    if args.compile_budget is None:
        args.compile_budget = 240.0 if gpu else math.inf
    if args.save is None:
        args.save = not args.quick
    return args


def main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    args = parse_args(argv, prog)
    if args.out:
        report.RESULTS_DIR = args.out
    harness.set_threads()
    if args.warm_allocator:
        harness.warm_allocator()
    start = time.perf_counter()
    cases = harness.collect_cases(args.families, args.device, args.quick)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.label)]
    load = harness.load_average()
    ceiling, records = harness.run(cases, device=args.device, compile=not args.no_compile,
                                   min_run_time=args.min_run_time, rounds=args.rounds,
                                   compile_budget=args.compile_budget)
    report.print_report(records, ceiling, args.device)
    # Tables a family prints besides its timings (e.g. models: quantized size and accuracy);
    # skipped under --only, which picks timing cases.
    tables = {} if args.only else harness.collect_tables(args.families, args.device, args.quick)
    for family_tables in tables.values():
        report.print_tables(family_tables)
    run = report.run_metadata(args.device, ceiling, args.families,
                              sys.argv[1:] if argv is None else list(argv), args.quick, load)
    run["records"] = records
    if tables:
        run["tables"] = tables
    if args.save:
        for path in report.save(run):
            print(f"wrote {path}")
    if args.plot:
        for path in report.plot(records, run["device_slug"]):
            print(f"wrote {path}")
    print(f"\n{len(cases)} cases in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
