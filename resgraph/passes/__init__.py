"""Pure functions Graph -> Graph (and the verifier, which only checks)."""
from .shapes import infer_shapes
from .lint import lint
from .resolve import resolve_ops
from .shortcuts import find_stride, insert_shortcuts
from .verify import verify

__all__ = ["infer_shapes", "insert_shortcuts", "find_stride", "lint", "resolve_ops", "verify"]
