"""The errors a user can cause, and the diagnostics they carry.

A `Diagnostic` is one problem at one place: file:line:col in a spec, or a named file, tensor,
input or option (line 0). A `ResgraphError` carries every diagnostic found in a run (a compiler
reports them all, not the first); the CLI catches it, prints each with its hint and exits 1.
Its subclasses say what kind of thing was wrong, so a caller can catch one kind:

    ResgraphError
    ├── SpecError       a spec: every diagnostic has a source location
    ├── WeightsError    the content of a weights file, a checkpoint or a training run's saved state
    │                   (trainer state, metrics), weights that diverged, a model imported from torchvision
    ├── DataError       a data folder, a dataset, an input for inference
    ├── DownloadError   something fetched over the network (pretrained weights, a dataset)
    ├── PathError       a path the operating system refuses (missing, a folder, a pipe, permissions,
    │                   full disk), whatever the file was for
    ├── ArtifactError   a compiled folder or a file in it (artifacts.py)
    │   └── EngineMismatch   a model.engine that cannot run here (backends/tensorrt/engine_json.py)
    ├── BackendError    a back end or tool resgraph drives (ONNX Runtime, torch, TensorRT, CUDA, Triton,
    │                   Graphviz) that cannot run here or cannot open this folder; `auto` passes over a
    │                   back end that raises it
    ├── PluginError     an op plugin (package) that fails to load or breaks the op table's rules
    └── OptionError     a command-line option or combination that cannot work; names the option

Where two could apply, the cause decides: a weights file that is missing is a PathError (the path),
one that holds NaN a WeightsError (its content). runtime.InputError (one input of
`resgraph run` that cannot be used) is not among them: it is a per-input signal, caught and reported
beside that input while the others go on.

Internal invariants are plain asserts, never one of these.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in a source file; line and column are 1-based like every compiler's."""
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Loc("<unknown>", 0, 0)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    loc: Loc
    message: str
    hint: str = ""
    severity: str = "error"   # "error" | "warning" | "note" (a place that explains an error before it)
    span: int = 1             # how many characters to underline

    def to_json(self) -> dict:
        return {"file": self.loc.file, "line": self.loc.line, "column": self.loc.col,
                "message": self.message, "hint": self.hint}


class ResgraphError(Exception):
    """Every problem found, in source order. file/line/column/message/hint are the first's."""

    def __init__(self, diagnostics: list[Diagnostic], ordered: bool = False):
        """Diagnostics print in source order, unless `ordered`: then as given (the shapes pass gives
        graph order, so the root cause comes first even when it sits in a block defined below)."""
        assert diagnostics, f"a {type(self).__name__} needs at least one diagnostic"
        self.diagnostics = list(diagnostics) if ordered else \
            sorted(diagnostics, key=lambda d: (d.loc.file, d.loc.line, d.loc.col))
        first = self.diagnostics[0]
        self.file, self.line, self.column = first.loc.file, first.loc.line, first.loc.col
        self.message, self.hint = first.message, first.hint
        super().__init__("\n".join(f"{d.loc}: {d.severity}: {d.message}" for d in self.diagnostics))

    @classmethod
    def at(cls, where: str, message: str, hint: str):
        """One error about a file, tensor, input or option (no line): `where` names it."""
        return cls([Diagnostic(Loc(where, 0, 0), message, hint)])


class SpecError(ResgraphError):
    """Everything wrong with a spec, each at file:line:col."""


class WeightsError(ResgraphError):
    """A weights file or checkpoint that cannot be read or does not fit, or a model imported from
    torchvision/timm whose structure differs from the spec's; names the file or model and the tensor."""


class DataError(ResgraphError):
    """A data folder, dataset or inference input that cannot be used; names the file or folder."""


class DownloadError(ResgraphError):
    """Something fetched over the network (pretrained weights, a dataset) that did not arrive intact."""


class PathError(ResgraphError):
    """A path the operating system refuses: missing, a folder, no permission, a full disk."""


class ArtifactError(ResgraphError):
    """A compiled folder, or a file in it, that cannot be used; names the file."""


class BackendError(ResgraphError):
    """A back end (or a tool such as Graphviz) that cannot run here, or cannot open this folder; the
    hint says how to fix it. (Also importable from resgraph.runtime, where it was defined.)"""


class PluginError(ResgraphError):
    """An op plugin (a package registering ops under the `resgraph.ops` entry points) that cannot be
    loaded or breaks the op table's rules; names the plugin's distribution and entry point."""


class OptionError(ResgraphError):
    """A command-line option or combination that cannot work; names the option (`where` is the
    option, e.g. --precision, or the file the option's value does not fit)."""


@dataclass
class Diagnostics:
    """Collects problems during a phase; `raise_if_any` ends the phase if there were errors."""
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    limit: int = 200   # past this many, a spec is noise: stop collecting
    _sited: set = field(default_factory=set)   # (loc, message) already reported with a call site

    def error(self, loc: Loc, message: str, hint: str = "", span: int = 1, site: str = "") -> None:
        """`site`: where a block was called from (Node.site()), added to the message of the first
        instance only: a block expanded n times reports each of its mistakes once, at the call that
        first made it."""
        d = Diagnostic(loc, message, hint, "error", span)
        if len(self.errors) < self.limit and d not in self.errors[-64:] and (loc, message) not in self._sited:
            if site:
                self._sited.add((loc, message))
                d = Diagnostic(loc, message + site, hint, "error", span)
            self.errors.append(d)

    def has_error_at(self, loc: Loc) -> bool:
        return any(e.loc == loc for e in self.errors)

    def warn(self, loc: Loc, message: str, hint: str = "") -> None:
        d = Diagnostic(loc, message, hint, "warning")
        if d not in self.warnings[-64:]:
            self.warnings.append(d)

    def raise_if_any(self, ordered: bool = False) -> None:
        if self.errors:
            raise SpecError(self.errors, ordered)


def listed(items, limit: int = 5) -> str:
    """The first `limit` items, comma-separated, and how many more there are: 'a, b, c, d, e (+5 more)'."""
    items = [str(x) for x in items]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def did_you_mean(word: str, choices, what: str = "") -> str:
    """'did you mean 'conv'?' for a near miss, else the list of valid choices (short lists only)."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if not choices:
        return ""
    if len(choices) <= 12:
        return f"valid {what or 'choices'}: " + ", ".join(choices)
    return f"valid {what or 'choices'} include: " + ", ".join(choices[:12]) + ", ..."
