"""An engine's optimisation profile: for every input, the MIN, OPT and MAX shapes (batch included)
TensorRT builds it for (IOptimizationProfile.set_shape), from the engine options and the model.
Pure: no TensorRT import.

Written as trtexec writes shapes (dims joined by `x`, the batch first):

    --shapes image:1x3x224x224:8x3x512x512:32x3x1024x1024,mask:...   MIN:OPT:MAX per input
    --shapes image:8x3x512x512                                       one shape: MIN = OPT = MAX
                                                                     (trtexec's --shapes at build time)
    --shapes image:1x3x224x224:32x3x1024x1024                        MIN:MAX: OPT = MAX (as --batch)
    --min-shapes image:1x3x224x224 --opt-shapes ... --max-shapes ... trtexec's --minShapes/--optShapes/
                                                                     --maxShapes; a point not given is filled
                                                                     as trtexec fills it (parse_trtexec)

Resolved against the model (`resolve`): every input gets an entry. One not named takes the batch of
--batch, the model's fixed dims, and for each size variable the value the named inputs give it, else
MIN = its smallest valid size and OPT = MAX = its largest (the whole range `run` may feed). Every
fixed dim must be the model's, every size variable's MIN, OPT and MAX one of its valid sizes (the
manifest's `sizes`), and the same across the inputs it sizes, and every input's batch the same.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptionError
from ...limits import MAX_BATCH, MAX_SPATIAL
from ...manifest import compact

POINTS = ("min", "opt", "max")


def dims_text(shape) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class ShapeProfile:
    """One input's profile: its MIN, OPT and MAX shapes, the batch first."""
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        """Positive integers, one rank, MIN <= OPT <= MAX dim by dim, within the spec language's limits:
        a profile parsed or read back from an engine.json (a forged one: a damaged engine.json) holds nothing else."""
        shapes = (self.min, self.opt, self.max)
        ok = all(isinstance(s, tuple) for s in shapes) and 2 <= len(self.min) <= 4 and \
            len(self.min) == len(self.opt) == len(self.max) and \
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for s in shapes for v in s)
        if not ok or not all(a <= b <= c for a, b, c in zip(*shapes)) or self.max[0] > MAX_BATCH or \
                any(v > MAX_SPATIAL for v in self.max[1:]):
            raise OptionError.at("--shapes", f"{self} is not a profile of an input",
                                 f"NAME:MIN:OPT:MAX, each shape N x C x H x W of positive integers with MIN <= OPT <= "
                                 f"MAX dim by dim (batch up to {MAX_BATCH:,}), e.g. image:1x3x224x224:8x3x512x512:"
                                 "32x3x1024x1024")

    def __str__(self) -> str:
        """As --shapes takes it."""
        return ":".join([str(self.name), *(dims_text(s) if isinstance(s, tuple) else str(s)
                                           for s in (self.min, self.opt, self.max))])

    def at(self, point: str) -> tuple[int, ...]:
        return getattr(self, point)

    @property
    def fixed(self) -> bool:
        """Every dim but the batch the same at MIN, OPT and MAX."""
        return self.min[1:] == self.opt[1:] == self.max[1:]

    def to_json(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: dict) -> "ShapeProfile":
        return cls(str(d["name"]), *(tuple(d[p]) for p in POINTS))


# --- parsing the options -------------------------------------------------------------------------

def _shape(text: str, entry: str, where: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise OptionError.at(where, f"'{entry}': '{text}' is not a shape",
                             "dims joined by x, the batch first, e.g. image:1x3x224x224:8x3x512x512:32x3x1024x1024")
    return dims


def _entries(text: str, where: str) -> list[tuple[str, list[str]]]:
    """'a:s1:s2,b:s3' -> [('a', ['s1', 's2']), ('b', ['s3'])], each input once."""
    out, seen = [], set()
    for entry in str(text).split(","):
        name, *shapes = entry.strip().split(":")
        if not name or not shapes or not all(shapes):
            raise OptionError.at(where, f"'{entry.strip()}' is not NAME:SHAPE[:SHAPE[:SHAPE]]",
                                 "e.g. image:1x3x224x224:8x3x512x512:32x3x1024x1024 (inputs separated by commas)")
        if name in seen:
            raise OptionError.at(where, f"input '{name}' is given twice", "one entry per input")
        seen.add(name)
        out.append((name, shapes))
    return out


def _profile(name: str, shapes: list[tuple[int, ...]], entry: str, where: str) -> ShapeProfile:
    if len({len(s) for s in shapes}) != 1:
        raise OptionError.at(where, f"'{entry}': its shapes have different numbers of dims", "one rank: N x C x H x W")
    lo, opt, hi = (shapes * 3)[:3] if len(shapes) == 1 else (shapes[0], shapes[1], shapes[1]) if len(shapes) == 2 \
        else shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise OptionError.at(where, f"'{entry}': needs MIN <= OPT <= MAX in every dim", "e.g. image:1x3x224x224:"
                             "8x3x512x512:32x3x1024x1024")
    try:
        return ShapeProfile(name, lo, opt, hi)
    except OptionError as e:
        raise OptionError.at(where, e.message, e.hint) from None


def parse_shapes(text: str, where: str = "--shapes") -> tuple[ShapeProfile, ...]:
    """--shapes: NAME:MIN:OPT:MAX (or NAME:SHAPE, NAME:MIN:MAX) per input, separated by commas."""
    out = []
    for name, texts in _entries(text, where):
        entry = ":".join([name, *texts])
        if len(texts) > 3:
            raise OptionError.at(where, f"'{entry}': {len(texts)} shapes", "one (fixed), MIN:MAX or MIN:OPT:MAX")
        out.append(_profile(name, [_shape(t, entry, where) for t in texts], entry, where))
    return tuple(out)


def parse_trtexec(min_text: str | None, opt_text: str | None,
                  max_text: str | None) -> tuple[tuple[ShapeProfile, ...], tuple[str, str, str]]:
    """trtexec's --minShapes/--optShapes/--maxShapes (here --min-shapes, ...): each NAME:SHAPE per input,
    separated by commas. As trtexec's processShapes (samples/common/sampleOptions.cpp) fills a point
    not given: MIN from OPT, else MAX; OPT from MAX, else MIN; MAX from OPT, else MIN. An input
    named in one given option must be named in every given one. Returns (the profiles, the option
    each point came from)."""
    given = {p: t for p, t in zip(POINTS, (min_text, opt_text, max_text)) if t is not None}
    per = {}
    for p, text in given.items():
        for name, texts in _entries(text, f"--{p}-shapes"):
            if len(texts) != 1:
                raise OptionError.at(f"--{p}-shapes", f"'{name}:{':'.join(texts)}': one shape per input here",
                                     "NAME:NxCxHxW; MIN:OPT:MAX in one option is --shapes'")
            per.setdefault(name, {})[p] = _shape(texts[0], f"{name}:{texts[0]}", f"--{p}-shapes")
    source = {"min": "opt" if "opt" in given else "max", "opt": "max" if "max" in given else "min",
              "max": "opt" if "opt" in given else "min"}
    out = []
    for name, shapes in per.items():
        absent = [p for p in given if p not in shapes]
        if absent:
            raise OptionError.at(f"--{absent[0]}-shapes", f"input '{name}' has no shape here",
                                 f"name {name} in each of {', '.join(f'--{p}-shapes' for p in given)}")
        full = [shapes.get(p) or shapes[source[p]] for p in POINTS]
        entry = ":".join([name, *(dims_text(s) for s in full)])
        where = f"--{next(p for p in ('opt', 'max', 'min') if p in given)}-shapes"
        out.append(_profile(name, full, entry, where))
    return tuple(out), tuple(f"--{p if p in given else source[p]}-shapes" for p in POINTS)


# --- resolving against the model -----------------------------------------------------------------

def where_of(sources: tuple[str, str, str], point: str | None) -> str:
    """The option a problem at `point` (None: the whole entry, shown at OPT's) came from."""
    return sources[POINTS.index(point or "opt")]


def default_profile(t, batch, sizes: dict, fixed: dict | None = None) -> ShapeProfile:
    """The profile of input `t` (a manifest TensorInfo) that no option names: the batch profile, the
    model's fixed dims, each size variable at `fixed`[var] (MIN, OPT, MAX) where given, else from its
    smallest valid size to its largest."""
    fixed = fixed or {}

    def point(i: int) -> tuple[int, ...]:
        dims = []
        for d in t.sample_shape:
            if isinstance(d, str):
                valid = sizes[d].valid
                dims.append(fixed[d][i] if d in fixed else (valid[0], valid[-1], valid[-1])[i])
            else:
                dims.append(d)
        return ((batch.min, batch.opt, batch.max)[i], *dims)
    return ShapeProfile(t.name, point(0), point(1), point(2))


def problems(p: ShapeProfile, t, sizes: dict) -> list[tuple[str | None, str, str]]:
    """(point or None, what is wrong, hint) for profile `p` of input `t` (a manifest TensorInfo): its
    rank, fixed dims and size variables' values against the model's valid sizes."""
    want = ("N", *t.sample_shape)
    shown = "[" + ", ".join(map(str, want)) + "]"
    if len(p.min) != len(want):
        return [(None, f"{t.name}: {len(p.min)} dims given ({dims_text(p.min)}), but the model's input is {shown}",
                 f"give N x {' x '.join(map(str, t.sample_shape))}, the batch first")]
    out = []
    for i, d in enumerate(t.sample_shape, start=1):
        got = [p.at(pt)[i] for pt in POINTS]
        if isinstance(d, int):
            if got != [d, d, d]:
                out.append((None, f"{t.name}: dim {i} is {d} in the model ({shown}), the profile gives "
                            f"{':'.join(map(str, dict.fromkeys(got)))}", f"give {d} there at MIN, OPT and MAX"))
            continue
        r = sizes[d]
        for pt, v in zip(POINTS, got):
            if v not in r.valid:
                out.append((pt, f"{t.name}: {d} = {v} at {pt.upper()} is not a size the model takes ({compact(r.valid)})",
                            f"the nearest valid sizes are {' or '.join(map(str, r.nearest(v)))}"))
    return out


def mismatches(profile: tuple[ShapeProfile, ...], inputs, sizes: dict) -> list[tuple[str, str]]:
    """(input, why) for each way `profile` does not fit the model (inputs: manifest TensorInfo, sizes:
    the manifest's SizeRange per variable): an input with no entry or two, an entry of no input, a
    dim or a size that is not the model's, a size variable at two values, two batches."""
    out, names = [], [t.name for t in inputs]
    by_name = {}
    for p in profile:
        if p.name not in names or p.name in by_name:
            out.append((p.name, f"'{p.name}' is not an input of the model ({', '.join(names)})" if p.name not in names
                        else f"'{p.name}' has two profiles"))
        by_name[p.name] = p
    for t in inputs:
        if t.name not in by_name:
            out.append((t.name, f"{t.name} has no profile"))
        else:
            out += [(t.name, why) for _, why, _ in problems(by_name[t.name], t, sizes)]
    if not out:
        out += [(n, why) for n, why, _ in _disagreements(profile, inputs)]
    return out


def _disagreements(profile, inputs) -> list[tuple[str, str, str]]:
    """(input, why, point) where two inputs give one size variable different values, or the batch differs."""
    first, out = {}, []
    by_name = {p.name: p for p in profile}
    for t in inputs:
        p = by_name.get(t.name)
        if p is None:
            continue
        for i, d in [(0, "the batch"), *((i, d) for i, d in enumerate(t.sample_shape, start=1) if isinstance(d, str))]:
            values = tuple(p.at(pt)[i] for pt in POINTS)
            seen = first.setdefault(d, (t.name, values))
            if seen[1] != values:
                pt = next(pt for pt, a, b in zip(POINTS, seen[1], values) if a != b)
                out.append((t.name, f"{d} is {':'.join(map(str, values))} (MIN:OPT:MAX) for {t.name} but "
                            f"{':'.join(map(str, seen[1]))} for {seen[0]}: one value per point across the inputs", pt))
    return out


def resolve(options, inputs, sizes: dict) -> tuple[ShapeProfile, ...]:
    """Every input's profile (spec order) from BuildOptions `options` (its batch and shapes) and the
    model (inputs: manifest TensorInfo; sizes: {var: SizeRange}); an OptionError at the option that gave a
    profile the model cannot take, naming the input and, for a size it does not take, the nearest valid ones."""
    option = options.shapes_from
    names = [t.name for t in inputs]
    given = {p.name: p for p in options.shapes}
    for name in given:
        if name not in names:
            import difflib
            near = difflib.get_close_matches(name, names, n=1)
            raise OptionError.at(where_of(option, None), f"'{name}' is not an input of the model (it takes "
                                 f"{', '.join(names)})", f"did you mean '{near[0]}'?" if near else
                                 f"name one of {', '.join(names)}")
    for t in inputs:
        if t.name in given:
            for pt, why, hint in problems(given[t.name], t, sizes):
                raise OptionError.at(where_of(option, pt), why, hint)
    for name, why, pt in _disagreements(tuple(given.values()), inputs):
        raise OptionError.at(where_of(option, pt), why, "give a size variable the same MIN, OPT and MAX in every input")
    fixed = {}
    for t in inputs:
        p = given.get(t.name)
        for i, d in enumerate(t.sample_shape, start=1):
            if p is not None and isinstance(d, str):
                fixed[d] = tuple(p.at(pt)[i] for pt in POINTS)
    return tuple(given.get(t.name) or default_profile(t, options.batch, sizes, fixed) for t in inputs)


def from_specs(inputs, batch) -> tuple[ShapeProfile, ...]:
    """The profile of an engine.json of format 1, which recorded the batch only: every input's
    recorded shape (TensorSpec, -1 for the batch) with the batch profile."""
    out = []
    for t in inputs:
        rest = tuple(t.shape[1:])
        out.append(ShapeProfile(t.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest)))
    return tuple(out)


def outside(profile: dict, inputs, shapes: dict) -> tuple[str, str, str] | None:
    """(input, why, hint) for the first input whose shape (name -> [N, ...], checked against the model)
    lies outside the engine's profile (name -> ShapeProfile) in a dim other than the batch, which
    the runtime runs in chunks or pads; None where every input lies inside."""
    for t in inputs:
        p, shape = profile[t.name], shapes[t.name]
        for i, d in enumerate(t.sample_shape, start=1):
            if not p.min[i] <= shape[i] <= p.max[i]:
                what = d if isinstance(d, str) else f"dim {i}"
                return (t.name, f"{what} = {shape[i]} is outside the engine's profile, which takes {t.name}'s {what} "
                        f"from {p.min[i]} to {p.max[i]} ({p})",
                        "give a size in that range, or rebuild the engine with a profile that covers it (resgraph "
                        "engine build FOLDER --shapes NAME:MIN:OPT:MAX; docs/tensorrt.md); the other back ends take "
                        "every valid size")
    return None
