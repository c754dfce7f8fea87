"""Benchmarks for leedl_fast: `python -m bench [family ...]` (or `leedl-fast bench`).

`harness.py` measures (timing, ceiling, checks), `report.py` writes (tables, JSON, markdown,
plots), and each `<family>.py` lists its cases through `cases(device, quick)`.
"""
