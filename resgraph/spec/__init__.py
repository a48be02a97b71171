"""The front end: YAML with source locations, safe expressions, the typed Spec, its JSON Schema."""
from .layers import Block, Entry, Residual
from .model import Spec, load_spec, parse_spec

__all__ = ["Block", "Entry", "Residual", "Spec", "load_spec", "parse_spec"]
