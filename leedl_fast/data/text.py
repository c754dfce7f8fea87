"""Slot-filling sentences generated from templates (BOOK.md §5, the chapter's running task).

The book's example: in "I would like to arrive Taipei on November 2nd" a ticket-booking system
must fill the slot *destination* with "Taipei" and *time of arrival* with "November 2nd". In
"I would like to leave Taipei on November 2nd" the same words fill *place of departure* and
*time of departure*: the label of a word depends on its context, which is why the book turns to
recurrent networks (and bidirectional ones, which also see the words after it).

The templates below keep that ambiguity on purpose (a city after "arrive"/"to" is a dest, after
"leave"/"from" a from_city; a date or time takes its arrive_/depart_ role from the verb before
it) and multi-word fillers ("new york", "november 2nd", "china airlines") exercise the BIO
scheme: B-<slot> on a slot's first word, I-<slot> on the next ones, O elsewhere.

    data = slot_tagging_dataset(2000, torch.Generator().manual_seed(0))
    tokens, tags, lengths, vocab, tag_names = data      # or data.tokens, data.tags, ...

Words are lower case and split on spaces. The vocabulary is built from the templates and the
filler lists, not from the sampled sentences, so every call (any n, any seed) agrees on it:
id 0 is "<pad>", id 1 "<unk>". Tags are padded with -100, cross_entropy's ignore_index.
"""
import math
from typing import NamedTuple

import torch

PAD, UNK, IGNORE = "<pad>", "<unk>", -100

SLOTS = ("from_city", "dest", "depart_date", "arrive_date", "depart_time", "arrive_time",
         "airline", "class")

# Each template mixes plain words (tag O) and {slot} fields; the filler kind of a slot is the
# part before its role: {dest} and {from_city} take a city, {arrive_date} a date, and so on.
TEMPLATES = (
    "i would like to arrive {dest} on {arrive_date}",
    "i would like to leave {from_city} on {depart_date}",
    "i want to fly from {from_city} to {dest} on {depart_date}",
    "show me flights from {from_city} to {dest}",
    "show me {airline} flights from {from_city} to {dest} leaving at {depart_time}",
    "i need a {class} class ticket to {dest}",
    "book a {class} class seat on {airline} from {from_city} to {dest} on {depart_date}",
    "what flights arrive in {dest} before {arrive_time} on {arrive_date}",
    "what flights leave {from_city} after {depart_time}",
    "list {airline} flights arriving at {dest} at {arrive_time}",
    "i am leaving {from_city} on {depart_date} and arriving in {dest} on {arrive_date}",
    "please find a flight to {dest} that leaves {from_city} at {depart_time}",
    "does {airline} fly from {from_city} to {dest} on {depart_date}",
    "i want to arrive in {dest} by {arrive_time}",
    "leaving {from_city} on {depart_date} arriving {dest} on {arrive_date}",
    "cheapest {class} class fare from {from_city} to {dest}",
    "which airlines fly into {dest} from {from_city}",
    "i would like to depart from {from_city} at {depart_time} and arrive at {dest} at {arrive_time}",
    "my flight to {dest} must land before {arrive_time}",
    "i would like to leave on {depart_date} and arrive {dest} on {arrive_date}",
)

CITIES = ("taipei", "tainan", "kaohsiung", "taichung", "tokyo", "osaka", "seoul", "singapore",
          "bangkok", "manila", "paris", "london", "berlin", "rome", "boston", "chicago", "denver",
          "seattle", "new york", "san francisco", "los angeles", "hong kong", "kuala lumpur",
          "salt lake city", "new delhi", "ho chi minh city")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "10th", "12th", "15th", "21st", "22nd", "28th",
            "30th")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
HOURS = tuple(str(h) for h in range(1, 13))
AIRLINES = ("eva air", "china airlines", "united", "delta", "japan airlines", "korean air",
            "lufthansa", "air france", "british airways", "singapore airlines")
CLASSES = ("economy", "business", "first", "premium economy")


def _dates():
    return ([f"{m} {o}" for m in MONTHS for o in ORDINALS]
            + [f"the {o} of {m}" for m in MONTHS for o in ORDINALS]
            + list(WEEKDAYS) + [f"next {d}" for d in WEEKDAYS] + ["tomorrow", "today"])


def _times():
    return ([f"{h} {ap}" for h in HOURS for ap in ("am", "pm")]
            + [f"{h} 30 {ap}" for h in HOURS for ap in ("am", "pm")] + ["noon", "midnight"])


FILLERS = {"city": CITIES, "date": tuple(_dates()), "time": tuple(_times()),
           "airline": AIRLINES, "class": CLASSES}


def _kind(slot):
    """The filler list of a slot: from_city/dest -> city, arrive_date -> date, ..."""
    if slot in ("from_city", "dest"):
        return "city"
    return slot.split("_")[-1]


def tag_names():
    """["O", "B-from_city", "I-from_city", "B-dest", ...]: index = tag id."""
    return ["O"] + [f"{p}-{s}" for s in SLOTS for p in ("B", "I")]


def build_vocab():
    """Every word of the templates and fillers, sorted, after "<pad>" (0) and "<unk>" (1)."""
    words = set()
    for t in TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for fill in FILLERS.values():
        for phrase in fill:
            words.update(phrase.split())
    return [PAD, UNK] + sorted(words)


class SlotData(NamedTuple):
    tokens: torch.Tensor    # (n, T) int64 word ids, padded with 0 ("<pad>")
    tags: torch.Tensor      # (n, T) int64 tag ids, padded with -100
    lengths: torch.Tensor   # (n,) int64 sentence lengths
    vocab: list             # id -> word
    tag_names: list         # id -> "O" | "B-slot" | "I-slot"


def fill_template(template, choices):
    """(words, tags) of one template with its {slot} fields replaced by choices[slot]."""
    words, tags = [], []
    for piece in template.split():
        if piece.startswith("{"):
            slot = piece[1:-1]
            phrase = choices[slot].split()
            words += phrase
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(phrase) - 1)
        else:
            words.append(piece)
            tags.append("O")
    return words, tags


def encode_words(words, vocab):
    """Word ids (int64 tensor); unknown words map to "<unk>"."""
    index = {w: i for i, w in enumerate(vocab)}
    return torch.tensor([index.get(w, 1) for w in words], dtype=torch.int64)


def slot_tagging_dataset(n, generator=None):
    """n sentences sampled from TEMPLATES with random fillers: a SlotData (tokens, tags, lengths,
    vocab, tag_names), sequences padded to the longest one."""
    vocab, names = build_vocab(), tag_names()
    word_id = {w: i for i, w in enumerate(vocab)}
    tag_id = {t: i for i, t in enumerate(names)}

    def pick(k):
        return int(torch.randint(0, k, (1,), generator=generator))

    sentences = []
    for _ in range(n):
        template = TEMPLATES[pick(len(TEMPLATES))]
        slots = [p[1:-1] for p in template.split() if p.startswith("{")]
        choices = {}
        for slot in slots:
            fill = FILLERS[_kind(slot)]
            choices[slot] = fill[pick(len(fill))]
        if "from_city" in choices and "dest" in choices:
            while choices["dest"] == choices["from_city"]:
                choices["dest"] = CITIES[pick(len(CITIES))]
        sentences.append(fill_template(template, choices))
    longest = max(len(w) for w, _ in sentences)
    tokens = torch.zeros(n, longest, dtype=torch.int64)
    tags = torch.full((n, longest), IGNORE, dtype=torch.int64)
    lengths = torch.tensor([len(w) for w, _ in sentences], dtype=torch.int64)
    for i, (words, word_tags) in enumerate(sentences):
        tokens[i, :len(words)] = torch.tensor([word_id[w] for w in words])
        tags[i, :len(words)] = torch.tensor([tag_id[t] for t in word_tags])
    return SlotData(tokens, tags, lengths, vocab, names)


def slot_spans(tag_ids, names):
    """The slots of one tagged sentence as a set of (slot, start, end) spans (end exclusive):
    a B- tag opens a span, following I- tags of the same slot extend it; a stray I- opens one."""
    spans, current = set(), None
    for i, t in enumerate(list(tag_ids) + [0]):
        tag = names[t]
        if current is not None and tag != f"I-{current[0]}":
            spans.add((current[0], current[1], i))
            current = None
        if tag != "O" and current is None:
            current = (tag[2:], i)
    return spans


def tagging_scores(pred, gold, lengths, names):
    """{"token_accuracy", "slot_f1", "sentence_accuracy"} of predicted tag ids against gold ones
    ((n, T) each) over the first lengths[i] tokens of every row. slot_f1 counts a slot as right
    only when its label and both ends match (the CoNLL span F1)."""
    correct = total = tp = n_pred = n_gold = exact = 0
    for p, g, n in zip(pred.tolist(), gold.tolist(), lengths.tolist()):
        p, g = p[:n], g[:n]
        correct += sum(a == b for a, b in zip(p, g))
        total += n
        ps, gs = slot_spans(p, names), slot_spans(g, names)
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
        exact += p == g
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 1.0
    return {"token_accuracy": correct / max(total, 1), "slot_f1": f1,
            "sentence_accuracy": exact / max(len(lengths), 1)}


def sentence_count():
    """How many distinct sentences the templates can make (for the curious: far more than any
    training set, so a tagger has to generalize over fillers)."""
    return sum(math.prod(len(FILLERS[_kind(p[1:-1])]) for p in t.split() if p.startswith("{"))
               for t in TEMPLATES)
