"""Argument kinds of the op table. Each `Arg.check` returns the cleaned value or raises ArgError."""
from __future__ import annotations

import math
from dataclasses import dataclass

REQUIRED = object()

from ..limits import MAX_CHANNELS, MAX_KERNEL

MAX_PARTS = 64   # parts of one split


class ArgError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Arg:
    kind: str                       # int | float | bool | choice | padding | padding2 | ids | ref | ints | pair
    default: object = REQUIRED
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, name: str, value):
        k = self.kind
        if k == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) \
                    or int(value) != value:
                raise ArgError(f"'{name}' must be an integer, got {_show(value)}", _range_hint(self))
            value = int(value)
            return _bounded(self, name, value)
        if k == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                raise ArgError(f"'{name}' must be a finite number, got {_show(value)}", _float_hint(self, value))
            return _bounded(self, name, float(value))
        if k == "bool":
            if not isinstance(value, bool):
                raise ArgError(f"'{name}' must be true or false, got {_show(value)}", f"write {name}: true or {name}: false")
            return value
        if k == "choice":
            if value not in self.choices:
                from ..errors import did_you_mean
                raise ArgError(f"'{name}' must be one of {', '.join(map(str, self.choices))}; got {value!r}",
                               did_you_mean(str(value), map(str, self.choices)))
            return value
        if k in ("padding", "padding2"):
            if value in ("same", "valid"):
                return value
            if k == "padding2" and isinstance(value, list):   # [height, width]
                if len(value) != 2:
                    raise ArgError(f"'{name}' must be 'same', 'valid', an integer or [height, width], got "
                                   f"{_show(value)}", f"for example: {name}: [0, 3] with kernel: [1, 7]")
                h, w = (Arg("int", lo=self.lo, hi=self.hi).check(f"{name}[{i}]", v) for i, v in enumerate(value))
                return h if h == w else (h, w)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArgError(f"'{name}' must be 'same', 'valid' or a non-negative integer, got {_show(value)}",
                               "'same' keeps the size (divided by the stride); 'valid' pads nothing")
            return _bounded(self, name, value)
        if k == "ref":   # one id, resolved to a path by expansion
            if not isinstance(value, str):
                raise ArgError(f"'{name}' must be an id, got {_show(value)}", f"for example: {name}: pre")
            return value
        if k == "ints":   # a list of integers, each within lo..hi (split's sizes)
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_PARTS:
                raise ArgError(f"'{name}' must be a list of 1 to {MAX_PARTS} integers, got {_show(value)}",
                               f"for example: {name}: [32, 32]")
            return tuple(Arg("int", lo=self.lo, hi=self.hi).check(f"{name}[{i}]", v) for i, v in enumerate(value))
        if k == "pair":   # an integer, or [height, width]: a square value is kept as the integer
            if isinstance(value, list):
                if len(value) != 2:
                    raise ArgError(f"'{name}' must be an integer or [height, width], got {_show(value)}",
                                   f"for example: {name}: 3 or {name}: [1, 7]")
                h, w = (Arg("int", lo=self.lo, hi=self.hi).check(f"{name}[{i}]", v) for i, v in enumerate(value))
                return h if h == w else (h, w)
            return Arg("int", lo=self.lo, hi=self.hi).check(name, value)
        if k == "ids":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ArgError(f"'{name}' must be a list of ids, got {_show(value)}", "for example: from: [input] or from: [stem, layer1]")
            return tuple(value)
        raise AssertionError(f"unknown arg kind {k}")


def _float_hint(arg, value) -> str:
    """YAML 1.1 reads `1e-6` (no dot) as a string: say how to write it as a number."""
    if isinstance(value, str):
        try:
            if _finite(float(value)):
                mant, _, exp = repr(float(value)).partition("e")
                mant = mant if "." in mant else mant + ".0"
                return f"YAML reads {value} as text: write it with a dot, {mant}" + (f"e{int(exp):+d}" if exp else "")
        except ValueError:
            pass
    return _range_hint(arg) or "e.g. 0.001"


def _finite(v) -> bool:
    return isinstance(v, int) or math.isfinite(v)


def _num(v) -> str:
    """A number as a person writes it: 1,048,576 not 1.04858e+06; huge ints abbreviated."""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        v = int(v)
        return f"{v:,}" if abs(v) < 10**15 else f"a {len(str(abs(v)))}-digit number"
    return f"{v:g}"


def _show(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _num(v)
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _range_hint(a: Arg) -> str:
    if a.lo is not None and a.hi is not None:
        return f"expected a value from {_num(a.lo)} to {_num(a.hi)}"
    if a.lo is not None:
        return f"expected a value >= {_num(a.lo)}"
    return ""


def _bounded(a: Arg, name: str, value):
    if a.lo is not None and value < a.lo:
        raise ArgError(f"'{name}' must be >= {_num(a.lo)}, got {_num(value)}",
                       "sizes are positive" if a.lo == 1 else _range_hint(a))
    if a.hi is not None and value > a.hi:
        raise ArgError(f"'{name}' = {_num(value)} exceeds the limit of {_num(a.hi)}",
                       "that is far beyond any real network; check for a typo or a runaway expression")
    return value


def Int(default=REQUIRED, lo=1, hi=MAX_CHANNELS, doc=""):
    return Arg("int", default, lo, hi, doc=doc)


def Float(default=REQUIRED, lo=None, hi=None, doc=""):
    return Arg("float", default, lo, hi, doc=doc)


def Bool(default=REQUIRED, doc=""):
    return Arg("bool", default, doc=doc)


def Choice(*choices, default=REQUIRED, doc=""):
    return Arg("choice", default, choices=tuple(choices), doc=doc)


def Padding(default="same", doc="", pair=False):
    """'same', 'valid' or an integer; with `pair`, also [height, width]."""
    return Arg("padding2" if pair else "padding", default, 0, MAX_KERNEL, doc=doc)


def Ints(lo=1, hi=MAX_CHANNELS, doc=""):
    return Arg("ints", REQUIRED, lo, hi, doc=doc)


def Pair(default=REQUIRED, lo=1, hi=MAX_KERNEL, doc=""):
    """An integer, or [height, width] (a non-square kernel or stride)."""
    return Arg("pair", default, lo, hi, doc=doc)


def Ids(doc=""):
    return Arg("ids", REQUIRED, doc=doc)


def Ref(doc=""):
    return Arg("ref", None, doc=doc)


@dataclass(frozen=True)
class Above(Arg):
    """A float argument with an exclusive lower bound: `above` < value (Float's `lo` is inclusive).
    The schema says it as exclusiveMinimum; `why` is the hint of the error."""
    above: float = 0.0
    why: str = ""

    def check(self, name: str, value):
        value = super().check(name, value)   # a finite number, else its own error
        if value <= self.above:
            raise ArgError(f"'{name}' must be > {self.above:g}, got {value:g}", self.why)
        return value
