"""Train the book's GPT (§10.3) data-parallel under PyTorch's own distributed engine: DDP or FSDP2
(`fully_shard`), leedl_fast modules inside, leedl_fast.optim.AdamW (the fused multi-tensor step)
outside. docs/distributed.md explains what works, the measured scaling and the estimate for
many GPUs.

    python examples/train_gpt_distributed.py                          # 1 process (no torchrun)
    torchrun --nproc-per-node 2 examples/train_gpt_distributed.py --strategy fsdp --threads 1
    torchrun --nproc-per-node 8 examples/train_gpt_distributed.py --size base --length 1024
    ... --checkpoint ckpt --steps 10, then --checkpoint ckpt --resume --steps 20

The global batch is the same whatever the number of processes: every rank draws the whole batch
of step t from a generator seeded with (seed, t) and keeps its own rows, so N processes see
exactly the tokens 1 process sees and their loss curves agree to rounding (the gradient
reduction order is the only difference; tests/test_distributed_example.py checks 1e-5). Seeding
per step also makes a resumed run draw the batches the uninterrupted run would have drawn.

Per step, rank 0 logs the loss averaged over ranks and the throughput (tokens/s of the whole
group); at the end it prints one line `RESULT {json}` (losses, tokens_per_s, world_size,
strategy, ...) for bench/distributed.py and the tests to parse.

On GPUs: nccl, one device per LOCAL_RANK, bf16 autocast (untested here: the build machine has no
GPU). On CPU: gloo, float32. Every collective has a timeout (--timeout), so a rank that dies or
hangs ends the others with an error instead of a silent wait.
"""
import argparse
import datetime
import json
import os
import time
import warnings

import torch
import torch.distributed as dist

import leedl_fast
from leedl_fast.data.corpus import char_corpus, encode, lm_batches
from leedl_fast.models import GPT, GPTConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "base"], default="tiny",
                   help="tiny: 2 layers x 64 (~0.1 M params); base: GPT-2 small's shape (85 M "
                        "params without the 50k-token embedding: the vocabulary is characters)")
    p.add_argument("--d-model", type=int, help="override the preset's width")
    p.add_argument("--layers", type=int, help="override the preset's depth")
    p.add_argument("--heads", type=int, help="override the preset's attention heads")
    p.add_argument("--steps", type=int, default=50, help="steps of the whole run (the lr schedule)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="end this invocation after STEP steps (then --resume); default --steps")
    p.add_argument("--global-batch", type=int, default=16, help="sequences per step, all ranks")
    p.add_argument("--length", type=int, default=64, help="tokens per sequence (the context)")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--compile", action="store_true", help="torch.compile the wrapped model")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--chars", type=int, default=200_000, help="corpus size in characters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: default)")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl if CUDA is available, else gloo")
    p.add_argument("--timeout", type=float, default=300, help="collective timeout, seconds")
    p.add_argument("--warmup", type=int, default=2,
                   help="first steps left out of tokens_per_s (allocator, compile)")
    p.add_argument("--checkpoint", metavar="DIR", help="save model + optimizer here (DCP) at "
                                                       "the end and every --save-every steps")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint DIR")
    p.add_argument("--quiet", action="store_true", help="only the RESULT line")
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint DIR")
    return args


# ------------------------------------------------------------------------------ process group

def init_distributed(args):
    """(rank, world, device). Under torchrun the environment names the group; a plain `python`
    run makes a 1-process group on an in-memory store, so the DDP/FSDP code path is the same."""
    cuda = torch.cuda.is_available()
    backend = args.backend or ("nccl" if cuda else "gloo")
    timeout = datetime.timedelta(seconds=args.timeout)
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if "RANK" in os.environ:  # torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_*)
        dist.init_process_group(backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model, strategy, device):
    """DDP: a full replica per rank, gradients all-reduced in buckets during backward.
    FSDP2: each GPT block and then the root become one all-gather / reduce-scatter unit; every
    parameter is a DTensor holding 1/world of the tensor, gathered just in time for compute."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the embeddings (tied to the LM head) and the final LayerNorm
    return model


# ------------------------------------------------------------------------------ checkpoints

def save_checkpoint(path, model, opt, step):
    """torch.distributed.checkpoint: every rank writes its own shards (FSDP2's DTensors stay
    sharded, the Adam moments too); the files can be loaded by a different world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    with warnings.catch_warnings():  # the latest checkpoint replaces the last one, silently
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        dcp.save({"model": msd, "optim": osd, "step": torch.tensor(step)},
                 storage_writer=dcp.FileSystemWriter(path, overwrite=True))


def load_checkpoint(path, model, opt):
    """Load into the live (wrapped) model and optimizer; the next step to run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "step": torch.tensor(0)}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])


# ------------------------------------------------------------------------------ training

def batch_of_step(ids, args, step, rank, world):
    """This rank's rows of the global batch of `step` (the same draw on every rank)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    x, y = lm_batches(ids, args.global_batch, args.length, g)
    per = args.global_batch // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = init_distributed(args)
    try:
        result = train(args, rank, world, device)
        # Every rank done with its collectives before any tears its connections down (gloo
        # aborted a rank at exit, now and then, without this). Not after a failure: the
        # other ranks may be gone.
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def train(args, rank, world, device):
    if args.global_batch % world:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by the "
                         f"{world} processes")
    say = print if rank == 0 and not args.quiet else (lambda *a, **k: None)
    text, vocab = char_corpus(args.chars)
    ids = encode(text, vocab)

    preset = GPTConfig.tiny if args.size == "tiny" else GPTConfig.base
    overrides = {k: v for k, v in (("d_model", args.d_model), ("layers", args.layers),
                                   ("heads", args.heads)) if v is not None}
    config = preset(vocab_size=len(vocab), context=args.length, dropout=0.0, **overrides)
    torch.manual_seed(args.seed)  # the same initial model on every rank (FSDP2 shards it as is)
    model = GPT(config).to(device)  # leedl_fast.nn modules: the default build
    n_params = sum(p.numel() for p in model.parameters())
    model = wrap(model, args.strategy, device)
    opt = leedl_fast.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    sched = leedl_fast.optim.warmup_cosine(opt, max(1, args.steps // 20), args.steps,
                                           min_factor=0.1)
    start = 0
    if args.resume:  # the optimizer's param groups bring back the lr of step `start`
        start = load_checkpoint(args.checkpoint, model, opt)
        sched.last_epoch, sched._last_lr = start, [g["lr"] for g in opt.param_groups]
    step_fn = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    tokens_per_step = args.global_batch * args.length
    stop = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    say(f"GPT {args.size} ({config.layers} layers x {config.d_model}): {n_params / 1e6:.2f} M "
        f"params, vocab {len(vocab)}, context {args.length}; {args.strategy} on {world} x {device.type} ({dist.get_backend()}), "
        f"global batch {args.global_batch} x {args.length} = {tokens_per_step} tokens/step, "
        f"{torch.get_num_threads()} threads/process; steps {start}..{stop - 1} of {args.steps}")

    losses, times = [], []
    last = time.perf_counter()
    for step in range(start, stop):
        x, y = (t.to(device, non_blocking=True)
                for t in batch_of_step(ids, args, step, rank, world))
        with autocast:
            _, loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        if args.checkpoint and args.save_every and (step + 1) % args.save_every == 0:
            save_checkpoint(args.checkpoint, model, opt, step + 1)
        global_loss = loss.detach().float()
        dist.all_reduce(global_loss, op=dist.ReduceOp.AVG)  # equal shards: the global mean
        losses.append(global_loss.item())  # .item() waits for the step: the clock is honest
        now = time.perf_counter()
        times.append(now - last)
        last = now
        say(f"step {step:4d}  loss {losses[-1]:.4f}  {1e3 * times[-1]:7.1f} ms  "
            f"{tokens_per_step / times[-1]:9.0f} tokens/s")

    if args.checkpoint:
        done = max(start, stop)  # a resumed run past --stop-at trains nothing
        save_checkpoint(args.checkpoint, model, opt, done)
        say(f"checkpoint (next step {done}) saved to {args.checkpoint}")
    timed = times[args.warmup:] if len(times) > args.warmup else times[-1:]
    result = {
        "world_size": world, "strategy": args.strategy, "backend": dist.get_backend(),
        "device": device.type, "size": args.size, "layers": config.layers,
        "d_model": config.d_model, "heads": config.heads, "params": n_params,
        "global_batch": args.global_batch, "length": args.length, "compile": args.compile,
        "threads": torch.get_num_threads(), "start_step": start, "losses": losses,
        "tokens_per_s": tokens_per_step * len(timed) / max(sum(timed), 1e-9) if timed else 0.0,
        "step_ms": [round(1e3 * t, 3) for t in times],
    }
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
