"""The lab pages' commands run as written, and the pages have the parts the labs promise.

1. Every line in a ```bash fenced block of docs/labs/*.md that starts with `leedl-fast ` is run
   from the repository root through `leedl_fast.cli.main` (shlex-split, `#` comments dropped,
   a trailing backslash joins the next line) with LEEDL_FAST_LAB_QUICK=1 (tiny sizes) and must
   exit 0. One test per (page, line): a failure names both. Commands that need a GPU
   (`--device cuda`) are skipped where torch sees none. Show failing or illustrative commands
   in ```text blocks instead; those are not run.
2. Every docs/labs/<family>/stage*.py is mentioned by a command of docs/labs/<family>.md (so
   each stage is checked by the page and, through 1, by this test).
3. Each family page has a roofline section and a table of the stages (loose: heading keywords
   and a table whose header names the stage).
"""
import os
import re
import shlex
from pathlib import Path

import pytest
import torch

from bench.labs import bash_commands  # the same lines `python -m bench.labs` measures

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "docs" / "labs"
NOT_FAMILY_PAGES = {"README.md", "index.md"}


def lab_pages() -> list[Path]:
    return sorted(LABS.glob("*.md"))


def family_pages() -> list[Path]:
    return [p for p in lab_pages() if p.name not in NOT_FAMILY_PAGES]


def _command_params():
    params = [pytest.param(page, number, command, id=f"{page.name}:{number}")
              for page in lab_pages() for number, command in bash_commands(page)]
    return params or [pytest.param(None, 0, "", id="no-lab-commands",
                                   marks=pytest.mark.skip(reason="no docs/labs/*.md commands"))]


@pytest.mark.parametrize("page, number, command", _command_params())
def test_page_command_runs(page, number, command, monkeypatch, capsys):
    """In this process, through the CLI's own main (the argv a shell would give it): the check
    still runs the student's code in its own worker process, with its own timeouts, and the
    cost per command is a fork, not a new interpreter (tests/test_labs_check.py runs the real
    `python -m leedl_fast.cli` entry point once)."""
    args = shlex.split(command, comments=True)
    assert args[0] == "leedl-fast"
    if "cuda" in args and not torch.cuda.is_available():
        pytest.skip("the command runs on a CUDA device; torch sees none")
    if "triton" in args and "cuda" not in args and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a Triton command on the CPU: the page exports TRITON_INTERPRET=1 first")
    from leedl_fast import cli

    monkeypatch.setenv("LEEDL_FAST_LAB_QUICK", "1")
    monkeypatch.chdir(ROOT)
    try:
        status = cli.main(args[1:])
    except SystemExit as e:  # argparse: a usage error in the page's command
        status = e.code
    output = capsys.readouterr()
    if status not in (0, None):
        pytest.fail(f"{page.relative_to(ROOT)}:{number}: `{command}` exited with "
                    f"{status}:\n{(output.out + output.err)[-6000:]}", pytrace=False)


# ---------------------------------------------------------------------------------- structure

def _stage_dirs():
    dirs = sorted(d for d in LABS.iterdir() if d.is_dir() and list(d.glob("stage*.py"))) \
        if LABS.is_dir() else []
    return dirs or [pytest.param(None, id="no-stage-dirs",
                                 marks=pytest.mark.skip(reason="no docs/labs/<family>/ yet"))]


@pytest.mark.parametrize("family_dir", _stage_dirs(),
                         ids=lambda d: d.name if isinstance(d, Path) else str(d))
def test_every_stage_is_checked_by_its_page(family_dir):
    page = LABS / f"{family_dir.name}.md"
    assert page.is_file(), f"docs/labs/{family_dir.name}/ has stages but no {page.name}"
    mentioned = {Path(arg).as_posix() for _, command in bash_commands(page)
                 for arg in shlex.split(command, comments=True)}
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(family_dir.glob("stage*.py"))
               if p.relative_to(ROOT).as_posix() not in mentioned]
    assert not missing, (f"{page.relative_to(ROOT)}: no ```bash command runs {missing} "
                         "(e.g. `leedl-fast check <file> --op <op>`)")


def _headings(text):
    return [line.lstrip("#").strip().lower() for line in text.splitlines()
            if re.match(r"#{1,6}\s", line)]


def _table_headers(text):
    """The header rows of the page's markdown tables (the line above a | --- | rule)."""
    lines = text.splitlines()
    return [lines[i - 1].lower() for i in range(1, len(lines))
            if re.match(r"^\s*\|?\s*:?-{3,}", lines[i]) and "|" in lines[i]
            and "|" in lines[i - 1]]


@pytest.mark.parametrize("page", family_pages() or [pytest.param(
    None, marks=pytest.mark.skip(reason="no lab pages yet"))],
    ids=lambda p: p.name if isinstance(p, Path) else str(p))
def test_page_has_the_sections(page):
    text = page.read_text()
    headings = _headings(text)
    problems = []
    if not any("roofline" in h for h in headings):
        problems.append("no roofline section (a heading with 'roofline')")
    if not any("stage" in h for h in headings):
        problems.append("no section on the stages (a heading with 'stage')")
    if not any("stage" in h for h in _table_headers(text)):
        problems.append("no table of the stages (a markdown table whose header has 'stage')")
    if not bash_commands(page):
        problems.append("no `leedl-fast` command in a ```bash block")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_extraction():
    """The extraction itself, on a made-up page."""
    import tempfile

    text = ("intro\n```bash\nleedl-fast check a.py --op x  # comment\necho no\n"
            "leedl-fast roofline x \\\n   --shape n=4\n```\n```text\nleedl-fast check bad.py\n```\n"
            "```bash\nleedl-fast info\n```\n")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "x.md"
        page.write_text(text)
        assert bash_commands(page) == [(3, "leedl-fast check a.py --op x  # comment"),
                                       (5, "leedl-fast roofline x --shape n=4"),
                                       (12, "leedl-fast info")]
        assert _table_headers("| stage | time |\n| --- | --- |\n| 0 | 1 |") == \
            ["| stage | time |"]


# ---------------------------------------------------------------------------------- bench.labs

def test_bench_labs_finds_every_checked_stage():
    """`python -m bench.labs` measures what the pages check: each stage with a registered op."""
    from bench.labs import stage_checks
    from leedl_fast.labs.spec import all_specs

    warnings = []
    checks = stage_checks(warn=warnings.append)
    assert not warnings, warnings
    specs = all_specs()
    found = {c["file"] for c in checks}
    for stage in sorted(LABS.glob("*/stage*.py")):
        assert stage.relative_to(ROOT).as_posix() in found
    for c in checks:
        assert c["op"] in specs, f"{c['where']}: unknown op {c['op']}"
        assert c["backend"] in ("python", "triton"), c


def test_bench_labs_table(tmp_path):
    """One stage through bench.labs: a row for the stage, then torch's and leedl_fast's."""
    from bench import labs

    checks = [c for c in labs.stage_checks(warn=lambda _: None)
              if c["file"] == "docs/labs/norm/stage0_naive.py"]
    if not checks:
        pytest.skip("the norm lab's stage 0 is not on its page")
    rows = labs.measure(checks[:1], "cpu", quick=True, timeout=120, log=lambda _: None)
    assert [r[1] for r in rows] == ["stage0_naive", "(torch)", "(leedl_fast)"]
    assert rows[0][:3] == ["norm", "stage0_naive", "layer_norm"]
    assert rows[0][5] != "-" and rows[0][7].endswith("%")
    text = labs.markdown(rows, "cpu", True, ["--quick"])
    assert "| family | stage | op |" in text and "| norm | stage0_naive |" in text
