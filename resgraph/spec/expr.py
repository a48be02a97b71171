"""Safe arithmetic for numeric arguments: "$out * 4", "($width + 1) // 2", "$widths[$copy]",
"make_divisible($c * 0.75, 8)".

Grammar (no Python eval, no attribute access, no names without '$' but the functions below):

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '//') unary)*
    unary := ('-' | '+') unary | atom
    atom  := NUMBER | '$' NAME ('[' expr ']')* | FUNC '(' expr (',' expr)* ')' | '(' expr ')'
    FUNC  := min | max | round | ceil | floor | make_divisible

Values are bounded (|v| <= MAX_ABS) so "$a * $a * $a ..." cannot grow without limit.
"""
from __future__ import annotations

import math
import re

MAX_LEN = 256
MAX_ABS = 10**15
MAX_PARENS = 32


def make_divisible(v, divisor, min_value=None) -> int:
    """torchvision's (and TensorFlow's MobileNet) `_make_divisible`: v rounded to the nearest multiple
    of divisor, at least min_value (default: divisor), and never more than 10% below v."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _minmax(fn):
    def call(*args):
        return fn(args[0]) if len(args) == 1 and isinstance(args[0], list) else fn(args)
    return call


# name -> (function, least and most arguments); round is Python's (half to even: round(2.5) is 2)
FUNCTIONS = {"min": (_minmax(min), 1, 64), "max": (_minmax(max), 1, 64), "round": (lambda x: int(round(x)), 1, 1),
             "ceil": (math.ceil, 1, 1), "floor": (math.floor, 1, 1), "make_divisible": (make_divisible, 2, 3)}
_FUNC = "|".join(sorted(FUNCTIONS, key=len, reverse=True))
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)"
                    rf"|(?P<fn>(?:{_FUNC})(?=\s*\())|(?P<op>//|[-+*()\[\],]))")
_CALL = re.compile(rf"\s*(?:{_FUNC})\s*\(")
SYNTAX = "expressions use numbers, $names, + - * // and ( )"


class _Failed:
    """The value of something whose error has been reported: later stages skip it silently."""
    def __repr__(self) -> str:
        return "<failed>"


FAILED = _Failed()


class ExprError(Exception):
    def __init__(self, message: str, hint: str = "", offset: int = 0):
        super().__init__(message)
        self.message, self.hint, self.offset = message, hint, offset


def is_expr(value) -> bool:
    """A string with a `$name` in it, or one that starts with a function call: make_divisible(24, 8)."""
    return isinstance(value, str) and ("$" in value or _CALL.match(value) is not None)


def evaluate(text: str, env: dict):
    """Evaluate `text` with `$name` looked up in `env`. A lone "$name" (or "$list[i]") returns the value
    as it is (any type); arithmetic and functions take numbers only."""
    if len(text) > MAX_LEN:
        raise ExprError(f"expression longer than {MAX_LEN} characters", "split it into vars")
    tokens = _tokenize(text)
    parser = _Parser(text, tokens, env)
    try:
        value = parser.expr()
    except OverflowError:
        raise ExprError(f"'{text}' overflows", "sizes in a network are far smaller") from None
    if parser.pos != len(tokens):
        _, tok, off = tokens[parser.pos]
        raise ExprError(f"unexpected '{tok}' in expression '{text}'", SYNTAX, off)
    return value


def _tokenize(text: str):
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or (m.group("op") == "[" and (not tokens or tokens[-1][1] not in ("]",) and tokens[-1][0] != "var")):
            bad = text[pos:].lstrip()[:20]
            hint = ("a list is written under vars: (widths: [16, 32, 64]); an expression indexes it: $widths[0]"
                    if bad.startswith("[") else "expressions may only use numbers, $names, $list[index], + - * // and "
                    "parentheses; nothing is called but min, max, round, ceil, floor and make_divisible")
            raise ExprError(f"cannot read '{bad}' in expression '{text}'", hint, pos)
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    if not tokens:
        raise ExprError("empty expression", "write a number or $name")
    return tokens


def _lookup(name: str, env: dict, offset: int):
    if name not in env:
        from ..errors import did_you_mean
        raise ExprError(f"unknown variable '${name}'", did_you_mean(name, env, "names") or "define it under vars: or in the block's args", offset)
    return env[name]


class _Parser:
    def __init__(self, text, tokens, env):
        self.text, self.tokens, self.env, self.pos, self.depth = text, tokens, env, 0, 0

    def peek(self):
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "op" else None

    def offset(self) -> int:
        return self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text)

    def operand(self, method):
        """(value, (start, end)) of one operand parsed by `method`: where it is written."""
        off = self.offset()
        value = method()
        return value, (off, self.offset())

    def num(self, value, span: tuple[int, int]):
        """`value` as a number for arithmetic, else an error at the operand that gave it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            off, end = span
            start = off - 1 if off and self.text[off - 1] == "$" else off
            shown = self.text[start:end].strip() or self.text
            raise ExprError(f"{shown} is {value!r}, not a number", "only numbers take part in arithmetic", off)
        return value

    def expr(self):
        value, span = self.operand(self.term)
        while self.peek() in ("+", "-"):
            self.num(value, span)
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs = self.num(*self.operand(self.term))
            value = _check(value + rhs if op == "+" else value - rhs, self.text)
        return value

    def term(self):
        value, span = self.operand(self.unary)
        while self.peek() in ("*", "//"):
            self.num(value, span)
            op, at = self.tokens[self.pos][1], self.tokens[self.pos][2]
            self.pos += 1
            rhs = self.num(*self.operand(self.unary))
            if op == "*":
                value = _check(value * rhs, self.text)
            else:
                if rhs == 0:
                    raise ExprError(f"division by zero in '{self.text}'", "check the divisor", at)
                value = value // rhs
        return value

    def unary(self):
        if self.peek() in ("-", "+"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            v = self.num(*self.operand(self.unary))
            return -v if op == "-" else v
        return self.atom()

    def atom(self):
        if self.pos >= len(self.tokens):
            raise ExprError(f"expression '{self.text}' ends too early", "an operand is missing", len(self.text))
        kind, tok, off = self.tokens[self.pos]
        self.pos += 1
        if kind == "num":
            value = float(tok) if any(c in tok for c in ".eE") else int(tok)
            return _check(value, self.text)
        if kind == "var":
            return self.indexed(tok, _lookup(tok, self.env, off))
        if kind == "fn":
            return self.call(tok, off)
        if tok == "(":
            value = self.nested(off)
            self.close(")", off)
            return value
        raise ExprError(f"unexpected '{tok}' in expression '{self.text}'", "an operand is missing here", off)

    def nested(self, off: int):
        self.depth += 1
        if self.depth > MAX_PARENS:
            raise ExprError("parentheses nested too deeply", "simplify the expression", off)
        value = self.expr()
        self.depth -= 1
        return value

    def close(self, bracket: str, off: int) -> None:
        if self.peek() != bracket:
            raise ExprError(f"missing '{bracket}' in '{self.text}'", "close every parenthesis and bracket", off)
        self.pos += 1

    def indexed(self, name: str, value):
        """$name[i][j]...: an element of a list variable; the index is an expression."""
        while self.peek() == "[":
            at = self.offset()
            self.pos += 1
            i, i_off = self.operand(lambda: self.nested(at))
            self.close("]", at)
            if not isinstance(value, list):
                raise ExprError(f"${name} is {value!r}, not a list", f"only a list variable is indexed: ${name} alone", at)
            self.num(i, i_off)
            if i != int(i):
                raise ExprError(f"index {i!r} of ${name} is not a whole number", "index with an integer: $list[0]", i_off[0])
            if not 0 <= int(i) < len(value):
                raise ExprError(f"index {i!r} is out of range for ${name}, which has {len(value)} value"
                                f"{'s' * (len(value) != 1)}", f"indexes of ${name} are 0 to {len(value) - 1}"
                                + (" (with repeat: n, $copy runs from 0 to n - 1)" if "$copy" in self.text else ""), i_off[0])
            value = value[int(i)]
        return value

    def call(self, name: str, off: int):
        fn, least, most = FUNCTIONS[name]
        self.pos += 1   # '(' (the tokenizer matched the name only before one)
        args = []
        while True:
            args.append(self.operand(lambda: self.nested(off)))
            if self.peek() != ",":
                break
            self.pos += 1
        self.close(")", off)
        if not least <= len(args) <= most:
            want = str(least) if least == most else f"{least} to {most}"
            raise ExprError(f"{name}() takes {want} argument{'s' * (most != 1)}, got {len(args)}",
                            "e.g. make_divisible($c * 0.75, 8), min($a, $b), round($w * 1.5)", off)
        values = [v if name in ("min", "max") and len(args) == 1 and isinstance(v, list) and v else self.num(v, o)
                  for v, o in args]
        if name in ("min", "max") and isinstance(values[0], list):
            values = [[self.num(x, args[0][1]) for x in values[0]]]
        if name == "make_divisible" and (values[1] != int(values[1]) or values[1] < 1):
            raise ExprError(f"make_divisible's divisor must be a positive integer, got {values[1]!r}",
                            "e.g. make_divisible($c, 8)", args[1][1][0])
        return _check(fn(*values), self.text)


def _check(value, text):
    if abs(value) > MAX_ABS:
        raise ExprError(f"'{text}' evaluates beyond {MAX_ABS:.0e}", "sizes in a network are far smaller")
    return value
