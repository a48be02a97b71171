"""ONNX back end: IR + weights -> ONNX (built with the onnx package), validity checks."""
from __future__ import annotations

from .check import inferred_shapes, validate
from .lower import DEFAULT_OPSET, LOWER, OPSETS, to_onnx

__all__ = ["DEFAULT_OPSET", "LOWER", "OPSETS", "to_onnx", "validate", "inferred_shapes"]
