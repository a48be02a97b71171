"""A compiled folder -> a Triton Inference Server model repository.

    REPO/<name>/config.pbtxt     Triton's ModelConfig, text format
    REPO/<name>/labels.txt       the class names, one a line (output label_filename), where the folder has labels
    REPO/<name>/N/               the version (--version N; default: the next free one, the others left in place): by platform
        onnxruntime   model.onnx (with external data: model.onnx/{model.onnx, model.onnx.data})  "onnxruntime_onnx"
        tensorrt      model.smXY.plan (model.engine, as is)                 platform "tensorrt_plan", cc_model_filenames
        python        model.py + artifact/ (the compiled folder, whole)     backend "python": resgraph.runtime in Triton

Every input and output is listed by name, in spec order, with its dims without the batch dimension
(max_batch_size > 0 makes it implicit), as Triton wants; a dim that a size variable sets (an input's
H, an output's ceil(H / 4)) is -1, any length. A
TensorRT plan runs only on the GPUs and TensorRT it was built for: cc_model_filenames names it
under its compute capability (the default file name left absent, so another GPU finds nothing to
load), and max_batch_size is its profile's MAX. Triton's onnxruntime and tensorrt backends add
dynamic batching themselves unless the server runs with --disable-auto-complete-config.

An int8 folder: the onnxruntime platform serves its model.onnx (Q/DQ, uint8 activations: ONNX
Runtime's CPU integer kernels, which the accuracy gate measured), on CPU instances unless --kind gpu
asks otherwise; the tensorrt platform serves the engine built from model.s8.onnx; the python platform
carries the folder whole (its back ends read the file each reads, Manifest.onnx_file).

The model folder is published as a compiled folder is (publish.Stage, layout MODEL): written in full
beside the repository, then put in place whole, or, where the model folder holds other versions or
files of its own, entry by entry (version 1, labels.txt, config.pbtxt last), leaving the others as
they are. A half-written model is never loaded by a server polling the repository, and nothing but
models is ever in it.

The config may also carry a version_policy (--version-policy), a warm-up sample (model_warmup, on by
default: zero data of the model's own input shape and dtype), the onnxruntime platform's TensorRT
accelerator (--accelerator tensorrt) and, with --with-preprocess, two more model folders: a Python
step that decodes encoded images and an ensemble that feeds it to the model (ensemble.py). Every
config is parsed by Triton's own ModelConfig before anything is written (sections.py: the pieces).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass

from ..errors import ArtifactError, OptionError
from ..fileio import link_or_copy
from ..manifest import ARTIFACTS, folder_of, read_manifest
from ..publish import Layout, Stage, wait_for_cleanup
from .sections import (DTYPES, Accelerator, ModelFolder, accelerator_text, check_policy, dims_of, parse_policy,
                       policy_text, q as _q, tensors as _tensors, warmup_text)

PLATFORMS = ("onnxruntime", "tensorrt", "python")
# a model's name: a folder of the repository and a segment of Triton's URLs (/v2/models/NAME), so
# letters, digits, '_', '-' and '.', not starting with '.' or '-'; every spec name (the manifest's) fits
NAME_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_HINT = "letters, digits, '_', '-' and '.', at most 128, not starting with '.' or '-'"
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
ACCELERATORS = ("tensorrt",)
MAX_VERSION = 2**63 - 1     # Triton's versions are int64


def model_layout(version: int) -> Layout:
    """A model folder of the repository, as the publisher writes it: the version, then its labels,
    then the config that describes them last (what a polling server reads first)."""
    return Layout((str(version), "labels.txt", "config.pbtxt"), folders=frozenset({str(version)}))


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: requests are queued up to max_queue_delay_us and run together."""
    max_queue_delay_us: int = 100
    preferred: tuple[int, ...] = ()


@dataclass(frozen=True)
class TritonOptions:
    platform: str = "onnxruntime"
    name: str | None = None                 # default: the model's name
    max_batch: int | None = None            # default: 32 (tensorrt: the engine profile's MAX)
    instances: int = 1
    kind: str = "auto"                      # auto | cpu | gpu (tensorrt: gpu)
    batching: Batching | None = Batching()  # None: no dynamic batching
    backend: str = "auto"                   # python platform: the resgraph back end model.py opens
    version: int | None = None              # default: the next free version of the model folder
    version_policy: str | None = None       # latest:K | all | specific:A,B (default: Triton's, latest 1)
    warmup: str = "zero"                    # zero | random | none: model_warmup's sample
    accelerator: Accelerator | None = None  # onnxruntime platform: TensorRT execution provider
    with_preprocess: bool = False           # + <name>_preprocess and <name>_ensemble: encoded images in


def export_triton(artifact: str, repo: str, o: TritonOptions, force: bool = False) -> str:
    """Write REPO/<name>/ (version o.version, else the next free one) for the compiled folder
    `artifact`, and with o.with_preprocess its preprocess step and ensemble beside it; returns the
    model's path. Where a model folder holds other versions, a config that would serve them
    differently (another platform, batch size, input or output) is refused unless `force`. Every
    check runs before anything is written."""
    folder = folder_of(artifact)
    m = read_manifest(folder)
    _check_options(o)
    policy = parse_policy(o.version_policy)
    name = model_name(o.name, m.name, folder)
    kind, extra, files, max_batch = _platform(folder, m, o)
    if max_batch is None:
        max_batch = 32
    if max_batch < 1:
        raise OptionError.at("--max-batch", f"{max_batch}", "one or more: Triton batches along the first dimension")
    for src in files.values():
        if not os.path.isfile(src):
            raise ArtifactError.at(src, "missing from the compiled folder", "recompile: resgraph compile SPEC -o FOLDER")
    models = [ModelFolder(name, _config(name, m, o, kind, extra, max_batch), files, labels=tuple(m.labels or ()))]
    if o.platform == "python":
        models[0].files.update(_python_files(folder, m))
        models[0].package["model.py"] = os.path.join(os.path.dirname(__file__), "model.py")
    if o.with_preprocess:
        from .ensemble import folders
        models += folders(name, folder, m, max_batch, o.instances)
    primary = next(iter(files.values()), os.path.join(folder, "model.onnx"))   # the model file itself
    version = o.version if o.version is not None else \
        default_version(os.path.join(repo, name), primary, [os.path.join(repo, x.name) for x in models])
    check_policy(policy, set(versions_in(os.path.join(repo, name))) | {version})
    for x in models:
        if not NAME_RULE.fullmatch(x.name):
            raise OptionError.at("--name", f"'{x.name}' (a model of the ensemble) cannot name a Triton model", NAME_HINT)
        parsed = _check_config(x.config, x.name)
        if not force:
            _check_other_versions(os.path.join(repo, x.name), x.config, parsed, version)

    os.makedirs(repo, exist_ok=True)
    paths = [_publish(repo, x, version) for x in models]   # the ensemble last: it names the others
    wait_for_cleanup()   # a replaced export is deleted before returning: nothing left beside the repository
    return paths[0]


def _check_options(o: TritonOptions) -> None:
    if o.platform not in PLATFORMS:
        raise OptionError.at("--platform", f"unknown platform '{o.platform}'", " | ".join(PLATFORMS))
    if o.instances < 1:
        raise OptionError.at("--instances", f"{o.instances} instances", "one or more")
    if o.kind not in KINDS:
        raise OptionError.at("--kind", f"unknown instance kind '{o.kind}'", " | ".join(KINDS))
    if o.version is not None and not 1 <= o.version <= MAX_VERSION:
        raise OptionError.at("--version", f"version {o.version}", "a whole number from 1 (Triton's versions)")
    if o.accelerator is not None and o.platform != "onnxruntime":
        raise OptionError.at("--accelerator", f"the {o.platform} platform has no execution accelerators",
                             "--platform onnxruntime (a TensorRT plan is TensorRT already)")


def versions_in(folder: str) -> list[int]:
    """The versions a model folder holds (its sub-folders named by a number), ascending."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(e.name) for e in os.scandir(folder)
                  if e.name.isdigit() and e.name.isascii() and e.is_dir(follow_symlinks=False))


# where a version folder holds the model file, by platform (a plan: model.smXY.plan, found by name)
MODEL_FILES = ("model.onnx", "model.onnx/model.onnx", "artifact/model.onnx")


def default_version(folder: str, primary: str, folders: list[str]) -> int:
    """The version an export without --version writes: the newest version of the model folder that
    holds this very model (its model file byte for byte `primary`: a re-export with other settings
    replaces it), else one above the newest version any of `folders` holds (1 for none: the model,
    its preprocess step and its ensemble keep one number)."""
    import filecmp
    for v in reversed(versions_in(folder)):
        here = os.path.join(folder, str(v))
        plans = [e.name for e in os.scandir(here) if e.name.startswith("model.sm") and e.name.endswith(".plan")]
        for rel in (*MODEL_FILES, *plans):
            path = os.path.join(here, rel)
            if os.path.isfile(path) and os.path.getsize(path) == os.path.getsize(primary) \
                    and filecmp.cmp(path, primary, shallow=False):
                return v
    return max((v for f in folders for v in versions_in(f)), default=0) + 1


def _publish(repo: str, x: ModelFolder, version: int) -> str:
    """One model folder, staged beside the repository (not in it: a server polling the repository
    would try to load it) unless the repository is a filesystem of its own (a mount point, where only
    a rename inside works), then published; returns its path."""
    parent = os.path.dirname(os.path.abspath(repo))
    side = parent if os.stat(parent).st_dev == os.stat(repo).st_dev else repo
    v = str(version)
    stage = Stage(os.path.join(repo, x.name), model_layout(version), stage_in=side)
    try:
        os.makedirs(stage.file(v), exist_ok=True)
        for dst, src in x.files.items():
            link_or_copy(src, stage.file(f"{v}/{dst}"))
        for dst, src in x.package.items():   # resgraph's own files: copied, never linked
            shutil.copyfile(src, stage.file(f"{v}/{dst}"))
        if x.labels:
            with open(stage.file("labels.txt"), "w", encoding="utf-8") as f:
                f.write("".join(f"{label}\n" for label in x.labels))
        with open(stage.file("config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(x.config)
        final = stage.publish()
    finally:
        stage.close()
    return os.path.dirname(final["config.pbtxt"])


def _platform(folder: str, m, o: TritonOptions) -> tuple[str, list[str], dict[str, str], int | None]:
    """What the platform puts in the model folder: (instance kind, its config lines, the version's files
    as {path in the version folder: source}, max_batch_size where the platform fixes it)."""
    kind, extra, files = o.kind, [], {}
    max_batch = o.max_batch
    if o.platform == "tensorrt":
        from ..backends.tensorrt.engine_json import read_engine_info
        info = read_engine_info(folder)           # ArtifactError naming the fix when there is no engine
        profile = info.options.batch
        if max_batch is None:
            max_batch = profile.max
        if max_batch > profile.max:
            raise OptionError.at("--max-batch", f"{max_batch} is beyond the engine's batch profile {profile}",
                                 f"--max-batch {profile.max} or less, or rebuild: resgraph engine build {folder} "
                                 f"--batch {profile.min}:{profile.opt}:{max_batch}")
        if profile.min > 1:
            raise ArtifactError.at(os.path.join(folder, "engine.json"), f"the engine's profile {profile} does not "
                                   f"take batches of 1 to {max_batch}, which Triton sends",
                                   f"rebuild with --batch 1:{profile.opt}:{profile.max}")
        if kind == "cpu":
            raise OptionError.at("--kind", "a TensorRT plan runs on GPUs", "--kind gpu (or auto)")
        kind = "gpu"
        # named after its compute capability, and the default file name left absent: on a GPU of
        # another capability Triton finds no file to load ("unable to find"), rather than falling
        # back to a plan TensorRT then refuses inside the server
        plan = f"model.sm{info.compute_capability.replace('.', '')}.plan"
        extra.append(f'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'
                     f'cc_model_filenames [{{ key: {_q(info.compute_capability)} value: {_q(plan)} }}]')
        files[plan] = os.path.join(folder, "model.engine")
    elif o.platform == "onnxruntime":
        extra.append('platform: "onnxruntime_onnx"')
        # the TensorRT accelerator runs on GPU instances, and an int8 folder's TensorRT encoding
        # (model.s8.onnx, zero point 0); otherwise an int8 folder's uint8 Q/DQ model.onnx is made for
        # ONNX Runtime's CPU kernels
        source = m.onnx_file("ort-trt" if o.accelerator else "ort-cpu")
        if o.accelerator is not None:
            if kind == "cpu":
                raise OptionError.at("--kind", "the TensorRT accelerator runs on GPU instances", "--kind gpu (or auto)")
            kind = "gpu"
        elif m.precision == "int8" and kind == "auto":
            kind = "cpu"
        if m.external_data:   # a model of several files is a folder named model.onnx (Triton's layout)
            files["model.onnx/model.onnx"] = os.path.join(folder, source)
            files[f"model.onnx/{m.external_data}"] = os.path.join(folder, m.external_data)
        else:
            files["model.onnx"] = os.path.join(folder, source)
    else:
        extra.append('backend: "python"')
        extra.append(f'parameters [{{ key: "resgraph_backend" value: {{ string_value: {_q(o.backend)} }} }}]')
    return kind, extra, files, max_batch


def _config(name: str, m, o: TritonOptions, kind: str, extra: list[str], max_batch: int) -> str:
    """config.pbtxt's text (Triton's ModelConfig, text format)."""
    lines = [f"name: {_q(name)}", *extra, f"max_batch_size: {max_batch}",
             _tensors("input", [_tensor(t) for t in m.inputs]),
             _tensors("output", [_tensor(t, bool(m.labels) and i == 0) for i, t in enumerate(m.outputs)]),
             f"instance_group [{{ kind: {KINDS[kind]} count: {o.instances} }}]",
             *policy_text(parse_policy(o.version_policy)), *warmup_text(m, o.warmup),
             *accelerator_text(o.accelerator, m.precision == "int8")]
    if o.batching is not None:
        b = o.batching
        preferred = f"preferred_batch_size: [{', '.join(map(str, b.preferred))}] " if b.preferred else ""
        if any(p < 1 or p > max_batch for p in b.preferred):
            raise OptionError.at("--preferred-batch", f"{list(b.preferred)} must lie in 1..{max_batch}",
                                 "sizes Triton may form")
        lines.append(f"dynamic_batching {{ {preferred}max_queue_delay_microseconds: {b.max_queue_delay_us} }}")
    return "\n".join(lines) + "\n"


def _tensor(t, labelled: bool = False) -> str:
    """One input or output of the config: its name, its data_type (TYPE_UINT8 for raw pixels) and its dims without the batch, -1 for
    a dynamic one (a size variable, or an output dim derived from one: Triton takes any length there,
    the model's valid sizes are checked by the runtime and serve's front). The labels are the first
    output's (a classifier's vector, as run reads them)."""
    if t.dtype not in DTYPES:
        raise ArtifactError.at("manifest.json", f"{t.name} has dtype {t.dtype!r}, which no compile writes",
                               "recompile: resgraph compile SPEC")
    label = ' label_filename: "labels.txt"' if labelled else ""
    return f"{{ name: {_q(t.name)} data_type: {DTYPES[t.dtype]} dims: [{dims_of(t)}]{label} }}"


def model_name(given: str | None, manifest_name: str, folder: str) -> str:
    """The model's name in the repository: `given` (--name), else the manifest's. Either follows
    NAME_RULE: it names a folder of the repository and a path of Triton's HTTP API
    (/v2/models/NAME/infer), so nothing that needs quoting in either."""
    name = given if given is not None else manifest_name
    if isinstance(name, str) and NAME_RULE.fullmatch(name):
        return name
    shown = repr(name)[1:-1] if isinstance(name, str) else repr(name)
    if given is not None:
        raise OptionError.at("--name", f"'{shown}' cannot name a Triton model", NAME_HINT)
    raise ArtifactError.at(os.path.join(folder, "manifest.json"), f"the manifest's name '{shown}' cannot name a "
                           "Triton model", f"give one with --name ({NAME_HINT})")


def _parser():
    """(protobuf's text_format, Triton's ModelConfig) from tritonclient, or None without it."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return text_format, model_config_pb2.ModelConfig


def _check_config(config: str, name: str):
    """config.pbtxt through Triton's own ModelConfig parser (tritonclient's protobuf), before anything
    is written: a config Triton would refuse is never exported. Returns the parsed config; None without
    tritonclient, where the check is left to the server."""
    parser = _parser()
    if parser is None:
        return None
    text_format, ModelConfig = parser
    try:
        return text_format.Parse(config, ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError.at(name, f"Triton's ModelConfig parser refuses the config resgraph wrote: {e}",
                               "this is a bug in resgraph: report it with the compiled folder's manifest.json") from None


# what every version of a model is served with: a config that changes one of these would serve the
# other versions of the folder as something they are not
SHARED = ("platform", "backend", "max_batch_size", "input", "output")


def _check_other_versions(folder: str, config: str, parsed, version: int = 1) -> None:
    """Refused (naming what differs) where `folder` holds versions other than `version` whose
    config.pbtxt differs from `config` (`parsed`: _check_config's) in what they are served with (SHARED)."""
    versions = [str(v) for v in versions_in(folder) if v != version]
    existing = os.path.join(folder, "config.pbtxt")
    if not versions or not os.path.isfile(existing):
        return
    st = os.stat(existing)
    if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
        differs = ["it is not a regular file of at most 1 MiB"]
    else:
        with open(existing, encoding="utf-8", errors="replace") as f:
            differs = _differences(f.read(), config, parsed)
    if differs:
        raise OptionError.at(existing, f"it serves version{'s' * (len(versions) > 1)} {', '.join(versions)} "
                             f"differently: {'; '.join(differs)}",
                             "export under another --name, or --force to replace the config (those versions "
                             "are then served with the new one)")


def _differences(old: str, new: str, b) -> list[str]:
    """What of SHARED differs between an existing config.pbtxt's text and the new one (`b`: parsed,
    None without tritonclient, where any difference of text counts), in words."""
    if b is None:
        return [] if old == new else ["the config's text (install resgraph[serve] to compare its fields)"]
    text_format, ModelConfig = _parser()
    try:
        a = text_format.Parse(old, ModelConfig())
    except text_format.ParseError as e:
        return [f"Triton cannot parse it ({str(e)[:120]})"]

    def show(v) -> str:
        if isinstance(v, (str, int)):
            return repr(v)
        return "[" + ", ".join(text_format.MessageToString(t, as_one_line=True) for t in v) + "]"
    return [f"{field} {show(getattr(a, field))[:160]} here, {show(getattr(b, field))[:160]} in the new export"
            for field in SHARED if getattr(a, field) != getattr(b, field)]


def _python_files(folder: str, m) -> dict[str, str]:
    """The python platform's version folder: the compiled folder, whole, as artifact/ (model.py, the
    package's, goes beside it), so the repository carries everything it serves."""
    names = [n for n in dict.fromkeys((*m.artifacts, "manifest.json", "spec.yaml"))
             if n in ARTIFACTS and os.path.isfile(os.path.join(folder, n))]
    return {f"artifact/{n}": os.path.join(folder, n) for n in names}
