"""Reporting for the benchmark harness: tables, acceptance summary, JSON history, markdown, plots.

Records are plain dicts (see `harness.run_case`), so everything here also works on runs loaded
back from `bench/results/<device>.json`. The JSON file is the history (one entry per run, never
rewritten); the markdown file is regenerated from it: for each family, its latest run.
"""
from __future__ import annotations

import datetime
import json
import platform
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import torch

from bench.harness import BENCH_DIR, EAGER

RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
HEADERS = ["op", "mode", "shape", "dtype", "backend", "time", "vs eager", "GB/s", "% ceil",
           "TFLOP/s", "note"]
NUMERIC = {"time", "vs eager", "GB/s", "% ceil", "TFLOP/s", "others CPU"}
SPEEDUP_TICKS = [0.01, 0.03, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 100]


# ----------------------------------------------------------------------------------------------
# Run metadata
# ----------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_model()


def device_slug(device: str) -> str:
    """File name for a device's results: `cuda-nvidia-h100-80gb-hbm3`, `cpu-amd-epyc-7b13`.

    CPU names lose marketing words ("64-Core Processor", "(R)") and keep four words at most."""
    if device.startswith("cuda"):
        return "cuda-" + _slug(device_name(device))
    words = [w for w in re.sub(r"\(.*?\)|@.*", " ", cpu_model()).split()
             if not re.fullmatch(r"(?i)processor|cpu|\d+-core", w)]
    return "cpu-" + (_slug(" ".join(words[:4])) or "unknown")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device: str, ceiling: float, families: list[str], argv: list[str], quick: bool,
                 load: float) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "torch": torch.__version__, "triton": triton_version,
        "device": device_name(device), "device_slug": device_slug(device),
        "threads": torch.get_num_threads(), "ceiling_gbps": ceiling, "families": families,
        "quick": quick, "argv": argv,
        "load_average_before": load,
    }


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def shape_str(r: dict) -> str:
    return "x".join(map(str, r["shape"]))


def row(r: dict) -> list[str]:
    return [r["op"], r["mode"], shape_str(r), r["dtype"], r["backend"], _time(r["time_s"]),
            _num(r["speedup"], ".2f") + ("x" if r["speedup"] is not None else ""),
            _num(r["gbps"], ".1f"), _num(r["pct_ceiling"], ".0f"), _num(r.get("tflops"), ".3g"),
            r.get("note", "")]


def group_by_op(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for r in records:
        groups[(r["family"], r["op"])].append(r)
    return groups


def format_text(headers: list[str], rows: list[list[str]]) -> str:
    """Aligned plain-text table: numbers right-aligned, text left-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if h in NUMERIC else c.ljust(w)
                         for c, w, h in zip(cells, widths, headers)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def format_markdown(headers: list[str], rows: list[list[str]]) -> str:
    align = ["---:" if h in NUMERIC else "---" for h in headers]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "/") for c in cells) + " |"
                     for cells in lines)


def acceptance_rows(records: list[dict]) -> list[list[str]]:
    """One row per record that carries a target: its ratio vs eager against the threshold."""
    rows = []
    for r in records:
        if "target" not in r:
            continue
        broken = r.get("note", "").startswith(("MISMATCH", "failed", "compile failed"))
        ok = r["speedup"] is not None and r["speedup"] >= r["target"] and not broken
        others = r.get("others_cpu_pct")
        rows.append([r["op"], r["mode"], shape_str(r), r["dtype"], r["backend"],
                     _time(r["time_s"]), _num(r["speedup"], ".2f") + "x", f">= {r['target']:.2f}x",
                     "PASS" if ok else "FAIL", "-" if others is None else f"{others:.0f}%"])
    return rows


# "others CPU": CPU share other processes took while the case ran (a FAIL next to a large share
# is a reason to re-run on a quiet machine, not a verdict on the kernel).
ACCEPTANCE_HEADERS = ["op", "mode", "shape", "dtype", "backend", "time", "vs eager", "target",
                      "result", "others CPU"]


def print_report(records: list[dict], ceiling: float, device: str) -> None:
    print(f"\ndevice: {device_name(device)}   copy ceiling: {ceiling:.1f} GB/s (read + write)   "
          f"threads: {torch.get_num_threads()}")
    for (family, op), group in group_by_op(records).items():
        print(f"\n== {family} / {op} ==")
        print(format_text(HEADERS, [row(r) for r in group]))
    acc = acceptance_rows(records)
    if acc:
        passed = sum(r[ACCEPTANCE_HEADERS.index("result")] == "PASS" for r in acc)
        print(f"\n== acceptance ({passed}/{len(acc)} PASS) ==")
        print(format_text(ACCEPTANCE_HEADERS, acc))


def print_tables(tables: list[dict]) -> None:
    for t in tables:
        print(f"\n== {t['title']} ==")
        print(format_text(t["headers"], t["rows"]))


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def save(run: dict) -> tuple[Path, Path]:
    """Append `run` to bench/results/<slug>.json and regenerate bench/results/<slug>.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{run['device_slug']}.json"
    runs = json.loads(json_path.read_text()) if json_path.exists() else []
    runs.append(run)
    json_path.write_text(json.dumps(runs, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(runs))
    return json_path, md_path


def markdown(runs: list[dict]) -> str:
    """Tables of the latest run of each family (so benching one family keeps the others' tables)."""
    latest: dict[str, dict] = {}
    for run in runs:
        for family in run["families"]:
            latest[family] = run
    out = [f"# Benchmarks on {runs[-1]['device']}\n",
           "Generated by `python -m bench` from the JSON history next to this file; "
           "GB/s counts the minimum bytes each op must move (formulas in `bench/<family>.py`); "
           "% ceil is relative to a large `copy_` measured in the same run.\n"]
    for family, run in sorted(latest.items()):
        records = [r for r in run["records"] if r["family"] == family]
        out.append(f"## {family}\n\n{run['timestamp']}, commit `{run['git_commit']}`, "
                   f"torch {run['torch']}, triton {run['triton']}, {run['threads']} threads, "
                   f"copy ceiling {run['ceiling_gbps']:.1f} GB/s"
                   f"{' (quick run)' if run['quick'] else ''}.\n")
        for (_, op), group in group_by_op(records).items():
            out.append(f"### {op}\n\n{format_markdown(HEADERS, [row(r) for r in group])}\n")
        acc = acceptance_rows(records)
        if acc:
            out.append(f"### acceptance\n\n{format_markdown(ACCEPTANCE_HEADERS, acc)}\n")
        for t in run.get("tables", {}).get(family, []):
            out.append(f"### {t['title']}\n\n{format_markdown(t['headers'], t['rows'])}\n")
    return "\n".join(out)


def plot(records: list[dict], slug: str) -> list[Path]:
    """Per family: speedup vs eager (log scale) and achieved bandwidth as % of the copy ceiling.

    One subplot per (op, mode); x = shape/dtype, one bar per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    families = sorted({r["family"] for r in records})
    for family in families:
        recs = [r for r in records if r["family"] == family]
        ops = list(dict.fromkeys(r["op"] for r in recs))
        modes = list(dict.fromkeys(r["mode"] for r in recs))
        for kind, key, ylabel in [("speedup", "speedup", "speedup vs torch eager"),
                                  ("roofline", "pct_ceiling", "% of copy ceiling")]:
            fig, axes = plt.subplots(len(ops), len(modes), squeeze=False,
                                     figsize=(7 * len(modes), 3.2 * len(ops)))
            for (i, op), (j, mode) in ((a, b) for a in enumerate(ops) for b in enumerate(modes)):
                ax = axes[i][j]
                sub = [r for r in recs
                       if r["op"] == op and r["mode"] == mode and r[key] is not None]
                backends = [b for b in dict.fromkeys(r["backend"] for r in sub)
                            if not (kind == "speedup" and b == EAGER)]
                labels = list(dict.fromkeys(f"{shape_str(r)}\n{r['dtype']}" for r in sub))
                width = 0.8 / max(len(backends), 1)
                for k, backend in enumerate(backends):
                    vals = {f"{shape_str(r)}\n{r['dtype']}": r[key]
                            for r in sub if r["backend"] == backend}
                    xs = [x + k * width for x, lab in enumerate(labels) if lab in vals]
                    heights = [vals[lab] for lab in labels if lab in vals]
                    if kind == "speedup":  # bars grow up (faster) or down (slower) from 1x
                        ax.bar(xs, [h - 1 for h in heights], width, bottom=1, label=backend)
                    else:
                        ax.bar(xs, heights, width, label=backend)
                ax.axhline(1.0 if kind == "speedup" else 100.0, color="black", lw=0.8, ls="--")
                if kind == "speedup":  # log scale: 2x faster and 2x slower look alike
                    ax.set_yscale("log")
                    values = [r[key] for r in sub if r["backend"] in backends] or [1.0]
                    ax.set_ylim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.3))
                    ax.yaxis.set_major_locator(ticker.FixedLocator(SPEEDUP_TICKS))
                    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
                    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                centre = (len(backends) - 1) * width / 2
                ax.set_xticks([x + centre for x in range(len(labels))], labels, fontsize=7)
                ax.set_title(f"{op} {mode}", fontsize=9)
                ax.set_ylabel(ylabel, fontsize=8)
                if backends:
                    ax.legend(fontsize=7)
            fig.tight_layout()
            path = RESULTS_DIR / f"{slug}-{family}-{kind}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths
