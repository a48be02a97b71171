"""resgraph: a compiler for residual-network specs.

    >>> import resgraph
    >>> checked = resgraph.check("specs/resnet18.yaml")
    >>> checked.params, [p.at for p in checked.graph.projections]

Importing resgraph loads only the front end (PyYAML and the standard library); back ends import
torch, onnx or tensorrt when they are first used.
"""
from .compiler import Checked, check_file, check_spec, check_text
from .errors import Diagnostic, Loc, SpecError
from .spec import load_spec, parse_spec

__version__ = "0.1.0"

check = check_file

__all__ = ["Checked", "Diagnostic", "Loc", "SpecError", "check", "check_file", "check_spec", "check_text",
           "load_spec", "parse_spec", "__version__"]
