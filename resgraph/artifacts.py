"""The compiled folder: its typed manifest, and how a set of artifacts is published atomically.

    compiled/<name>/
        manifest.json          Manifest.to_json(): what the folder holds and how to feed the model
        spec.yaml              the spec, byte for byte (its sha256 is the manifest's spec_sha256)
        model.onnx             (+ model.onnx.data with external data)
        weights.safetensors    the checkpoint (unfolded): the torch back end and parity read it

One home for the manifest, shared by `compile` (writes it), the runtime (reads only this folder,
never the user's spec or the IR) and the engine builder. Standard library only: a deployment
that runs model.onnx imports neither torch nor the front end.

Publishing (Stage.publish): every artifact is written in full into a hidden staging folder on the
output's filesystem, which then takes the output folder's place whole (a rename, or an exchange of
the two folders), or, where it cannot (a mount point, `-o .`), file by file with the manifest last.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field

from .errors import ArtifactError, PathError  # noqa: F401  (ArtifactError: re-exported, it lived here)

FORMAT = 1   # manifest.json's format; bump on any change a reader must know about
# every file a compiled folder may hold, in publishing order: the manifest, which describes the
# others, goes last
ARTIFACTS = ("weights.safetensors", "spec.yaml", "model.onnx.data", "model.onnx", "model.engine", "engine.json",
             "manifest.json")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple          # ("batch", C, H, W) or ("batch", F)
    dtype: str = "float32"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: without the batch dimension."""
        return tuple(self.shape[1:])


@dataclass(frozen=True)
class Artifact:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. `preprocess` is resolved: every key present, defaults filled in."""
    name: str
    resgraph_version: str
    spec_sha256: str
    spec_source: str               # the path compile read the spec from
    trained: bool
    weights_source: str
    precision: str                 # fp32 | fp16 (of model.onnx; its input and output are fp32)
    opset: int
    folded: bool
    input: TensorInfo
    output: TensorInfo
    preprocess: dict
    labels: tuple[str, ...] | None
    params: int
    macs: int                      # per sample
    projections: tuple = ()
    external_data: str | None = None
    artifacts: dict = field(default_factory=dict)   # file name -> Artifact
    format: int = FORMAT
    spec: str = "spec.yaml"

    def to_json(self) -> dict:
        d = asdict(self)
        d["input"]["shape"] = list(self.input.shape)
        d["output"]["shape"] = list(self.output.shape)
        d["labels"] = list(self.labels) if self.labels is not None else None
        d["projections"] = list(self.projections)
        order = ("format", "resgraph_version", "name", "spec", "spec_source", "spec_sha256", "trained",
                 "weights_source", "precision", "opset", "folded", "external_data", "input", "output",
                 "preprocess", "labels", "params", "macs", "projections", "artifacts")
        assert set(order) == set(d), set(order) ^ set(d)
        return {k: d[k] for k in order}

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest.json") -> "Manifest":
        """Read a manifest; one from another format is refused with what to do about it."""
        from . import __version__
        if not isinstance(d, dict):
            raise ArtifactError.at(where, "not a resgraph manifest (not a JSON object)", "recompile: resgraph compile SPEC")
        fmt = d.get("format")
        made_by = d.get("resgraph_version", "an unknown version")
        if fmt is None:
            raise ArtifactError.at(where, f"compiled by resgraph {made_by}, before manifests had a format "
                                   f"(this resgraph {__version__} reads format {FORMAT})",
                                   "recompile the spec with this resgraph: resgraph compile SPEC --weights W -o FOLDER")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
            raise ArtifactError.at(where, f"manifest format {fmt!r} from resgraph {made_by} is newer than this "
                                   f"resgraph {__version__} reads (format {FORMAT})",
                                   "upgrade resgraph (pip install -U resgraph), or recompile with this version")
        if fmt < FORMAT:   # no older numbered format exists yet; readers of format 1 start here
            raise ArtifactError.at(where, f"manifest format {fmt} is no longer read", "recompile with this resgraph")
        try:
            return cls(
                name=str(d["name"]), resgraph_version=str(d["resgraph_version"]), spec_sha256=str(d["spec_sha256"]),
                spec_source=str(d["spec_source"]), trained=bool(d["trained"]), weights_source=str(d["weights_source"]),
                precision=str(d["precision"]), opset=int(d["opset"]), folded=bool(d["folded"]),
                input=TensorInfo(str(d["input"]["name"]), tuple(d["input"]["shape"]), str(d["input"]["dtype"])),
                output=TensorInfo(str(d["output"]["name"]), tuple(d["output"]["shape"]), str(d["output"]["dtype"])),
                preprocess=dict(d["preprocess"]),
                labels=tuple(str(x) for x in d["labels"]) if d["labels"] is not None else None,
                params=int(d["params"]), macs=int(d["macs"]), projections=tuple(d["projections"]),
                external_data=d["external_data"], format=fmt, spec=str(d["spec"]),
                artifacts={str(k): Artifact(str(v["sha256"]), int(v["bytes"])) for k, v in d["artifacts"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError.at(where, f"a damaged manifest: {type(e).__name__}: {e}",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER") from None


def folder_of(artifact: str) -> str:
    """The compiled folder for a path to it or to a file in it (its model.onnx, say)."""
    if os.path.isdir(artifact):
        return artifact
    if os.path.isfile(artifact) and os.path.isfile(os.path.join(os.path.dirname(artifact) or ".", "manifest.json")):
        return os.path.dirname(artifact) or "."
    if not os.path.exists(artifact):
        raise PathError.at(artifact, "no such compiled folder or file",
                           "compile a spec first: resgraph compile SPEC -o FOLDER, then pass FOLDER")
    raise ArtifactError.at(artifact, "not a compiled folder: no manifest.json beside it",
                           "pass the folder resgraph compile wrote (compiled/NAME), or a model.onnx inside it")


def read_manifest(folder: str) -> Manifest:
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ArtifactError.at(folder, "not a compiled folder: no manifest.json",
                               "pass the folder resgraph compile wrote (compiled/NAME)") from None
    except OSError as e:   # no permission, a failing disk: the path, not the manifest
        raise PathError.at(path, f"cannot read the manifest: {e.strerror or e}",
                           "check the path and its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError.at(path, f"unreadable manifest: {e}", "recompile: resgraph compile SPEC -o FOLDER") from None
    return Manifest.from_json(d, path)


def read_spec(folder: str, manifest: Manifest) -> tuple[str, bytes]:
    """(path, bytes) of the spec compiled into `folder`, which must be the one the manifest hashed:
    a spec.yaml edited after compiling would describe another network than model.onnx."""
    import hashlib
    path = os.path.join(folder, manifest.spec)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ArtifactError.at(path, f"cannot read the folder's spec: {e.strerror}",
                               "recompile: resgraph compile SPEC --weights W -o FOLDER") from None
    if hashlib.sha256(raw).hexdigest() != manifest.spec_sha256:
        raise ArtifactError.at(path, "spec.yaml was changed after compiling (its sha256 is not the manifest's)",
                               "recompile the spec you mean: resgraph compile SPEC --weights W -o FOLDER")
    return path, raw


def write_manifest(path: str, manifest: Manifest) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")


def sha256_file(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_artifacts(folder: str, manifest: Manifest) -> dict[str, str]:
    """The artifacts that are not the files compile wrote: name -> their sha256 now ('missing' if gone)."""
    changed = {}
    for name, a in manifest.artifacts.items():
        try:
            digest = sha256_file(os.path.join(folder, name))
        except OSError:
            changed[name] = "missing"
            continue
        if digest != a.sha256:
            changed[name] = digest
    return changed


# --- publishing ----------------------------------------------------------------------------------

# short names: the output's own name may take 255 bytes
STAGING, OLD, NEW = ".resgraph-staging-", ".resgraph-old-", ".resgraph-new-"
# errors that mean "these two folders cannot be exchanged here" (a mount point, another filesystem,
# a filesystem without renameat2's exchange): publish file by file instead
CANNOT_EXCHANGE = {errno.EBUSY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class Stage:
    """A hidden folder on the output's filesystem into which a set of artifacts is written;
    publish() puts it in out's place atomically, close() removes what is left.

    Where: beside `out`, so that publishing is one rename or exchange of two folders; or inside
    `out` where the folder itself cannot be swapped (a mount point: the Docker pattern `-v
    host:/out ... -o /out`; the working directory or a folder holding it: `-o .`; a parent on
    another filesystem), and then publish() goes file by file, the manifest last.

    Concurrent compiles into one folder each stage under a unique name and hold an exclusive lock
    (flock) on their staging folder itself, taken before the folder gets its staging name; the next
    compile anywhere in that folder removes only staging folders whose lock is free (their process
    is gone: killed, crashed), and whichever publishes last wins, with a consistent set."""

    def __init__(self, out: str):
        self.out = out
        self.target = os.path.realpath(out) if os.path.islink(out) else os.path.abspath(out)
        self.inside = _cannot_swap(self.target)
        where = self.target if self.inside else os.path.dirname(self.target)
        clean_stale(where)
        if os.path.isdir(self.target):
            clean_stale(self.target)
        self.path, self._lock = _locked_folder(where)
        self.names: list[str] = []

    def file(self, name: str) -> str:
        """The staged path of artifact `name` (which publish() will then carry)."""
        assert name in ARTIFACTS, name
        if name not in self.names:
            self.names.append(name)
        return os.path.join(self.path, name)

    def publish(self) -> dict[str, str]:
        _publish(self.path, self.target, self.names, self.inside)
        return {name: os.path.join(self.out, name) for name in self.names}

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)      # releases the lock (on whatever the folder has become)
            self._lock = None


def _cannot_swap(target: str) -> bool:
    """True where `target` exists but cannot be renamed or exchanged with a folder beside it."""
    if not os.path.isdir(target):
        return False
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    if os.path.ismount(target) or (cwd and os.path.commonpath([cwd, target]) == target):
        return True
    try:
        return os.stat(target).st_dev != os.stat(os.path.dirname(target)).st_dev
    except OSError:
        return True


def _locked_folder(where: str) -> tuple[str, int]:
    """A new staging folder in `where`, locked by this process before any cleaner can see it: made
    under a name cleaners ignore (.resgraph-new-*), locked, then renamed to its staging name (the
    lock stays with the folder)."""
    import fcntl
    new = tempfile.mkdtemp(dir=where, prefix=NEW)
    fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = os.path.join(where, STAGING + os.path.basename(new)[len(NEW):])
        os.rename(new, path)
    except BaseException:
        os.close(fd)
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path, fd


def clean_stale(folder: str) -> None:
    """Remove what killed or crashed compiles left in `folder`: staging folders whose lock no live
    process holds, replaced sets (.resgraph-old-*) that were not deleted, and folders a process died
    in the middle of creating (.resgraph-new-*, after a minute)."""
    import fcntl
    import time
    wait_for_cleanup()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if not e.name.startswith((STAGING, OLD, NEW)) or not e.is_dir(follow_symlinks=False):
            continue
        if e.name.startswith(STAGING):
            try:
                fd = os.open(e.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue                  # gone meanwhile: published or cleaned
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                  # a live compile's: leave it
            finally:
                os.close(fd)
        elif e.name.startswith(NEW):
            with contextlib.suppress(OSError):
                if time.time() - e.stat(follow_symlinks=False).st_mtime < 60:
                    continue
        shutil.rmtree(e.path, ignore_errors=True)


def _publish(stage: str, out: str, names: list[str], inside: bool = False) -> None:
    """Put the staged artifacts in place of the previous ones, atomically.

    The whole folder at once where possible: `out` absent -> one rename of the staging folder;
    `out` holding nothing but earlier artifacts -> one exchange of the two folders, then the old one
    is deleted. Readers then never see a mixed set, and no file is renamed over another, which on
    ext4 (auto_da_alloc) forces the new file's blocks to be allocated and the old one's freed on the
    spot: ~0.1 s per 100 MB file. Otherwise (other files beside the artifacts, a symlinked folder, a
    mount point, a staging folder inside `out`, a system without exchange) file by file, the
    manifest last: each file is replaced atomically, and an artifact of the previous compile that
    this one does not make (model.onnx.data) is removed after. A crash between two of those renames
    leaves a mixed set that the manifest, replaced last, does not describe (its sha256s tell).
    """
    from .fileio import exchange
    assert set(names) <= set(ARTIFACTS) and "manifest.json" in names, names
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        os.chmod(os.path.join(stage, name), 0o666 & ~umask)
    if not inside:
        if not os.path.lexists(out):
            os.chmod(stage, 0o777 & ~umask)   # mkdtemp's folder is owner-only
            try:
                os.rename(stage, out)
                return
            except OSError:   # created meanwhile by another publisher: exchange with it below
                pass
        if os.path.isdir(out) and not os.path.islink(out) and \
                all(e.name in ARTIFACTS and e.is_file(follow_symlinks=False) for e in os.scandir(out)):
            os.chmod(stage, os.stat(out).st_mode & 0o7777)
            try:
                swapped = exchange(stage, out)
            except OSError as e:
                if e.errno not in CANNOT_EXCHANGE:
                    raise
                swapped = False
            if swapped:
                old = tempfile.mkdtemp(dir=os.path.dirname(stage), prefix=OLD)
                os.rename(stage, old)   # over its own empty folder: the name says "not being written"
                _delete_later(old)
                return
    os.makedirs(out, exist_ok=True)
    for name in (n for n in ARTIFACTS if n in names):   # the manifest last
        os.replace(os.path.join(stage, name), os.path.join(out, name))
    for name in (n for n in ARTIFACTS if n not in names):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, name))


_deleting: list[threading.Thread] = []


def _delete_later(folder: str) -> None:
    """Delete the replaced artifacts in a background thread: freeing 200 MB of blocks (with online
    discard) takes 15-70 ms that the caller need not wait for. Not a daemon: the interpreter joins
    it at exit, so a `resgraph compile` process leaves nothing behind; `wait_for_cleanup()` joins it
    on demand, and a stale `.old-` folder (a killed process) is removed by the next compile."""
    t = threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                         name="resgraph-delete-old")
    t.start()
    _deleting.append(t)


def wait_for_cleanup() -> None:
    """Until every replaced artifact set has been deleted."""
    while _deleting:
        _deleting.pop().join()
