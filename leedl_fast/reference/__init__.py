"""Readable pure-PyTorch versions of every op, written as the textbook writes the math.
They are the tests' oracle (run in float64) and the `reference` backend."""
