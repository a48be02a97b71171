"""What every command shares: running a command body (user errors print like a compiler's and exit
1, bugs exit 70), the extras a missing package comes from, option types, and stderr messages.

Exit codes: 0 ok, 1 the spec has errors (or warnings with --strict) or another user error (a
ResgraphError: weights, data, a path, a compiled folder, a back end, an option), 2 usage, 70 internal
error.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import click

from ..errors import ResgraphError

EXTRAS = {"torch": "torch", "safetensors": "onnx", "onnx": "onnx", "onnxruntime": "onnx", "PIL": "onnx", "numpy": "onnx",
          "sklearn": "train", "torchvision": "torchvision", "tensorrt": "tensorrt", "cuda": "tensorrt",
          "pytriton": "serve", "tritonclient": "serve"}   # a missing module -> the extra that installs it


def fail_internal(e: BaseException) -> None:
    if os.environ.get("RESGRAPH_DEBUG"):
        raise e
    click.echo(f"resgraph: internal error: {type(e).__name__}: {e}\n"
               "  this is a bug in resgraph, not in your spec; rerun with RESGRAPH_DEBUG=1 for a traceback "
               "and report it", err=True)
    sys.exit(70)


def print_diagnostics(diags, path) -> None:
    from rich.text import Text

    from ..render import console, diagnostic, escape
    err = console(stderr=True)
    for d in diags:
        err.print(diagnostic(d))
    n = sum(d.severity == "error" for d in diags)
    err.print(Text(f"{escape(str(path))}: {n} error{'s' * (n != 1)}", style="bold red"))   # a path is not markup


def run(fn):
    """Run a command body: user errors print like a compiler's and exit 1; bugs exit 70."""
    try:
        return fn()
    except ResgraphError as e:
        print_diagnostics(e.diagnostics, e.diagnostics[0].loc.file)
        sys.exit(1)
    except OSError as e:   # the environment's (full disk, read-only, permissions), not a bug: name the path
        from ..fileio import os_error
        err = os_error(e)
        print_diagnostics(err.diagnostics, err.file)
        sys.exit(1)
    except ImportError as e:
        top = (e.name or "").split(".")[0]
        extra = EXTRAS.get(top, "torch")
        click.echo(f"resgraph: error: {e}\n  hint: this command needs {top or 'a package'}: pip install 'resgraph[{extra}]'",
                   err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        fail_internal(e)


def say(message: str) -> None:
    """A line for the person at the terminal (stderr): stdout stays the command's result."""
    click.echo(message, err=True)


class FiniteFloat(click.FloatRange):
    """A float in [lo, hi] that is a number: click's FloatRange lets nan through every bound."""

    def convert(self, value, param, ctx):
        v = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(v, param, ctx)


class HxW(click.ParamType):
    """An input size, height x width in pixels: 224x224 -> (224, 224)."""
    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        import re
        from ..limits import MAX_SPATIAL
        m = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", str(value))
        if not m or not all(1 <= int(v) <= MAX_SPATIAL for v in m.groups()):
            self.fail(f"{value!r} is not a size HxW (height x width in pixels, 1 to {MAX_SPATIAL}, e.g. 256x256)",
                      param, ctx)
        return int(m[1]), int(m[2])


@dataclass(frozen=True)
class Requires:
    """One row of a command's option-compatibility table (as Ultralytics' export_formats() is a table):
    `option`, when `when(value)` holds, needs the flag `needs`; else an OptionError with `message` and
    `hint` (both may name {value})."""
    option: str
    needs: str
    message: str
    hint: str
    when: Callable[[object], bool] = lambda v: v not in (None, False)


def check_requires(rules: tuple[Requires, ...], params: dict) -> None:
    """The first row of `rules` that the command line breaks, as an OptionError naming the option."""
    from ..errors import OptionError
    for r in rules:
        v = params[r.option]
        if r.when(v) and not params[r.needs]:
            raise OptionError.at("--" + r.option.replace("_", "-"), r.message.format(value=v), r.hint.format(value=v))


VAR_HELP = ("NAME=VALUE: override the spec's vars: NAME (a YAML value: 9, 0.5, relu, [16,32,64]); "
            "repeatable.")


def parse_var(text: str) -> tuple[str, list]:
    """--var NAME=VALUE -> (NAME, [values]): VALUE read as YAML (9, relu, [16,32,64]); commas outside
    brackets and quotes separate the values of a sweep (n=3,5,7: three)."""
    import re

    import yaml
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise click.BadParameter(f"{text!r} is not NAME=VALUE (e.g. --var n=9, --var widths=[16,32,64])")
    if len(value) > 4096:
        raise click.BadParameter(f"the value of {name} is {len(value):,} characters; a variable's is a few")
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(value + ","):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    if depth or quote or not parts:
        raise click.BadParameter(f"{name}={value}: an unclosed bracket or quote")
    try:
        values = [yaml.safe_load(p) for p in parts]
    except yaml.YAMLError as e:
        raise click.BadParameter(f"{name}={value}: not a YAML value ({getattr(e, 'problem', None) or e})") from None
    if any(v is None for v in values):
        raise click.BadParameter(f"{name}={value}: a value is missing (e.g. --var {name}=9)")
    return name, values


def var_option(sweep: bool = False):
    """The --var option of every command that reads a spec. The command's library call reads the spec
    within frontend.spec_vars, so the overrides reach it however deep it checks the spec. With
    sweep=True (check) the command gets `var`, NAME -> [values], and runs each itself; without,
    several values are a usage error."""
    import functools

    def convert(ctx, param, texts):
        out = {}
        for text in texts:
            name, values = parse_var(text)
            if name in out:
                raise click.BadParameter(f"{name} is given twice; a sweep is one --var {name}=3,5,7")
            if len(values) > 1 and not sweep:
                raise click.BadParameter(f"{name}={','.join(map(str, values))}: a sweep of several values is for "
                                         f"'resgraph check'; give {name} one value here")
            out[name] = values
        return out

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, var, **kwargs):
            if sweep:
                return fn(*args, var=var, **kwargs)
            from ..frontend import spec_vars
            with spec_vars({k: v[0] for k, v in var.items()}):
                return fn(*args, **kwargs)
        return click.option("--var", "var", multiple=True, callback=convert, metavar="NAME=VALUE",
                            help=VAR_HELP + (" NAME=3,5,7 checks each value: one row each." if sweep else ""))(wrapper)
    return decorate
