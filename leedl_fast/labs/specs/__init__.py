"""One module per family, each registering its lab ops (leedl_fast.labs.spec.register)."""
