"""Compile checks for the labs' Triton stages, without a GPU: every kernel of every
docs/labs/<family>/stage*.py (and solution*.py) builds for sm_90 (H100) and sm_80 (A100).

Each Triton stage file declares, at module level, the configs its launcher really uses:

    COMPILE_CHECKS = [{"kernel": "layer_norm_kernel",
                       "signature": {"X": "*fp32", "Y": "*fp32", "N": "i32", "eps": "fp32"},
                       "constexprs": {"BLOCK_N": 1024}, "num_warps": 4}, ...]

signature: every non-constexpr parameter -> its Triton type; constexprs: every tl.constexpr
parameter -> its value (one with a default may be left out); num_warps (default 4) and, optionally,
num_stages; "allow_spills": "why" accepts register spills for that entry. Each entry is compiled
with `triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))`
for both archs; a file fails on a lowering error, shared memory over the device's limit, register
spills (`ptxas -v`) not allowed by the entry, or a kernel without an entry: every @triton.jit
function that the file launches (`kernel[grid](...)`), or that no other @triton.jit function
calls, needs at least one -- a helper called only from kernels is compiled with them.

The compiling runs in child processes without TRITON_INTERPRET, for the reasons and with the
machinery of tests/test_compile_checks.py (the interpreter's patched triton.language can't
generate code; a crash in LLVM or ptxas stays in the child). LEEDL_FAST_LABS_DIR points the
test at another labs directory (used to try it on a scratch file). Run this file directly
(`python tests/test_labs_compile.py`) for a registers/spills/shared table.
"""
import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (the worker): make `tests` importable
    sys.path.insert(0, str(ROOT))

from tests.test_compile_checks import SHARED_LIMIT, _jit_functions, _probe, _ptxas_stats

LABS_DIR = Path(os.environ.get("LEEDL_FAST_LABS_DIR", ROOT / "docs" / "labs"))
ARCHS = (90, 80)
PATTERNS = ("stage*.py", "solution*.py")


def stage_files():
    files = {p for pattern in PATTERNS for p in LABS_DIR.glob(f"**/{pattern}")}
    return sorted(files)


def _rel(path):
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def kernels_needing_checks(path: Path) -> tuple[list[str], bool]:
    """(@triton.jit functions of the file that need a COMPILE_CHECKS entry, whether the file
    assigns COMPILE_CHECKS at module level). A jit function needs one when the file launches it
    (`name[grid](...)`) or no other jit function calls it; pure helpers are exempt."""
    tree = ast.parse(path.read_text())
    names = set(_jit_functions(path))
    jit = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    called_in_jit = {c.func.id for fn in jit for c in ast.walk(fn)
                     if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                     and c.func.id in names and c.func.id != fn.name}
    launched = {s.value.id for s in ast.walk(tree)
                if isinstance(s, ast.Subscript) and isinstance(s.value, ast.Name)
                and s.value.id in names}
    needed = [n.name for n in jit if n.name in launched or n.name not in called_in_jit]
    declares = any(isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
        isinstance(t, ast.Name) and t.id == "COMPILE_CHECKS"
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
        for node in tree.body)
    return needed, declares


# ---------------------------------------------------------------------------------- the worker

def _load(path: Path):
    import importlib.util

    name = "labs_compile_" + "_".join(path.relative_to(path.parents[1]).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # a stage may import a helper next to it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


class EntryError(ValueError):
    """A COMPILE_CHECKS entry that does not fit its kernel (reported without a traceback)."""


def _compile_entry(fn, entry, arch, seen_ptx):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    sig = dict(entry.get("signature", {}))
    consts = dict(entry.get("constexprs", {}))
    for p in fn.params:  # constexprs with a default may be left out
        if p.is_constexpr and p.name not in consts and p.has_default:
            consts[p.name] = p.default
    missing = [a for a in fn.arg_names if a not in sig and a not in consts]
    extra = [a for a in list(sig) + list(consts) if a not in fn.arg_names]
    if missing or extra:
        raise EntryError(f"signature + constexprs must name the kernel's parameters "
                         f"{fn.arg_names}: missing {missing}, unknown {extra}")
    signature = {a: "constexpr" if a in consts else sig[a] for a in fn.arg_names}
    options = {"num_warps": entry.get("num_warps", 4)}
    options.update({k: entry[k] for k in ("num_stages", "num_ctas") if k in entry})
    compiled = triton.compile(ASTSource(fn, signature, consts),
                              target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    if (ptx, arch) not in seen_ptx:
        seen_ptx[(ptx, arch)] = _ptxas_stats(get_ptxas(arch).path, ptx,
                                             sm_arch_from_capability(arch))
    return {"ok": True, "shared": compiled.metadata.shared, "num_warps": options["num_warps"],
            **seen_ptx[(ptx, arch)]}


def worker(jobs_path, out_path):
    """Import each file of jobs_path and compile its COMPILE_CHECKS; write the results."""
    import traceback

    from triton.runtime.jit import JITFunction

    skip = _probe()
    if skip:
        Path(out_path).write_text(json.dumps({"__skip__": skip}))
        return
    results, seen_ptx = {}, {}
    for job in json.loads(Path(jobs_path).read_text()):
        res = {"error": None, "entries": [], "compiled": []}
        results[job["id"]] = res
        try:
            module = _load(Path(job["path"]))
            checks = getattr(module, "COMPILE_CHECKS", None)
            if checks is None:
                checks = []
            if not isinstance(checks, (list, tuple)) or \
                    not all(isinstance(e, dict) and "kernel" in e for e in checks):
                raise TypeError("COMPILE_CHECKS must be a list of dicts with a 'kernel' key")
        except BaseException as e:  # noqa: BLE001 -- the file failed to import
            res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            continue
        res["entries"] = [e["kernel"] for e in checks]
        for i, entry in enumerate(checks):
            for arch in ARCHS:
                label = f"COMPILE_CHECKS[{i}] {entry['kernel']} sm_{arch}"
                try:
                    fn = getattr(module, entry["kernel"], None)
                    if not isinstance(fn, JITFunction):
                        raise EntryError(f"{entry['kernel']} is "
                                        f"{'missing' if fn is None else type(fn).__name__}, "
                                        "not a @triton.jit function of the file")
                    r = _compile_entry(fn, entry, arch, seen_ptx)
                except Exception as e:  # noqa: BLE001 -- reported per entry by the parent
                    tb = "" if isinstance(e, EntryError) else traceback.format_exc()[-3000:]
                    r = {"ok": False, "error": f"{type(e).__name__}: {e}\n{tb}"}
                r.update(label=label, arch=arch, allow_spills=entry.get("allow_spills"),
                         constexprs={k: v for k, v in entry.get("constexprs", {}).items()
                                     if isinstance(v, (int, float, bool, str))})
                res["compiled"].append(r)
    Path(out_path).write_text(json.dumps(results))


def run_workers(files, cache_dir, n_workers=None, timeout=900):
    """Compile the files' checks in a few children (files split round-robin). A child's output
    goes to a file (a pipe read after the fact could fill and block it); a child still running
    after `timeout` seconds (ptxas on an absurd config) is killed and its files fail."""
    jobs = [{"id": _rel(p), "path": str(p)} for p in files]
    n_workers = n_workers or max(1, min(4, os.cpu_count() or 1, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)  # fresh cache: every run really compiles
    results, logs = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(n_workers):
            jobs_path, out_path = Path(tmp) / f"jobs{i}.json", Path(tmp) / f"out{i}.json"
            log_path = Path(tmp) / f"log{i}.txt"
            jobs_path.write_text(json.dumps(jobs[i::n_workers]))
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(jobs_path),
                     str(out_path)], env=env, cwd=str(ROOT), stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((proc, out_path, log_path))
        deadline = time.monotonic() + timeout
        for proc, out_path, log_path in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # kill it and its ptxas (its own session)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if out_path.exists():
                results.update(json.loads(out_path.read_text()))
            else:  # the worker died (an LLVM abort) or timed out: its files fail with this log
                logs.append(f"worker exited with {proc.returncode}:\n"
                            f"{log_path.read_text()[-6000:]}")
    return results, logs


# ---------------------------------------------------------------------------------- the tests

def _triton_files():
    """The stage files with Triton kernels or a COMPILE_CHECKS (pure PyTorch stages have none)."""
    out = []
    for path in stage_files():
        needed, declares = kernels_needing_checks(path)
        if needed or declares:
            out.append(path)
    return out


def _params():
    files = _triton_files()
    if not files:
        return [pytest.param(None, id="no-triton-stage-files",
                             marks=pytest.mark.skip(reason=f"no Triton stage files under "
                                                           f"{_rel(LABS_DIR)} yet"))]
    return [pytest.param(p, id=_rel(p)) for p in files]


@pytest.fixture(scope="session")
def lab_compile_results(request, tmp_path_factory):
    pytest.importorskip("triton", reason="triton is not installed")
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_lab_stage_compiles"
                and item.callspec.params.get("path") is not None]
    results, logs = run_workers(selected, tmp_path_factory.mktemp("labs_triton_cache"))
    if "__skip__" in results:
        pytest.skip(results["__skip__"])
    return results, logs


@pytest.mark.parametrize("path", _params())
def test_lab_stage_compiles(path, lab_compile_results):
    name = _rel(path)
    needed, declares = kernels_needing_checks(path)
    if needed and not declares:
        pytest.fail(f"{name}: @triton.jit kernels {needed} but no module-level COMPILE_CHECKS "
                    "(see tests/test_labs_compile.py's docstring)", pytrace=False)
    results, logs = lab_compile_results
    res = results.get(name)
    if res is None:
        pytest.fail(f"{name}: no result from the compile worker\n" + "\n".join(logs),
                    pytrace=False)
    if res["error"]:
        pytest.fail(f"{name}: could not import it (without TRITON_INTERPRET):\n{res['error']}",
                    pytrace=False)
    problems = []
    uncovered = sorted(set(needed) - set(res["entries"]))
    if uncovered:
        problems.append(f"no COMPILE_CHECKS entry for the kernel(s) {uncovered}")
    for r in res["compiled"]:
        if not r["ok"]:
            problems.append(f"{r['label']} failed to compile:\n{r['error']}")
        elif r["shared"] > SHARED_LIMIT[r["arch"]]:
            problems.append(f"{r['label']}: {r['shared']} bytes of shared memory > the "
                            f"sm_{r['arch']} limit {SHARED_LIMIT[r['arch']]}")
        elif (r["spill_stores"] or r["spill_loads"]) and not r["allow_spills"]:
            problems.append(f"{r['label']}: register spills ({r['spill_stores']} B stored, "
                            f"{r['spill_loads']} B loaded, {r['regs']} registers, num_warps="
                            f"{r['num_warps']}, {r['constexprs']}); change the config or add "
                            "\"allow_spills\": \"<why>\" to the entry")
    if problems:
        pytest.fail(f"{name}:\n" + "\n".join(problems), pytrace=False)


def _print_table():
    """python tests/test_labs_compile.py: one line per entry and arch."""
    with tempfile.TemporaryDirectory() as cache:
        results, logs = run_workers(_triton_files(), cache)
    if "__skip__" in results:
        print("skipped:", results["__skip__"])
        return
    print("\n".join(logs))
    print(f"{'file / entry':72} {'warps':>5} {'regs':>4} {'spill st/ld':>11} {'shared':>6}")
    for name, res in sorted(results.items()):
        print(name + (f"  IMPORT FAILED: {res['error'].splitlines()[0]}" if res["error"] else ""))
        for r in res["compiled"]:
            if not r["ok"]:
                print(f"  {r['label']:70} FAILED: {r['error'].splitlines()[0]}")
                continue
            print(f"  {r['label']:70} {r['num_warps']:>5} {r['regs']:>4} "
                  f"{r['spill_stores']:>5}/{r['spill_loads']:<5} {r['shared']:>6}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        _print_table()
