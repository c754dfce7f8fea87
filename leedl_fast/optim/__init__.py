"""Drop-in fused optimizers: `leedl_fast.optim.Adam` instead of `torch.optim.Adam`.

Each class subclasses its torch.optim counterpart, so the constructor signature, param groups,
`zero_grad`, hooks, `state_dict`/`load_state_dict` (a checkpoint of torch.optim.Adam loads here
and the other way round) and `torch.optim.lr_scheduler` are torch's own. Only `step()` differs:
each param group's tensors go to one multi-tensor op per device (leedl_fast::fused_adam etc.,
docs/optim.md), which reads p, g and the state once and writes p and the state once.

`foreach` and `fused` are accepted and stored (they are part of the state_dict) but do not
change what runs: the step is always the fused multi-tensor kernel. Extras, keyword-only:

    master_weights=False   with float16/bfloat16 params, keep an fp32 master copy of each param
                           and fp32 state (state key "master_param"); the param receives the
                           master rounded to its dtype after every step. Without it, the state
                           has the param's dtype, as in torch, and the math runs in fp32.

AMP: `torch.amp.GradScaler.step(opt)` hands the scale and the inf flag to the kernel
(`_step_supports_amp_scaling`), which unscales the grads in place and skips the step on inf, as
torch's fused optimizers do. `differentiable=True` is refused (the kernels are not differentiable).
A tensor `lr` is read as a float each step.
"""
import inspect
import sys

import torch

from .._ops import optim as _ops
from .._ops.optim import fused_adagrad, fused_adam, fused_rmsprop, fused_sgd
from .lr_scheduler import warmup_cosine, warmup_linear

__all__ = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "fused_adam", "fused_sgd",
           "fused_adagrad", "fused_rmsprop", "warmup_cosine", "warmup_linear"]

_LOW = (torch.float16, torch.bfloat16)


def _float(x):
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _dtensor_type():
    """torch.distributed.tensor.DTensor if that module is loaded, else None. Looked up in
    sys.modules, not imported: its import costs ~0.7 s, and no param can be a DTensor before
    something (FSDP2, DTensor code) has imported it."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def _local(t):
    """A DTensor's local shard (FSDP2 parameters, their grads and their state); others as they
    are. The update is elementwise, so each rank updating its own shard is the whole step."""
    dtensor = _dtensor_type()
    return t._local_tensor if dtensor is not None and isinstance(t, dtensor) else t


class _Fused:
    """The shared step of leedl_fast's optimizers. A subclass names its op and state, and says
    how one device's lists become the op's arguments (`_launch`)."""

    _op = ""
    _keys = ()  # state tensors of a param, in the op's order (given the group)

    def _fused_init(self, name, differentiable, master_weights):
        if differentiable:
            raise ValueError(f"leedl_fast.optim.{name}: differentiable=True is not supported "
                             f"(the fused kernels are not differentiable); use torch.optim.{name}")
        self.defaults["master_weights"] = bool(master_weights)
        for group in self.param_groups:
            group.setdefault("master_weights", bool(master_weights))
        self._step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("master_weights", self.defaults.get("master_weights", False))
            group.setdefault("differentiable", False)

    def load_state_dict(self, state_dict):
        """torch's load, then the fp32 master copies and state restored at full precision
        (torch casts a param's floating state to the param's dtype on load)."""
        super().load_state_dict(state_dict)
        self.__dict__.pop("_checked", None)  # it holds the replaced state tensors
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            saved = state_dict["state"].get(pid, {})
            if "master_param" not in saved:
                continue
            for key, value in saved.items():
                if isinstance(value, torch.Tensor) and value.dtype == torch.float32 \
                        and key != "step":
                    self.state[p][key] = value.to(p.device, copy=True)

    # ------------------------------------------------------------------------- the step

    def _state_keys(self, group):
        return self._keys

    def _new_state(self, p, group):
        """torch's lazy initialization of a param's state (the step count and zeros)."""
        raise NotImplementedError

    def _prepare(self, p, group, keys):
        """The param's state, created or repaired so the kernel can take it: state tensors
        contiguous, on the param's device, of its numel, in its dtype (fp32 with master
        weights), steps float32."""
        state = self.state[p]
        if len(state) == 0:
            state.update(self._new_state(p, group))
        master = group.get("master_weights", False) and p.dtype in _LOW
        want = torch.float32 if master else p.dtype
        if master and (state.get("master_param") is None
                       or state["master_param"].numel() != p.numel()):
            state["master_param"] = p.detach().float().contiguous()  # never zeros
        for key in keys + (("master_param",) if master else ()):
            t = state.get(key)
            if t is None or t.numel() != p.numel():
                t = state[key] = torch.zeros_like(p, dtype=want,
                                                  memory_format=torch.contiguous_format)
            if t.dtype != want or t.device != p.device or not t.is_contiguous():
                state[key] = t.to(device=p.device, dtype=want).contiguous()
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            # torch's placement: on the param's device when capturable or fused, else the host.
            # A checkpoint from the other kind of optimizer is moved, so every count of a
            # list lives on one device (increment_steps and the kernels need that).
            on_device = group.get("capturable", False) or group.get("fused", False)
            where = p.device if on_device else torch.device("cpu")
            if step.dtype != torch.float32 or step.device != where:
                state["step"] = step.to(device=where, dtype=torch.float32)
        return state, master

    _capture_needs_capturable = False  # Adam/AdamW/RMSprop: as torch's, capture needs it

    def _check_capture(self):
        """torch's graph-capture health check: capturing a step with capturable=False bakes
        the host step counts (bias corrections) and runs their increment once, at capture."""
        if torch.compiler.is_compiling() or not torch.cuda.is_available():
            return
        if torch.cuda.is_current_stream_capturing() and \
                not all(g.get("capturable", False) for g in self.param_groups):
            raise RuntimeError(f"Attempting CUDA graph capture of step() for an instance of "
                               f"{type(self).__name__} but param_groups' capturable is False.")

    @torch.no_grad()
    def step(self, closure=None):
        if self._capture_needs_capturable:
            self._check_capture()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._group_step(group, grad_scale, found_inf)
        return loss

    def _group_step(self, group, grad_scale, found_inf):
        """Sort the group's params with a grad into one list per (device, contiguous, master)
        and run each list's op. The per-param work is kept to dictionary lookups: a param's
        state is checked and repaired (`_prepare`) only when it is new or has been replaced
        (load_state_dict, a changed option, a state tensor swapped by the user); the record of
        what was checked lives in `self._checked`, keyed by id(param)."""
        keys = self._state_keys(group)
        checked = self.__dict__.setdefault("_checked", {})
        dtensor = _dtensor_type()
        lists = {}
        strided = torch.strided
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.layout != strided:  # torch's grad assignment already ties dtype/shape/device
                _ops.check_param(f"optim.{type(self).__name__}", 0, p, g)
            state = self.state.get(p)  # .get: plain SGD keeps no state, as torch's
            rec = checked.get(id(p))
            # p itself is re-checked too: `p.data = ...` (module.to/.half(), a resize) keeps the
            # Parameter and its state objects but not its dtype, numel or device
            if rec is None or rec[0] is not state or rec[1] is not p or rec[2] != keys or \
                    any(state.get(k) is not t for k, t in zip(keys, rec[3])) or \
                    (rec[4] and state.get("master_param") is not rec[5]) or \
                    p.dtype is not rec[6] or p.numel() != rec[7] or p.device != rec[8]:
                _ops.check_param(f"optim.{type(self).__name__}", 0, p, g)
                state, master = self._prepare(p, group, keys)
                checked[id(p)] = rec = (self.state.get(p), p, keys, [state[k] for k in keys],
                                        master, state.get("master_param"), p.dtype, p.numel(),
                                        p.device)
            tensors = rec[3]
            master = rec[4]
            owner = p  # the key of self.state (the launch of SGD's first step uses it)
            if dtensor is not None and isinstance(p, dtensor):
                # FSDP2 / DTensor params: the kernel sees the local shards (state created by
                # zeros_like(p) is a DTensor of the same placement, so DCP saves it sharded)
                p, g, tensors = _local(p), _local(g), [_local(t) for t in tensors]
            fast = g.is_contiguous() and p.is_contiguous()
            where = (p.device, fast, master)
            entry = lists.get(where)
            if entry is None:
                entry = lists[where] = {"params": [], "grads": [], "steps": [], "owners": [],
                                        "master_params": [], **{k: [] for k in keys}}
            entry["owners"].append(owner)
            entry["params"].append(p)
            entry["grads"].append(g)
            for k, t in zip(keys, tensors):
                entry[k].append(t)
            if master:
                entry["master_params"].append(_local(rec[5]))
            step = state.get("step") if state else None
            if step is not None:
                entry["steps"].append(step)
        for (device, fast, _), entry in lists.items():
            gs, fi = grad_scale, found_inf
            if gs is not None:
                gs = gs.to(device=device, dtype=torch.float32).reshape(1)
            if fi is not None:
                fi = fi.to(device=device, dtype=torch.float32).reshape(1)
            steps = entry["steps"]
            steps_here = bool(steps) and steps[0].device == device
            if fi is not None and not steps_here and float(fi.item()) != 0.0:
                continue  # steps on the host: read the flag once and skip the whole step
            if steps:  # one call: a dispatch per step tensor would cost ~1.5 us each on CPU
                _increment_steps(steps, fi if steps_here else None)
            if fast:
                self._launch(group, entry, gs, fi, _ops.run)
            else:  # a non-contiguous param or grad: the same math, one tensor at a time
                self._launch(group, entry, gs, fi, _run_reference)


_increment_steps = torch.ops.leedl_fast.increment_steps.default


def _run_reference(op, *args):
    from ..reference import optim as reference

    getattr(reference, op)(*args)


def _super_kwargs(cls, **kwargs):
    """Drop keyword arguments the installed torch's constructor does not take (torch >= 2.11)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def _adam_state(p, group):
    on_device = group["capturable"] or group["fused"]
    return {"step": torch.zeros((), dtype=torch.float32, device=p.device) if on_device
            else torch.tensor(0.0, dtype=torch.float32)}


def _adam_launch(self, group, e, gs, fi, run):
    beta1, beta2 = group["betas"]
    run("fused_adam", e["params"], e["grads"], e["exp_avg"], e["exp_avg_sq"],
        e.get("max_exp_avg_sq", []), e["master_params"], e["steps"], _float(group["lr"]),
        _float(beta1), _float(beta2), float(group["eps"]), _float(group["weight_decay"]),
        bool(group.get("decoupled_weight_decay", False) or isinstance(self, torch.optim.AdamW)),
        bool(group["amsgrad"]), bool(group["maximize"]), gs, fi)


def _adam_keys(self, group):
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())


class Adam(_Fused, torch.optim.Adam):
    """torch.optim.Adam with a fused multi-tensor step (BOOK.md §3.3.3: RMSProp + momentum)."""

    _capture_needs_capturable = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 master_weights=False):
        if differentiable:
            self._fused_init("Adam", True, False)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **_super_kwargs(
            torch.optim.Adam, foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay))
        self._fused_init("Adam", differentiable, master_weights)

    _state_keys = _adam_keys
    _new_state = staticmethod(_adam_state)
    _launch = _adam_launch


class AdamW(_Fused, torch.optim.AdamW):
    """torch.optim.AdamW (decoupled weight decay) with a fused multi-tensor step."""

    _capture_needs_capturable = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, master_weights=False):
        if differentiable:
            self._fused_init("AdamW", True, False)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable, differentiable=differentiable,
                         fused=fused)
        self._fused_init("AdamW", differentiable, master_weights)

    _state_keys = _adam_keys
    _new_state = staticmethod(_adam_state)
    _launch = _adam_launch


class SGD(_Fused, torch.optim.SGD):
    """torch.optim.SGD (momentum, dampening, nesterov) with a fused multi-tensor step
    (BOOK.md §3.2.2: the momentum buffer b = μ b + g, the step −η b)."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, master_weights=False):
        if differentiable:
            self._fused_init("SGD", True, False)
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov,
                         maximize=maximize, foreach=foreach, differentiable=differentiable,
                         fused=fused)
        self._fused_init("SGD", differentiable, master_weights)

    def _state_keys(self, group):
        return ()  # the momentum buffer is created by the first step (below)

    def _new_state(self, p, group):
        return {}

    def _launch(self, group, e, gs, fi, run):
        momentum = _float(group["momentum"])
        args = (_float(group["lr"]), _float(group["weight_decay"]), momentum,
                _float(group["dampening"]), bool(group["nesterov"]), bool(group["maximize"]))
        if momentum == 0:
            run("fused_sgd", e["params"], e["grads"], [], e["master_params"], *args, False,
                gs, fi)
            return
        # torch starts a buffer as the (decayed) gradient: params with and without a buffer
        # go in two calls
        master = bool(e["master_params"])
        owners = e["owners"]  # the params as self.state knows them (DTensors under FSDP2)
        for first in (False, True):
            idx = [i for i, p in enumerate(owners)
                   if ("momentum_buffer" not in self.state[p]) == first]
            if not idx:
                continue
            if first:
                for i in idx:
                    p = owners[i]
                    self.state[p]["momentum_buffer"] = torch.empty_like(
                        p, dtype=torch.float32 if master else p.dtype,
                        memory_format=torch.contiguous_format)

            def pick(key, idx=idx):
                return [e[key][i] for i in idx] if e[key] else []
            bufs = [_local(self.state[owners[i]]["momentum_buffer"]) for i in idx]
            run("fused_sgd", pick("params"), pick("grads"), bufs, pick("master_params"), *args,
                first, gs, fi)

    def _prepare(self, p, group, keys):
        master = group.get("master_weights", False) and p.dtype in _LOW
        if _float(group["momentum"]) == 0 and not master and p not in self.state:
            return {}, False  # plain SGD keeps no state, as torch's
        state, master = super()._prepare(p, group, keys)
        buf = state.get("momentum_buffer")
        if "momentum_buffer" in state and (buf is None or buf.numel() != p.numel()):
            del state["momentum_buffer"]  # None (torch < 2 saved it so) or p resized: start anew
        elif buf is not None:
            want = torch.float32 if master else p.dtype
            if buf.dtype != want or buf.device != p.device or not buf.is_contiguous():
                state["momentum_buffer"] = buf.to(device=p.device, dtype=want).contiguous()
        return state, master


class Adagrad(_Fused, torch.optim.Adagrad):
    """torch.optim.Adagrad with a fused multi-tensor step (BOOK.md §3.3.1; torch keeps the sum
    of squared gradients, not their mean)."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 master_weights=False):
        if differentiable:
            self._fused_init("Adagrad", True, False)
        super().__init__(params, lr, lr_decay, weight_decay, initial_accumulator_value, eps,
                         foreach, maximize=maximize, differentiable=differentiable, fused=fused)
        self._fused_init("Adagrad", differentiable, master_weights)
        for group in self.param_groups:  # torch's sums are in the param dtype: with master
            for p in group["params"]:    # weights, start the fp32 sum at the exact value
                if group["master_weights"] and p.dtype in _LOW:
                    self.state[p]["sum"] = self._new_state(p, group)["sum"]

    _keys = ("sum",)

    def _new_state(self, p, group):  # torch fills the state in __init__; this is a fallback
        master = group.get("master_weights", False) and p.dtype in _LOW
        return {"step": torch.tensor(0.0, dtype=torch.float32),
                "sum": torch.full_like(p, group["initial_accumulator_value"],
                                       dtype=torch.float32 if master else p.dtype,
                                       memory_format=torch.contiguous_format)}

    def _launch(self, group, e, gs, fi, run):
        run("fused_adagrad", e["params"], e["grads"], e["sum"], e["master_params"], e["steps"],
            _float(group["lr"]), float(group["lr_decay"]), float(group["weight_decay"]),
            float(group["eps"]), bool(group["maximize"]), gs, fi)


class RMSprop(_Fused, torch.optim.RMSprop):
    """torch.optim.RMSprop (centered, momentum) with a fused multi-tensor step (BOOK.md §3.3.2)."""

    _capture_needs_capturable = True

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, master_weights=False):
        if differentiable:
            self._fused_init("RMSprop", True, False)
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered,
                         capturable=capturable, foreach=foreach, maximize=maximize,
                         differentiable=differentiable)
        self._fused_init("RMSprop", differentiable, master_weights)

    def _state_keys(self, group):
        return (("square_avg",) + (("grad_avg",) if group["centered"] else ())
                + (("momentum_buffer",) if group["momentum"] > 0 else ()))

    def _new_state(self, p, group):
        return {"step": torch.zeros((), dtype=torch.float32, device=p.device)
                if group["capturable"] else torch.zeros((), dtype=torch.float32)}

    def _launch(self, group, e, gs, fi, run):
        run("fused_rmsprop", e["params"], e["grads"], e["square_avg"], e.get("grad_avg", []),
            e.get("momentum_buffer", []), e["master_params"], _float(group["lr"]),
            float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]),
            float(group["momentum"]), bool(group["centered"]), bool(group["maximize"]), gs, fi)
