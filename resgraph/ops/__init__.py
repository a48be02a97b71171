"""The op table (one place to add an op) and its argument kinds: what an op plugin builds its
OpDef from (ops/plugins.py)."""
from .args import REQUIRED, Arg, ArgError, Bool, Choice, Float, Ids, Int
from .table import OPS, USER_OPS, OpDef, Shape, ShapeError, fmt, pads, spatial, transpose_pads

__all__ = ["OPS", "USER_OPS", "OpDef", "Shape", "ShapeError", "fmt", "pads", "spatial", "transpose_pads", "Arg", "ArgError",
           "REQUIRED", "Bool", "Choice", "Float", "Ids", "Int"]
