"""Publishing a folder atomically: a set of entries written in full into a hidden staging folder on
the output's filesystem, which then takes the output folder's place whole (a rename, or an exchange
of the two folders), or, where it cannot (a mount point, `-o .`, other files beside the entries),
entry by entry with the last one (the manifest, Triton's config.pbtxt) last.

The one publisher: `compile` and `engine build` publish compiled folders with it, `export triton`
a model folder of a Triton repository. Each says which entries it publishes (its Layout).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

from .manifest import ARTIFACTS


@dataclass(frozen=True)
class Layout:
    """The entries a published folder may hold, in publishing order (the last goes last: it describes
    the others), and whether an entry is a folder. An entry of the layout that a publish does not carry
    is removed from the output (a model.onnx.data from an earlier compile); anything else there is
    left alone, and makes publishing go entry by entry."""
    entries: tuple[str, ...]
    folders: frozenset[str] = frozenset()


COMPILED = Layout(ARTIFACTS)


# short names: the output's own name may take 255 bytes
STAGING, OLD, NEW = ".resgraph-staging-", ".resgraph-old-", ".resgraph-new-"
# errors that mean "these two folders cannot be exchanged here" (a mount point, another filesystem,
# a filesystem without renameat2's exchange): publish file by file instead
CANNOT_EXCHANGE = {errno.EBUSY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class Stage:
    """A hidden folder on the output's filesystem into which a set of artifacts is written;
    publish() puts it in out's place atomically, close() removes what is left.

    Where: beside `out`, on the mount that holds it, so that publishing is one rename or exchange of
    two folders; or inside `out` where the folder itself cannot be swapped (a mount point: the Docker
    pattern `-v host:/out ... -o /out`, a bind mount of a folder of the same filesystem included; the
    working directory or a folder holding it: `-o .`; a parent on another filesystem), and then
    publish() goes file by file, the manifest last. A rename between two mounts fails (EXDEV) even
    where both show one filesystem, so a place is chosen by its mount, not by its device.

    Concurrent compiles into one folder each stage under a unique name and hold an exclusive lock
    (flock) on their staging folder itself, taken before the folder gets its staging name; the next
    compile anywhere in that folder removes only staging folders whose lock is free (their process
    is gone: killed, crashed), and whichever publishes last wins, with a consistent set."""

    def __init__(self, out: str, layout: Layout = COMPILED, stage_in: str | None = None):
        """`stage_in`: the folder to stage in instead of beside `out`, used where it is on the mount
        that holds out's parent (else beside `out`): a Triton repository's model is staged beside the
        repository, where a polling server does not look."""
        self.out, self.layout = out, layout
        self.target = os.path.realpath(out) if os.path.islink(out) else os.path.abspath(out)
        self.inside = _cannot_swap(self.target)
        where = self.target if self.inside else _beside(self.target, stage_in)
        clean_stale(where)
        if os.path.isdir(self.target):
            clean_stale(self.target)
        self.path, self._lock = _locked_folder(where)
        self.names: list[str] = []

    def file(self, name: str) -> str:
        """The staged path of entry `name`, or of a file inside a folder entry (`1/model.onnx`), which
        publish() will then carry."""
        entry = name.split("/", 1)[0]
        assert entry in self.layout.entries and (entry == name or entry in self.layout.folders), name
        if entry not in self.names:
            self.names.append(entry)
        path = os.path.join(self.path, name)
        if entry != name:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def publish(self) -> dict[str, str]:
        _publish(self.path, self.target, self.names, self.layout, self.inside)
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
    here = mount_of(target)
    return here is None or here != mount_of(os.path.dirname(target))


def _beside(target: str, stage_in: str | None) -> str:
    """Where to stage a folder that will take `target`'s place: `stage_in` where it is on the mount
    that holds target's parent (a rename from another mount fails), else that parent."""
    parent = os.path.dirname(target)
    if stage_in is None:
        return parent
    mount = mount_of(parent)
    return stage_in if mount is not None and mount_of(stage_in) == mount else parent


def mount_of(path: str) -> tuple[str, int] | None:
    """Which mount holds the folder `path`: Linux's mount id (a bind mount has its own, where st_dev
    is its filesystem's, the same as its parent's), else the device; None where it cannot be opened.
    Two folders with the same answer can rename into each other."""
    try:
        fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return _mount_id(fd) or ("st_dev", os.fstat(fd).st_dev)
    finally:
        os.close(fd)


def _mount_id(fd: int) -> tuple[str, int] | None:
    """The mount id of an open file (/proc/self/fdinfo, Linux 3.15+); None without /proc (not Linux,
    a sandbox), where mount_of falls back to the device, which misses bind mounts."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            ids = [line.split()[1] for line in f if line.startswith("mnt_id:")]
        return ("mnt_id", int(ids[0])) if ids else None
    except (OSError, ValueError, IndexError):
        return None


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


def _publish(stage: str, out: str, names: list[str], layout: Layout, inside: bool = False) -> None:
    """Put the staged entries in place of the previous ones, atomically.

    The whole folder at once where possible: `out` absent -> one rename of the staging folder;
    `out` holding nothing but earlier entries of the layout -> one exchange of the two folders, then
    the old one is deleted. Readers then never see a mixed set, and no file is renamed over another,
    which on ext4 (auto_da_alloc) forces the new file's blocks to be allocated and the old one's freed
    on the spot: ~0.1 s per 100 MB file. Otherwise (other files beside the entries, a symlinked
    folder, a mount point, a staging folder inside `out`, a system without exchange) entry by entry,
    the layout's last entry last: each is replaced atomically, and an entry of the layout that this
    publish does not carry (model.onnx.data) is removed after. A crash between two of those renames
    leaves a mixed set that the last entry, replaced last, does not describe (its sha256s tell).
    """
    last = layout.entries[-1]
    assert set(names) <= set(layout.entries) and last in names, names
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        os.chmod(os.path.join(stage, name), (0o777 if name in layout.folders else 0o666) & ~umask)
    if not inside:
        if not os.path.lexists(out):
            os.chmod(stage, 0o777 & ~umask)   # mkdtemp's folder is owner-only
            try:
                os.rename(stage, out)
                return
            except OSError:   # created meanwhile by another publisher: exchange with it below
                pass
        if os.path.isdir(out) and not os.path.islink(out) and all(_ours(e, layout) for e in os.scandir(out)):
            os.chmod(stage, os.stat(out).st_mode & 0o7777)
            if _swap(stage, out):
                old = tempfile.mkdtemp(dir=os.path.dirname(stage), prefix=OLD)
                os.rename(stage, old)   # over its own empty folder: the name says "not being written"
                _delete_later(old)
                return
    os.makedirs(out, exist_ok=True)
    for name in (n for n in layout.entries if n in names):   # the last entry last
        _replace(os.path.join(stage, name), os.path.join(out, name), name in layout.folders)
    for name in (n for n in layout.entries if n not in names):
        with contextlib.suppress(FileNotFoundError):
            if name in layout.folders and os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name))
            else:
                os.unlink(os.path.join(out, name))


def _ours(e: os.DirEntry, layout: Layout) -> bool:
    """An entry of the layout, of its kind (a folder entry a real folder, any other a regular file)."""
    if e.name not in layout.entries:
        return False
    return e.is_dir(follow_symlinks=False) if e.name in layout.folders else e.is_file(follow_symlinks=False)


def _swap(a: str, b: str) -> bool:
    """Exchange two folders in one step; False, having changed nothing, where this system or place
    cannot (a mount point, another filesystem, no renameat2): the caller then goes another way."""
    from .fileio import exchange
    try:
        return exchange(a, b)
    except OSError as e:
        if e.errno not in CANNOT_EXCHANGE:
            raise
        return False


def _replace(src: str, dst: str, folder: bool) -> None:
    """One entry in place of another, atomically: a file by rename; a folder by an exchange (then the
    old one deleted), or, where the system cannot exchange, by moving the old one aside first. Where
    `src` is on another mount than `dst` (one mount_of could not tell apart: no /proc), it is copied
    beside `dst` first and moved from there, each entry still replaced in one step."""
    try:
        _move(src, dst, folder)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _move_across(src, dst, folder)


def _move_across(src: str, dst: str, folder: bool) -> None:
    """`src` copied into a hidden folder beside `dst` (a killed copy is removed as a stale
    .resgraph-new-* by the next publish), then moved into dst's place from there."""
    near = tempfile.mkdtemp(dir=os.path.dirname(dst), prefix=NEW)
    try:
        copy = os.path.join(near, "x")
        if folder:
            shutil.copytree(src, copy, symlinks=True)
        else:
            shutil.copy2(src, copy)
        _move(copy, dst, folder)
    finally:
        shutil.rmtree(near, ignore_errors=True)


def _move(src: str, dst: str, folder: bool) -> None:
    """`src` in `dst`'s place by rename, exchange, or the old one moved aside first (see _replace)."""
    if not folder or not os.path.isdir(dst) or os.path.islink(dst):
        if folder and os.path.lexists(dst):
            os.unlink(dst)
        os.replace(src, dst)
        return
    if _swap(src, dst):
        shutil.rmtree(src, ignore_errors=True)   # now the previous entry
        return
    aside = tempfile.mkdtemp(dir=os.path.dirname(dst), prefix=OLD)
    os.rename(dst, os.path.join(aside, "x"))
    try:
        os.rename(src, dst)
    except OSError:
        os.rename(os.path.join(aside, "x"), dst)   # the previous entry back in place
        os.rmdir(aside)
        raise
    _delete_later(aside)


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
