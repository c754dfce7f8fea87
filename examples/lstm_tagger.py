"""Slot filling with a bidirectional LSTM tagger (BOOK.md §5): train on generated ticket-booking
sentences, report token accuracy and slot F1, and tag the book's example sentence.

    python examples/lstm_tagger.py                 # tiny model, 150 steps
    python examples/lstm_tagger.py --size base     # the benchmark size (256/512, 2 layers; slow)
    python examples/lstm_tagger.py --nn torch      # the same model from torch.nn (the baseline)

"I would like to arrive Taipei on November 2nd" -> Taipei: dest, November 2nd: arrive_date;
with "leave" instead of "arrive" the same words become from_city and depart_date. The tagger
must read the verb before the city to tell them apart, which a per-word classifier cannot do.

Measured on the 2-core CPU build machine (defaults: tiny, 150 steps, batch 64, seed 0, one
thread; 9-17 s wall clock with imports, the machine shared with other jobs): the loss falls
3.44 -> 0.11 by step 50 and 0.0018 at step 150 (training 3.9-6.6 s); validation token accuracy
100.00%, slot F1 1.000, all 1000 validation sentences exactly right; both example sentences
tagged as the book says (arrive -> dest + arrive_date, leave -> from_city + depart_date).
`--size base --steps 40 --threads 2`: loss 0.0004, the same 100% (135 s of training, busy
machine). The templates are easy on purpose, to keep the run short: the point is the context
dependence, not a hard benchmark.
"""
import argparse
import time

import torch

from leedl_fast.data.text import encode_words, slot_spans, slot_tagging_dataset, tagging_scores
from leedl_fast.models.rnn import LSTMTagger, TaggerConfig
from leedl_fast.optim import AdamW

EXAMPLES = ("i would like to arrive taipei on november 2nd",
            "i would like to leave taipei on november 2nd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--train", type=int, default=4000, help="training sentences")
    p.add_argument("--val", type=int, default=1000, help="validation sentences")
    p.add_argument("--nn", choices=["leedl_fast", "torch"], default="leedl_fast")
    p.add_argument("--seed", type=int, default=0)
    # One thread by default: a tiny LSTM's per-time-step work is too small to split between
    # threads, and on a busy 2-core machine every step's thread barrier waits for a descheduled
    # thread (measured there: 0.6-0.9 s per training step with 2 threads, 0.04 s with one).
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


@torch.no_grad()
def predict(model, tokens, lengths, num_tags, batch=250):
    """Tag ids: the argmax over the dataset's num_tags classes (a config may have more)."""
    model.eval()
    preds = [model(tokens[i:i + batch], lengths[i:i + batch])[..., :num_tags].argmax(-1)
             for i in range(0, len(tokens), batch)]
    model.train()
    return torch.cat(preds)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = slot_tagging_dataset(args.train, torch.Generator().manual_seed(args.seed))
    val = slot_tagging_dataset(args.val, torch.Generator().manual_seed(args.seed + 1))
    vocab, names = train.vocab, train.tag_names
    config = getattr(TaggerConfig, args.size)()
    assert config.vocab_size >= len(vocab) and config.num_tags >= len(names)
    model = LSTMTagger(config, nn=torch.nn if args.nn == "torch" else None)
    opt = AdamW(model.parameters(), lr=args.lr)
    print(f"{args.size} tagger ({args.nn}): {sum(p.numel() for p in model.parameters()):,} "
          f"parameters; {len(vocab)} words, {len(names)} tags; {args.train} training sentences")

    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train.tokens), (args.batch,), generator=g)
        longest = int(train.lengths[idx].max())  # trim the batch's common padding
        logits = model(train.tokens[idx, :longest])
        loss = model.loss(logits, train.tags[idx, :longest])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # §5: RNN loss cliffs
        opt.step()
        if step == 1 or step % 25 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.1f} s")
    seconds = time.perf_counter() - start

    pred = predict(model, val.tokens, val.lengths, len(names))
    scores = tagging_scores(pred, val.tags, val.lengths, names)
    print(f"validation ({args.val} sentences): token accuracy {scores['token_accuracy']:.2%}, "
          f"slot F1 {scores['slot_f1']:.3f}, sentence accuracy {scores['sentence_accuracy']:.2%} "
          f"(training {seconds:.1f} s)")
    for sentence in EXAMPLES:
        words = sentence.split()
        ids = encode_words(words, vocab)[None]
        tags = predict(model, ids, torch.tensor([len(words)]), len(names))[0].tolist()
        slots = sorted(slot_spans(tags, names), key=lambda s: s[1])
        print(f"  {sentence}\n    -> " + ", ".join(
            f"{slot}: {' '.join(words[a:b])}" for slot, a, b in slots))
    return scores


if __name__ == "__main__":
    main()
