"""The op table (one place to add an op) and its argument kinds."""
from .args import REQUIRED, Arg, ArgError
from .table import OPS, USER_OPS, OpDef, Shape, ShapeError, fmt, pads, spatial, transpose_pads

__all__ = ["OPS", "USER_OPS", "OpDef", "Shape", "ShapeError", "fmt", "pads", "spatial", "transpose_pads", "Arg", "ArgError", "REQUIRED"]
