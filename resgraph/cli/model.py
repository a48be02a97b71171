"""The PyTorch-side commands: init, import-weights, eval (train: cli/train.py). The work is in
resgraph.weights and resgraph.training."""
from __future__ import annotations


import click

from .common import FiniteFloat, run, var_option


@click.command("init")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: the same seed gives the same weights.")
@var_option()
def init_cmd(spec, output, seed):
    """Write freshly initialised weights for SPEC (the spec's init: policies), marked untrained."""
    def body():
        from ..weights import init_file
        c = init_file(spec, output, seed)
        click.echo(f"wrote {output}: {c.params:,} parameters, seed {seed} (untrained)")
    run(body)


@click.command("import-weights")
@click.argument("source")
@click.option("--spec", "spec", required=True, type=click.Path(dir_okay=False), help="The spec whose architecture matches.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--pretrained", is_flag=True,
              help="Download the library's published weights (torchvision: download.pytorch.org; timm: the "
                   "Hugging Face hub; needs internet unless cached).")
@click.option("--weights-file", type=click.Path(exists=True, dir_okay=False),
              help="The model's state_dict (.pth or .safetensors) downloaded elsewhere, for machines without internet.")
@click.option("--reinit", "reinit", multiple=True, metavar="PATHS",
              help="Layers of SPEC to initialise by its init: instead of importing (a new head: --reinit fc): "
                   "spec paths of layers, blocks or stages, comma-separated or repeated.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for a randomly initialised model (without --pretrained or --weights-file), and for "
                   "the --reinit layers' init.")
@var_option()
def import_weights_cmd(source, spec, output, pretrained, weights_file, reinit, seed):
    """Import weights from SOURCE (torchvision:NAME or timm:NAME, e.g. torchvision:resnet50,
    timm:resnet50d) into SPEC's layout.

    Tensors are paired in the order the two models use them, by kind, shape and layer, not by name,
    so any spec with the same architecture works whatever its ids; a different architecture fails at
    the first mismatch. A spec that ends before SOURCE (a backbone without the classifier's head)
    takes the tensors it has a place for; the rest are listed as left out. Both models then run on
    one random input and must agree: the spec's outputs with SOURCE's, or with the output of the
    SOURCE module each output stands for (c3 from layer2: SOURCE's layer2).

    With --reinit (e.g. a 10-class head: --reinit fc), those layers are initialised by the spec's init:
    and everything else is imported; verification then compares the input of the first reinitialised
    layer (the features) with SOURCE's, and says what it could not verify.
    """
    def body():
        from ..weights import import_file
        report = import_file(source, spec, output, pretrained, weights_file, seed, reinit)
        for line in import_lines(output, report):
            click.echo(line)
    run(body)


def import_lines(output: str, r: dict) -> list[str]:
    """What import-weights prints: what it wrote, how it verified, what it reinitialised or left out."""
    diff, at = r["max_abs_diff"], r.get("verified_at")
    verified = "not verified: no output could be compared" if diff is None else \
        f"verified: largest output difference {diff:.2g}" if not r.get("reinit") else \
        f"verified before the reinitialised layers: largest difference {diff:.2g}" + \
        (f" between the inputs of {at['ours']} and {r['source']}'s {at['theirs']}" if at else "")
    lines = [f"wrote {output}: {r['tensors']} tensors, {r['params']:,} parameters from {r['source']} "
             f"({r['origin']}); {verified}"]
    lines += reinit_lines(r)
    compared = r["compared"]
    if compared and set(compared.values()) != {""}:   # not just the one output against theirs
        shown = [f"{name} with {m}" if m else f"{name} not compared (no one module computes it)"
                 for name, m in compared.items()]
        lines.append(f"outputs compared with {r['source']}'s modules, on one input of "
                     + "x".join(map(str, r["shape"])) + ": " + ", ".join(shown))
    if r["left_out"]:   # the head of a classifier imported into a backbone
        listed = [f"{k} {v}" for k, v in list(r["left_out"].items())[:4]]
        n = len(r["left_out"])
        lines.append(f"left out {n} tensor{'s' * (n != 1)} of {r['source']} that the spec has no place for: "
                     + ", ".join(listed) + (", ..." if n > 4 else ""))
    if r["unused"]:   # e.g. an auxiliary classifier that only runs in training
        n, first = len(r["unused"]), ", ".join(r["unused"][:3])
        lines.append(f"left out {n} tensors of {r['source']} that its eval-mode forward does not use: {first}"
                     + (", ..." if n > 3 else ""))
    return lines


def reinit_lines(r: dict) -> list[str]:
    """The layers --reinit initialised (with the source's tensors they replace), and what no
    comparison covered."""
    fresh = r.get("reinit") or {}
    if not fresh:
        return []
    names = ",".join(dict.fromkeys(v["by"] for v in fresh.values()))
    shown = [f"{key} {v['shape']}" + ("" if v["their_shape"] == v["shape"] else
                                       f" ({r['source']} has none at its place)" if v["theirs"] is None else
                                       f" ({r['source']}'s {v['theirs']} is {v['their_shape']})")
             for key, v in list(fresh.items())[:4]]
    n, same = len(fresh), sum(v["their_shape"] == v["shape"] for v in fresh.values())
    fits = ("" if not same else f"; it fits {r['source']}'s tensor at its place, reinitialised anyway" if n == 1 else
            f"; {same} of them fit{'s' * (same == 1)} {r['source']}'s tensor at their place, reinitialised anyway")
    lines = [f"initialised {n} tensor{'s' * (n != 1)} by the spec's init: (--reinit {names}) instead of importing: "
             + ", ".join(shown) + (", ..." if n > 4 else "") + fits + "; not verified at those layers"]
    if r.get("unverified"):
        k, first = len(r["unverified"]), ", ".join(r["unverified"][:3])
        lines.append(f"not verified by outputs: {k} imported tensor{'s' * (k != 1)} that act only after the "
                     f"reinitialised layers (paired by structure alone): {first}" + (", ..." if k > 3 else ""))
    return lines


@click.command("eval")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False), help="A .safetensors checkpoint.")
@click.option("--data", required=True, help="'digits' or an ImageFolder-style folder.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--val-split", type=FiniteFloat(0.0, 0.9), default=0.2, show_default=True)
@click.option("--split-seed", "seed", type=int, default=0, show_default=True, help="The seed of the train/val split.")
@var_option()
def eval_cmd(spec, weights, data, split, val_split, seed):
    """Accuracy and loss of SPEC with WEIGHTS on DATA (the held-out split by default)."""
    def body():
        from ..training.evaluate import evaluate_spec
        r = evaluate_spec(spec, weights, data, split, val_split, seed)
        click.echo(f"{r['name']} on {r['source']} ({r['split']}, {r['samples']} samples): accuracy {r['accuracy']:.4f}, "
                   f"loss {r['loss']:.4f}")
    run(body)


COMMANDS = (init_cmd, import_weights_cmd, eval_cmd)
