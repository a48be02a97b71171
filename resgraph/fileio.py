"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash or Ctrl-C mid-write leaves the previous file intact and no partial file behind; the new
file gets the permissions a plain open() would give it (mkstemp's are owner-only).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import Callable

from .errors import PathError


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call write(tmp_path), then rename tmp_path over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".resgraph-", suffix=suffix)
    except OSError as e:   # named after the file the caller asked for, not the temporary one
        raise OSError(e.errno, e.strerror, path) from None
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (tmp, None):
            raise OSError(e.errno, e.strerror, path) from None
        raise


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE).

    Returns False, having changed nothing, where the system or the filesystem cannot (not Linux,
    glibc < 2.28, a filesystem without exchange); raises OSError for a real failure.
    """
    import ctypes
    import errno
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


# what the system's error means for the user, and what to do about it
ERRNO_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EROFS: "a read-only filesystem: write elsewhere",
    errno.EACCES: "no permission here: write elsewhere, or check the folder's owner and mode",
    errno.EPERM: "not permitted here: write elsewhere, or check the folder's owner and mode",
    errno.ENAMETOOLONG: "a file name is longer than the filesystem allows (255 bytes a name): a shorter name, or -o",
    errno.ENOENT: "a folder on the way does not exist (or is not a real folder, as under /proc)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder: give a file",
    errno.EIO: "an I/O error: the disk or the network filesystem failed",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the filesystem allows",
}


def os_error(e: OSError, where: str | None = None, doing: str = "", after: str = "") -> PathError:
    """An OSError the environment caused (full disk, read-only filesystem, permissions, a name too
    long) as a PathError naming the path, with what to do: these are not resgraph's bugs. `doing`
    prefixes the message ("cannot write"), `after` extends the hint."""
    path = where or e.filename or "resgraph"
    name = errno.errorcode.get(e.errno or 0, "")
    what = f"{e.strerror or e}" + (f" ({name})" if name else "")
    return PathError.at(str(path), f"{doing}: {what}" if doing else what,
                        ERRNO_HINTS.get(e.errno, "check the path and the filesystem") + after)


def check_regular(path: str, what: str = "checkpoint",
                  missing_hint: str = "check the path") -> None:
    """Refuse what is not a regular file before anything opens it: a FIFO would block forever, a
    device or socket read as garbage. `what` names the file in the messages (weights, checkpoint...).
    A PathError: what is wrong is the path, not the file's content."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PathError.at(path, f"no such {what} file", missing_hint) from None
    except OSError as e:
        raise PathError.at(path, f"cannot read the {what}: {e.strerror}", "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise PathError.at(path, f"the {what} path is a folder", "give a .safetensors file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else \
            "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise PathError.at(path, f"the {what} is {kind}, not a regular file",
                           "give a .safetensors file (copy a streamed checkpoint to disk first)")


def link_or_copy(src: str, dst: str) -> None:
    """A hard link where the filesystem allows one (no bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil
        shutil.copyfile(src, dst)
