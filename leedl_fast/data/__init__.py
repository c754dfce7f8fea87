"""Data that ships with the library, no downloads (issue 8): synthetic tasks and text that is on
every machine.

    images.py     generated shape images for the CNNs; Go-like board positions
    text.py       slot-tagging sentences from templates
    corpus.py     a character corpus from the Python standard library's source files, and
                  next-token batches
    sequences.py  copy / reverse / sort tasks for seq2seq
"""
