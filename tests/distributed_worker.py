"""Multi-process scenarios for tests/test_distributed.py (not a test module): a tiny GPT built
from leedl_fast modules, trained with leedl_fast.optim.AdamW under torch.distributed on CPU
(gloo, loopback only), its results written for the test to compare.

    python -m tests.distributed_worker SCENARIO WORLD OUT [PORT]

SCENARIO: ddp | fsdp | ddp_compile | ddp_sgd | fsdp_sgd | dcp | modules_ddp | modules_fsdp | bad_input |
bad_input_alive. WORLD processes are
spawned with torch.multiprocessing; every collective has a timeout (TIMEOUT_S; BAD_TIMEOUT_S in
the bad-input scenarios), so a rank that fails cannot leave the others waiting forever. Rank 0 writes OUT (torch.save of a dict); every rank writes
OUT.rank<r>.err with its exception, if any.
"""
import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 120     # generous: the compiled scenario's first step compiles on each rank
BAD_TIMEOUT_S = 8
LR = 1e-3
GLOBAL_BATCH, LENGTH, VOCAB, STEPS = 4, 16, 50, 4


def _model():
    import leedl_fast  # noqa: F401 -- registers the ops
    from leedl_fast.models import GPT, GPTConfig

    torch.manual_seed(0)  # the same full model on every rank (FSDP2 shards it; DDP checks it)
    return GPT(GPTConfig.tiny(vocab_size=VOCAB, dropout=0.0))


class EveryModule(torch.nn.Module):
    """One of each leedl_fast.nn module in a small image -> sequence -> logits pipeline."""

    def __init__(self):
        super().__init__()
        from leedl_fast import nn

        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.sep = nn.DepthwiseSeparableConv2d(8, 8, 3, padding=1, activation="relu")
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.rms = nn.RMSNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm_cell = nn.LSTMCell(8, 8)
        self.gru_cell = nn.GRUCell(8, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, images, targets):
        z = self.sep(self.conv(images))                   # (B, 8, 4, 4)
        seq = self.norm(z.flatten(2).transpose(1, 2))     # (B, 16, 8)
        seq, _ = self.lstm(seq)
        seq, _ = self.gru(seq)
        seq = self.rms(seq)
        seq, _ = self.attn(seq, seq, seq, need_weights=False)
        h, c = self.lstm_cell(seq[:, -1])
        h = self.gru_cell(h, c)
        loss = torch.nn.functional.cross_entropy(self.head(h), targets)
        return None, loss


def _every_module(kind, rank, world):
    """Each leedl_fast module under DDP (kind "modules_ddp") or FSDP2 ("modules_fsdp")."""
    import leedl_fast.optim as LO

    torch.manual_seed(0)
    model = EveryModule()
    if kind == "modules_ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for child in ("lstm", "gru", "attn"):
            fully_shard(getattr(model, child))
        fully_shard(model)
    opt = LO.AdamW(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(2)
    per = GLOBAL_BATCH // world
    losses = []
    for _ in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=g)[rank * per:(rank + 1) * per]
        targets = torch.randint(0, VOCAB, (GLOBAL_BATCH,), generator=g)[rank * per:(rank + 1) * per]
        losses.append(_step(model, opt, images, targets))
    return {"losses": losses, "params": _full_params(model)}


def _batches(rank, world):
    """The global batch of every step, and this rank's rows of it."""
    g = torch.Generator().manual_seed(1)
    out = []
    per = GLOBAL_BATCH // world
    for _ in range(STEPS):
        x = torch.randint(0, VOCAB, (GLOBAL_BATCH, LENGTH + 1), generator=g)
        out.append((x[rank * per:(rank + 1) * per, :-1], x[rank * per:(rank + 1) * per, 1:]))
    return out


def _wrap(kind, model):
    if kind.startswith("ddp"):
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
        return torch.compile(model, fullgraph=False) if kind == "ddp_compile" else model
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def _step(model, opt, x, y):
    _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss, op=dist.ReduceOp.AVG)
    return global_loss.item()


def _full_params(model):
    """name -> the full parameter (FSDP2's DTensor shards gathered)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "").replace("_orig_mod.", "")] = t.detach().clone()
    return out


def _train(kind, rank, world):
    import leedl_fast.optim as LO

    if kind.endswith("_sgd"):  # SGD with momentum: its buffer is created by the first step
        model = _wrap(kind[:-4], _model())
        opt = LO.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    else:
        model = _wrap(kind, _model())
        opt = LO.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses = [_step(model, opt, x, y) for x, y in _batches(rank, world)]
    return {"losses": losses, "params": _full_params(model)}


def _dcp(rank, world, out):
    """Train 2 steps, save model + optimizer with torch.distributed.checkpoint, train 2 more;
    then a fresh model and optimizer load the checkpoint and train the same 2 steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    import leedl_fast.optim as LO

    batches = _batches(rank, world)
    path = out + ".ckpt"
    model = _wrap("fsdp", _model())
    opt = LO.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    for x, y in batches[:2]:
        _step(model, opt, x, y)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    straight = [_step(model, opt, x, y) for x, y in batches[2:]]

    torch.manual_seed(123)  # a different initialization: everything must come from the file
    from leedl_fast.models import GPT, GPTConfig

    fresh = _wrap("fsdp", GPT(GPTConfig.tiny(vocab_size=VOCAB, dropout=0.0)))
    fresh_opt = LO.AdamW(fresh.parameters(), lr=LR, weight_decay=0.01)
    msd, osd = get_state_dict(fresh, fresh_opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    resumed = [_step(fresh, fresh_opt, x, y) for x, y in batches[2:]]
    sharded_state = [type(t).__name__ for s in fresh_opt.state.values() for k, t in s.items()
                     if k in ("exp_avg", "exp_avg_sq")]
    return {"straight": straight, "resumed": resumed, "state_types": sorted(set(sharded_state)),
            "params": _full_params(model), "params_resumed": _full_params(fresh)}


def _bad_input(rank, world, stay_alive, out):
    """Rank 1 feeds a sequence longer than the model's context: it must raise its clear error.
    Rank 0, left in the gradient all-reduce, must not hang: when rank 1's process exits it sees
    the connection close; when rank 1 stays alive (stay_alive: it caught its error), the
    collective's timeout ends the wait."""
    import time

    import leedl_fast.optim as LO

    model = _wrap("ddp", _model())
    opt = LO.AdamW(model.parameters(), lr=LR)
    x, y = _batches(rank, world)[0]
    if rank == 1:
        x = torch.randint(0, VOCAB, (x.shape[0], 1000))
        y = x
        if stay_alive:
            try:
                _step(model, opt, x, y)
            except ValueError as e:
                with open(f"{out}.rank{rank}.err", "w") as f:
                    f.write(f"{type(e).__name__}: {e}\n")
                time.sleep(3 * BAD_TIMEOUT_S)  # alive, but never joins the all-reduce
                return {}
    return {"losses": [_step(model, opt, x, y)]}


def _run(rank, world, scenario, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    timeout = BAD_TIMEOUT_S if scenario.startswith("bad_input") else TIMEOUT_S
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        if scenario == "dcp":
            result = _dcp(rank, world, out)
        elif scenario.startswith("modules"):
            result = _every_module(scenario, rank, world)
        elif scenario.startswith("bad_input"):
            result = _bad_input(rank, world, scenario == "bad_input_alive", out)
        else:
            result = _train(scenario, rank, world)
        if rank == 0:
            torch.save(result, out)
        dist.barrier()  # both ranks done before either tears the group down
    except BaseException as e:  # written for the test, then re-raised
        with open(f"{out}.rank{rank}.err", "w") as f:
            f.write(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        # (no barrier after a failure: the other rank may be gone)
        dist.destroy_process_group()


if __name__ == "__main__":
    scenario, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 29500
    mp.spawn(_run, args=(world, scenario, out, port), nprocs=world, join=True)
