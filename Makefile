# `make bench` and `make test` do all set-up themselves on a fresh CPU machine: a .venv with the
# pinned toolchain, an editable build of leedl_fast, then the run. On the GPU machine (torch
# preinstalled, no internet) `make bench-gpu` / `make test-gpu` use its own python instead.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
DEPS    := torch==2.13.0 triton==3.6.0 "numpy<2.4" pybind11 ninja pytest pytest-benchmark \
           expecttest setuptools wheel matplotlib tqdm
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test bench test-gpu bench-gpu labs-gpu clean

$(VENV)/.deps:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(DEPS)
	touch $@

# Rebuild the C++ extension when a source changes (--no-build-isolation: build against the
# torch in the venv; a pyproject.toml is present so pip does not fall back to setup.py develop).
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.built

test: install
	TRITON_INTERPRET=1 $(VPY) -m pytest -q tests

bench: install
	$(VPY) -m bench $(BENCH_ARGS)

# GPU machine: torch 2.11 + triton 3.6 already installed, no internet -> no deps, no venv.
# Triton compiles for the real GPU (interpreter off); the whole suite runs, GPU tests included.
test-gpu:
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	TRITON_INTERPRET=0 $(PY) -m pytest -q $(PYTEST_ARGS) tests

bench-gpu:
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	TRITON_INTERPRET=0 $(PY) -m bench $(BENCH_ARGS)

# Every lab stage's full check on the GPU, timed: the pages' GPU column
# (bench/results/labs-<device>.md; the stages and their ops come from docs/labs/<family>.md).
labs-gpu:
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	TRITON_INTERPRET=0 $(PY) -m bench.labs --device cuda

clean:
	rm -rf build *.egg-info leedl_fast/*.so
