"""Measure every lab stage for the pages' speed tables:
`python -m bench.labs [--device cuda] [--quick] [--family F ...] [--out PATH]`.

The stages and how to check them come from the lab pages themselves (one source of truth): each
`leedl-fast check docs/labs/<family>/stage*.py --op OP [--backend B] [--func F]` line of a
```bash block of docs/labs/<family>.md is run here through `leedl_fast.labs.check` -- the full
check (not quick) unless --quick, on the chosen device (the page's own --device is ignored) --
and its timing rows become a markdown table: family, stage, op, case, time, vs torch, % roofline,
with torch's and leedl_fast's times for each op and case below its stages. The table goes to
stdout and, for a full run of every family, to bench/results/labs-<device>.md (`make labs-gpu`
on the GPU machine). Quick or filtered runs save nothing unless --out is given.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys
import time
from pathlib import Path

from leedl_fast.labs.roofline import format_time

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "docs" / "labs"


def bash_commands(page: Path) -> list[tuple[int, str]]:
    """[(line number, command)] of the `leedl-fast ...` lines in the page's ```bash blocks (a
    trailing backslash continues a command on the next line). tests/test_labs_docs.py runs
    these same lines."""
    out, lang, pending, start = [], None, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip().split() or [""])[0]
            pending = ""
            continue
        if lang != "bash":
            continue
        if pending:
            pending += " " + stripped
        elif stripped.startswith("leedl-fast "):
            pending, start = stripped, number
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        out.append((start, pending))
        pending = ""
    return out


def _check_parser():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("file", nargs="?")
    p.add_argument("--op")
    p.add_argument("--backend", default="python")
    p.add_argument("--func")
    return p


def stage_checks(labs: Path = LABS, families: list[str] | None = None,
                 warn=lambda msg: print(msg, file=sys.stderr)) -> list[dict]:
    """[{family, stage, file, op, backend, func}] for every stage a page checks, in page order,
    each (file, op, backend, func) once. Stages no page checks are reported through `warn`."""
    checks, seen = [], set()
    parser = _check_parser()
    for page in sorted(labs.glob("*.md")):
        family = page.stem
        if families and family not in families:
            continue
        for number, command in bash_commands(page):
            args = shlex.split(command, comments=True)
            if args[1:2] != ["check"]:
                continue
            a, _ = parser.parse_known_args(args[2:])
            if not a.file or not a.op:  # `leedl-fast check --list`
                continue
            path = Path(a.file)
            if path.parent != Path("docs/labs") / family or not path.name.startswith("stage"):
                continue  # `check leedl_fast --op ...`, a solution file, another family's file
            key = (a.file, a.op, a.backend, a.func)
            if key in seen:
                continue
            seen.add(key)
            checks.append({"family": family, "stage": path.stem, "file": a.file, "op": a.op,
                           "backend": a.backend, "func": a.func,
                           "where": f"{page.relative_to(ROOT)}:{number}"})
    checked = {c["file"] for c in checks}
    for d in sorted(p for p in labs.iterdir() if p.is_dir()) if labs.is_dir() else []:
        if families and d.name not in families:
            continue
        for stage in sorted(d.glob("stage*.py")):
            rel = stage.relative_to(ROOT).as_posix()
            if rel not in checked:
                warn(f"bench.labs: {rel}: no `leedl-fast check` command on "
                     f"docs/labs/{d.name}.md; not measured")
    return checks


def measure(checks: list[dict], device: str, quick: bool, timeout: float,
            log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> list[list[str]]:
    """Run each check; the table's rows: per (family, op), its stages in page order, then torch's
    and leedl_fast's times for each case (from the first check of the op that timed them)."""
    from leedl_fast.labs import check

    stages, baselines = {}, {}
    for i, c in enumerate(checks, 1):
        lines, record = [], {}
        t0 = time.perf_counter()
        status = check(str(ROOT / c["file"]), c["op"], device=device, backend=c["backend"],
                       func=c["func"], quick=quick, timeout=timeout, out=lines.append,
                       record=record)
        log(f"[{i}/{len(checks)}] {c['family']} {c['stage']} --op {c['op']} --backend "
            f"{c['backend']}: {'PASS' if status == 0 else f'FAIL (exit {status})'} in "
            f"{time.perf_counter() - t0:.0f} s")
        key = (c["family"], c["op"])
        group, base = stages.setdefault(key, []), baselines.setdefault(key, {})
        if status != 0:
            log("\n".join("    " + line for line in "\n".join(lines).splitlines()[-15:]))
            group.append([c["family"], c["stage"], c["op"], c["backend"], "-", "-", "-", "-",
                          f"check failed (exit {status})"])
            continue
        by_case = {}
        for t in record["timings"]:
            by_case.setdefault(t["case"], {})[t["candidate"]] = t
        for case, cands in by_case.items():
            torch_t = cands.get("torch")
            group.append(_row(c["family"], c["stage"], c["op"], c["backend"], case,
                              cands.get("yours"), torch_t))
            for name in ("torch", "leedl_fast"):
                if name in cands and (case, name) not in base:
                    base[(case, name)] = _row(c["family"], f"({name})", c["op"], "", case,
                                              cands[name], torch_t)
    return [row for key in stages for row in stages[key] + list(baselines[key].values())]


def _row(family, stage, op, backend, case, t, torch_t):
    s = t and t["seconds"]
    ts = torch_t and torch_t["seconds"]
    return [family, stage, op, backend, case, format_time(s),
            f"{ts / s:.2f}x" if s and ts else "-",
            f"{100 * t['bound'] / s:.1f}%" if s else "-", t["note"] if t else ""]


HEADERS = ["family", "stage", "op", "backend", "case", "time", "vs torch", "% roofline", "note"]


def markdown(rows, device: str, quick: bool, argv: list[str]) -> str:
    from bench import report

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    rule = ["---"] * len(HEADERS)
    table = "\n".join("| " + " | ".join(r) + " |" for r in [HEADERS, rule, *rows])
    backend_note = ("Triton stages under the Triton interpreter (slow; not meaningful for GPU "
                    "speed)" if not device.startswith("cuda") else "Triton compiled for the GPU")
    command = " ".join(["python -m bench.labs", *argv])
    what = "quick: small shapes" if quick else "full check, at the specs' bench shapes"
    return (f"# Lab stages on {report.device_name(device)}\n\n"
            f"`{command}` ({what}), {datetime.date.today()}, commit {commit or '?'}; "
            f"{backend_note}. time: median (\"one call\": a slow candidate timed by one call); "
            "vs torch: torch's time / the stage's; % roofline: the device's time bound "
            "(`leedl-fast roofline`) / the time.\n\n"
            f"{table}\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m bench.labs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: cuda if available, else cpu")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    p.add_argument("--family", nargs="+", help="only these families (pages)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds per correctness case (default 600: the interpreter is slow)")
    p.add_argument("--out", type=Path, help="write the markdown table here (default: "
                                            "bench/results/labs-<device>.md for a full run)")
    p.add_argument("--list", action="store_true", help="list the stages and their checks")
    a = p.parse_args(argv)
    checks = stage_checks(families=a.family)
    if a.list:
        for c in checks:
            print(f"{c['where']:28} {c['file']} --op {c['op']} --backend {c['backend']}"
                  + (f" --func {c['func']}" if c["func"] else ""))
        return 0
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("bench.labs: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if not checks:
        print("bench.labs: no `leedl-fast check docs/labs/...` commands found", file=sys.stderr)
        return 2
    rows = measure(checks, device, a.quick, a.timeout)
    text = markdown(rows, device, a.quick, argv)
    print(text)
    out = a.out
    if out is None and not a.quick and not a.family:
        from bench import report

        out = report.RESULTS_DIR / f"labs-{report.device_slug(device)}.md"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0 if all("check failed" not in r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
