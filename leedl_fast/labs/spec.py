"""What `leedl-fast check` knows about an op: its documented signature, its test cases, its
float64 oracle, its baselines, its tolerance and its roofline formulas.

One `OpSpec` per op a student can write, registered by name in `leedl_fast/labs/specs/<family>.py`.
A student's file defines a function named like the op (`layer_norm`) that takes the arguments of
`OpSpec.args`, in that order, as torch tensors and Python numbers, and returns the outputs of
`OpSpec.outputs` (one tensor, or a tuple in that order). An op in `OpSpec.inplace` instead updates
the named input tensors in place (the optimizer steps) and its return value is ignored.

Correctness ("the same tolerance rules as our tests"):
    fp32 and fp64 inputs   every element within atol + rtol * |oracle| of the float64 oracle
    fp16 / bf16 inputs     or, if larger: the largest error at most 3 x torch's own largest
                           error in that dtype + one ulp at the output's scale (as our tests)
    every element          written: outputs the student allocates with torch.empty* come back
                           filled with NaN (poisoned), so an element the kernel never writes
                           shows up as NaN where the oracle is finite
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

FP32_TOL = (1e-5, 1e-5)


@dataclasses.dataclass
class Case:
    """One set of inputs. `make(device, dtype, generator)` builds the argument dict fresh (the
    checker builds it in the worker process, so nothing crosses the process boundary but the
    label); `shape` is what the report and the roofline formulas see."""
    label: str
    make: Callable[[str, torch.dtype, torch.Generator], dict[str, Any]]
    dtype: torch.dtype = torch.float32
    shape: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OpSpec:
    name: str
    family: str
    args: tuple[str, ...]          # the student's positional arguments, in order
    outputs: tuple[str, ...]       # names of the returned tensors (or of the in-place ones)
    doc: str                       # one paragraph: what it computes, the book's section
    cases: Callable[[bool], list[Case]]        # correctness cases (quick: a few small ones)
    bench_cases: Callable[[bool], list[Case]]  # timing cases (quick: one small one)
    oracle: Callable[..., Any]     # float64 reference: takes the float64 copies of the inputs
    torch_fn: Callable[..., Any]   # torch's own op (the baseline)
    ours: Callable[..., Any]       # leedl_fast's op
    nbytes: Callable[[dict[str, Any]], int]   # minimum bytes moved, given the inputs
    flops: Callable[[dict[str, Any]], int]    # FLOPs, given the inputs
    tol: dict[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: {"out": FP32_TOL})
    inplace: tuple[str, ...] = ()  # inputs the op updates in place (then outputs == these)
    reference: Callable[..., Any] | None = None  # the readable PyTorch reference (leedl_fast.reference)
    # `leedl-fast roofline OP --shape k=v ...`: the shape's keys and defaults, and the case of a
    # given shape (dict of ints) -- its inputs feed nbytes and flops
    default_shape: dict[str, int] = dataclasses.field(default_factory=dict)
    shape_case: Callable[[dict[str, int]], Case] | None = None

    @property
    def signature(self) -> str:
        ret = "None (updates " + ", ".join(self.inplace) + " in place)" if self.inplace else \
            (self.outputs[0] if len(self.outputs) == 1 else "(" + ", ".join(self.outputs) + ")")
        return f"{self.name}({', '.join(self.args)}) -> {ret}"

    def tolerance(self, output: str) -> tuple[float, float]:
        return self.tol.get(output, self.tol["out"])


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"leedl_fast.labs: op {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


FAMILIES = ("norm", "attention", "rnn", "conv", "quant", "optim")


def _load_all():
    import importlib

    for family in FAMILIES:
        try:
            importlib.import_module(f"leedl_fast.labs.specs.{family}")
        except ModuleNotFoundError as e:  # a family without lab specs yet
            if e.name != f"leedl_fast.labs.specs.{family}":
                raise


def get(name: str) -> OpSpec:
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def all_specs() -> dict[str, OpSpec]:
    _load_all()
    return dict(REGISTRY)


# --- helpers for spec writers ----------------------------------------------------------------

def randn(shape, device, dtype, generator, scale=1.0, shift=0.0):
    """Random normal tensor drawn on the CPU generator (reproducible on any device)."""
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + shift) \
        .to(device=device, dtype=dtype)


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (every other column of a wider buffer): a
    kernel that assumes contiguous rows reads the wrong elements."""
    wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype,
                      device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def to_double(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in inputs.items()}


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
