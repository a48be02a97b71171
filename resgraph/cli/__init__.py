"""The command line: one module per command group, each command parsing its options, calling one
library function and rendering the result (common.py: error handling, extras, option types).

Exit codes: 0 ok, 1 the spec has errors (or warnings with --strict) or another user error (a
ResgraphError: weights, data, a path, a compiled folder, a back end, an option), 2 usage, 70 internal
error.
"""
from __future__ import annotations

import click

from ..version import __version__
from . import compile, diff, engine, importer, infer, model, parity, profile, quantize, serve, spec, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resgraph")
def cli():
    """resgraph: compile residual-network specs (YAML) into checked graphs, PyTorch, ONNX and TensorRT."""


for _group in (spec, diff, importer, model, train, compile, quantize, infer, parity, profile, engine, serve):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="resgraph")


if __name__ == "__main__":
    main()
