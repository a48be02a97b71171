"""Checkpoints of a spec as library calls: `resgraph init` and `resgraph import-weights` are each one
call here. Every checkpoint records the spec it fits (name and sha256), whether it is trained, where
its tensors came from, and the resgraph that wrote it."""
from __future__ import annotations

from .version import __version__


def init_file(spec: str, output: str, seed: int = 0):
    """Write freshly initialised weights for the spec at `spec` (its init: policies) to `output`,
    marked untrained. Returns the Checked spec."""
    from .backends.torch import save_checkpoint, to_torch
    from .frontend import check_file
    c = check_file(spec)
    m = to_torch(c.graph, seed=seed)
    save_checkpoint(m, output, {"spec": c.spec.name, "spec_sha256": c.spec.sha256, "untrained": "true",
                                "seed": seed, "resgraph_version": __version__})
    return c


def import_file(source: str, spec: str, output: str, pretrained: bool = False, weights_file: str | None = None,
                seed: int = 0, reinit=()) -> dict:
    """Import the weights of `source` (torchvision:NAME or timm:NAME) into the spec at `spec` by
    structure and write them to `output`: import_model's report, with `source` (the model) and
    `origin` (where its weights came from: pretrained, a file, or a seeded random init). `reinit`
    (spec paths, e.g. "fc" or ["layer4", "fc"]) names layers initialised by the spec's init: with
    `seed` instead of imported: a new head for another number of classes."""
    from .backends.torch import save_checkpoint
    from .backends.torch.importer import import_model, reinit_names
    from .backends.torch.sources import parse_source
    from .frontend import check_file
    src = parse_source(source)
    c = check_file(spec)
    module, report = import_model(src, c, pretrained=pretrained, weights_file=weights_file, seed=seed, reinit=reinit)
    origin = "pretrained" if pretrained else (weights_file or f"random init, seed {seed}")
    fresh = {"reinit": ",".join(reinit_names(reinit)), "reinit_seed": seed} if report["reinit"] else {}
    save_checkpoint(module, output, {"spec": c.spec.name, "spec_sha256": c.spec.sha256,
                                     "untrained": str(not (pretrained or weights_file)).lower(),
                                     "source": f"{src} ({origin})", **fresh, "resgraph_version": __version__})
    return {**report, "source": str(src), "origin": origin}
