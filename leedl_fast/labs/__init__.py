"""Performance teaching labs: grade a student's kernel (`leedl-fast check`), predict its speed
(`leedl-fast roofline`). The labs themselves are in docs/labs/.

    from leedl_fast.labs import check
    check("my_layer_norm.py", "layer_norm")          # prints the report, returns the exit status
"""
from .check import check
from .spec import Case, OpSpec, all_specs, get

__all__ = ["Case", "OpSpec", "all_specs", "check", "get"]
