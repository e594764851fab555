"""Check, before any long work, that a command can write where it was told to.

A folder is probed by creating and removing a small temporary file in it (4 KiB, flushed to disk, so a
full disk shows here and not after an hour of training). Folders created for the probe are removed
again, so a refused run leaves nothing behind.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

_PROBE_BYTES = 4096
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.ENAMETOOLONG: "a name in the path is too long", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTDIR: "a file stands where a folder must go", errno.EISDIR: "a folder stands where a file must go"}


def os_reason(e: OSError) -> str:
    """A short, stable description of why a file operation failed."""
    return _REASONS.get(e.errno, e.strerror or type(e).__name__)


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".dpcompat-probe.", dir=folder)
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a folder this process can write files into; :class:`InputError` naming ``option``
    and the path otherwise (an existing file there or above it, no permission, full disk, a name
    too long). Nothing is left behind: folders made for the probe are removed again."""
    path = Path(path)
    _check_dir(path, f"{option} {path}")
    return path


def _check_dir(path: Path, where: str) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        raise InputError(f"{where}: cannot write there ({path} is a file, a folder is needed)")
    anchor = _existing_ancestor(path.absolute())
    if not os.path.isdir(anchor):
        raise InputError(f"{where}: cannot write there ({anchor} is a file, a folder is needed)")
    missing = [p for p in (path.absolute(), *path.absolute().parents) if p not in (anchor, *anchor.parents)]
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        _probe(path)
    except OSError as e:
        raise InputError(f"{where}: cannot write there ({os_reason(e)})") from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a file this process can (re)write; see :func:`writable_dir` for its folder."""
    path = Path(path)
    if os.path.isdir(path):
        raise InputError(f"{option} {path}: cannot write there (it is a folder, a file name is needed)")
    anchor = _existing_ancestor(path.absolute().parent)
    limit = os.pathconf(anchor, "PC_NAME_MAX") if os.path.isdir(anchor) else 255
    if len(os.fsencode(path.name)) > limit:
        raise InputError(f"{option} {path}: cannot write there (a name in the path is too long: the limit is "
                         f"{limit} bytes)")
    _check_dir(path.parent, f"{option} {path}")
    return path


def require_space(path: str | os.PathLike, nbytes: int, option: str) -> None:
    """:class:`InputError` unless the file system holding ``path`` has ``nbytes`` free."""
    free = shutil.disk_usage(_existing_ancestor(Path(path).absolute())).free
    if nbytes > free:
        raise InputError(f"{option} {path}: needs {nbytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
