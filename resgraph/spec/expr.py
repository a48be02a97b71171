"""Safe arithmetic for numeric arguments: "$out * 4", "($width + 1) // 2".

Grammar (no Python eval, no attribute access, no calls, no names without '$'):

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '//') unary)*
    unary := ('-' | '+') unary | atom
    atom  := NUMBER | '$' NAME | '(' expr ')'

Values are bounded (|v| <= MAX_ABS) so "$a * $a * $a ..." cannot grow without limit.
"""
from __future__ import annotations

import re

MAX_LEN = 256
MAX_ABS = 10**15
MAX_PARENS = 32

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*()]))")


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
    return isinstance(value, str) and "$" in value


def evaluate(text: str, env: dict):
    """Evaluate `text` with `$name` looked up in `env`. A lone "$name" returns env[name] as is (any type)."""
    if len(text) > MAX_LEN:
        raise ExprError(f"expression longer than {MAX_LEN} characters", "split it into vars")
    tokens = _tokenize(text)
    if len(tokens) == 1 and tokens[0][0] == "var":
        return _lookup(tokens[0][1], env, tokens[0][2])
    parser = _Parser(text, tokens, env)
    try:
        value = parser.expr()
    except OverflowError:
        raise ExprError(f"'{text}' overflows", "sizes in a network are far smaller") from None
    if parser.pos != len(tokens):
        _, tok, off = tokens[parser.pos]
        raise ExprError(f"unexpected '{tok}' in expression '{text}'", "expressions use numbers, $names, + - * // and ( )", off)
    return value


def _tokenize(text: str):
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            bad = text[pos:].lstrip()[:20]
            raise ExprError(f"cannot read '{bad}' in expression '{text}'",
                            "expressions may only use numbers, $names, + - * // and parentheses; nothing is called",
                            pos)
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

    def expr(self):
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs = self.term()
            value = _check(value + rhs if op == "+" else value - rhs, self.text)
        return value

    def term(self):
        value = self.unary()
        while self.peek() in ("*", "//"):
            op, off = self.tokens[self.pos][1], self.tokens[self.pos][2]
            self.pos += 1
            rhs = self.unary()
            if op == "*":
                value = _check(value * rhs, self.text)
            else:
                if rhs == 0:
                    raise ExprError(f"division by zero in '{self.text}'", "check the divisor", off)
                value = value // rhs
        return value

    def unary(self):
        if self.peek() in ("-", "+"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            v = self.unary()
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
            value = _lookup(tok, self.env, off)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ExprError(f"${tok} is {value!r}, not a number", "only numbers take part in arithmetic", off)
            return value
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_PARENS:
                raise ExprError("parentheses nested too deeply", "simplify the expression", off)
            value = self.expr()
            if self.peek() != ")":
                raise ExprError(f"missing ')' in '{self.text}'", "close every parenthesis", off)
            self.pos += 1
            self.depth -= 1
            return value
        raise ExprError(f"unexpected '{tok}' in expression '{self.text}'", "an operand is missing here", off)


def _check(value, text):
    if abs(value) > MAX_ABS:
        raise ExprError(f"'{text}' evaluates beyond {MAX_ABS:.0e}", "sizes in a network are far smaller")
    return value
