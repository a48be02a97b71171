"""What `resgraph run` does with each output of a model: a vector's top-k classes, and, on request,
every output saved as .npy and a [C, H, W] class-score map's arg-max saved as a palette PNG.

    --save DIR         DIR/<stem>.<output>.npy: one per input per output, the output as the model gave
                       it (float32, without the batch dimension)
    --save-masks DIR   DIR/<stem>.<output>.png: for each [C, H, W] output with labels (C of them),
                       the arg-max class of every pixel, at the input image's own size

<stem> is the input file's name without its extension, `<stem>-<i>` for sample i of a batched
.npy; where two inputs of one run would share one (a.png in two folders, a.png and a.jpg), the
later ones in input order get `~2`, `~3`, ...: every input has its own files, and the same inputs
in the same order always get the same names. Each file is written whole (to a temporary name, then
renamed): a file of that name is never seen half written.

The PNG is a palette image (mode P) whose index is the class: index i is labels[i], in PASCAL VOC's
colour map (0 black, 1 dark red, 2 dark green, 3 olive, 4 navy, ...); index 255 (VOC's "void",
cream) marks the pixels the model did not see (outside a centre crop). So at most 255 classes.
The map is taken back through the preprocess geometry (preprocess.Geometry.to_image): padding
removed, the crop put back, resizes undone, all nearest-neighbour; a .npy or .npz input's map is
at the input's own H x W.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

VOID = 255                  # the palette index of pixels the model did not see
MAX_MASK_CLASSES = VOID     # classes 0..254


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map, 256 RGB entries: class i's colour spreads i's bits over R, G and B."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


@dataclass(frozen=True)
class OutputPlan:
    """One output of the model as run shows it."""
    name: str
    shape: tuple                # the sample shape, size variables as names and expressions
    labels: tuple | None        # the class names, where they are this output's (one per entry or channel)

    @property
    def vector(self) -> bool:
        return len(self.shape) == 1

    @property
    def maskable(self) -> bool:
        """A [C, H, W] map of class scores: C labels, few enough for a palette PNG."""
        return len(self.shape) == 3 and self.labels is not None and len(self.labels) <= MAX_MASK_CLASSES

    def shown(self) -> str:
        return f"{self.name} [{', '.join(map(str, self.shape))}]"


def plan_outputs(outputs, labels) -> list[OutputPlan]:
    """Each output (TensorInfo), with the labels where their count is its classes (a vector's
    entries, a map's channels)."""
    return [OutputPlan(t.name, t.sample_shape, tuple(labels) if labels is not None and len(t.sample_shape) in (1, 3)
                       and t.sample_shape[0] == len(labels) else None) for t in outputs]


def check_saving(artifact: str, model: str, plans: list[OutputPlan], save: str | None, masks: str | None) -> None:
    """Before anything runs or is written: every output that is not a vector goes somewhere (--save,
    or --save-masks where it is a class map), --save-masks has a class map to write, and the folders
    given are folders (or can be)."""
    from ..errors import ArtifactError, OptionError
    if masks and not any(p.maskable for p in plans):
        raise OptionError.at("--save-masks", f"no output of {model} is a [C, H, W] map of class scores with C labels "
                             f"(outputs: {', '.join(p.shown() for p in plans)})",
                             f"give the spec labels: one per channel of the map (at most {MAX_MASK_CLASSES}); "
                             "--save DIR saves any output as .npy")
    unseen = [p for p in plans if not p.vector and not save and not (masks and p.maskable)]
    if unseen:
        some_maps = any(p.maskable for p in plans)
        raise ArtifactError.at(artifact, f"{model}'s output{'s' * (len(unseen) > 1)} "
                               f"{', '.join(p.shown() for p in unseen)} {'are' if len(unseen) > 1 else 'is'} not a "
                               "vector: run prints top-k classes of vector outputs only",
                               "save every output with --save DIR (one .npy per input per output)" +
                               (", or class maps as PNGs with --save-masks DIR" if some_maps else ""))
    for option, folder in (("--save", save), ("--save-masks", masks)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise OptionError.at(option, f"{folder} is a file, not a folder", "name a folder (it is made if missing)")


def file_stems(items) -> list[str]:
    """Each input's file stem, unique in the run (see the module's docstring)."""
    used: set[str] = set()
    out = []
    for it in items:
        base = os.path.basename(it.path.rstrip("/")) or "input"
        stem = os.path.splitext(base)[0] or base
        if it.index is not None:
            stem = f"{stem}-{it.index}"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}~{k}", k + 1
        used.add(name)
        out.append(name)
    return out


def shown_path(path: str) -> str:
    """A path for display and JSON: odd bytes of a name that is not UTF-8 as \\xNN."""
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "backslashreplace")


class Writer:
    """Saves a run's outputs: .npy files into `save`, class-map PNGs into `masks` (either may be None)."""

    def __init__(self, plans: list[OutputPlan], stems: list[str], save: str | None, masks: str | None):
        from ..errors import PathError
        self.plans, self.stems, self.save, self.masks = plans, stems, save, masks
        self.palette = voc_palette()
        for option, folder in (("--save", save), ("--save-masks", masks)):
            try:
                if folder:
                    os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise PathError.at(folder, f"cannot make the {option} folder: {e.strerror or e}",
                                   "check the path and its permissions") from None

    def write(self, index: int, result) -> dict:
        """Input `index`'s outputs (a good Result) -> output name -> what run reports of it: its shape,
        and the files written ('file', 'mask': {file, shape} where one is)."""
        out = {}
        for p in self.plans:
            y = result.outputs[p.name]
            info: dict = {"shape": list(y.shape)}
            if self.save:
                info["file"] = self._put(self.save, f"{self.stems[index]}.{p.name}.npy", lambda f, y=y: np.save(f, y))
            if self.masks and p.maskable:
                classes = np.argmax(y, axis=0).astype(np.uint8)
                if result.geometry is not None:
                    classes = result.geometry.to_image(classes, VOID)
                path = self._put(self.masks, f"{self.stems[index]}.{p.name}.png", lambda f, m=classes: self._png(f, m))
                info["mask"] = {"file": path, "shape": list(classes.shape)}
            out[p.name] = info
        return out

    def _png(self, f, classes: np.ndarray) -> None:
        from PIL import Image
        im = Image.fromarray(classes)       # mode L; a palette makes it P
        im.putpalette(self.palette)
        im.save(f, format="PNG")

    @staticmethod
    def _put(folder: str, name: str, write) -> str:
        """Write a file whole: to a temporary name beside it, then renamed over it."""
        path = os.path.join(folder, name)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError):   # a full disk, a folder made read-only meanwhile: the run stops here
                from ..errors import PathError
                raise PathError.at(path, f"cannot write it: {e.strerror or e}", "check the disk and the "
                                   "folder's permissions") from None
            raise
        return shown_path(path)
