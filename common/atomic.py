"""Write files and folders so that an interrupted run never leaves a half-written result behind.

Temporary names are ``.<name>.<host>-<pid>.<random>.tmp`` beside the result: the next write of the
same result on the same host removes those whose process is gone (a killed run's leftovers). A
folder is replaced by two renames under the lock ``.<name>.lock`` (the previous folder goes to
``.<name>.old`` in between); :func:`recover_swap` undoes a swap cut short by a kill, so a valid
result never stays only under the hidden ``.old`` name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .faults import fault_point
from .locks import locked


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _owner() -> str:
    return f"{re.sub(r'[^A-Za-z0-9-]', '_', socket.gethostname())[:64]}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders of ``path`` left by dead processes of this host."""
    path = Path(path)
    host = _owner().rsplit("-", 1)[0]
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(host)}-(\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and not _alive(int(m.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:200]}.{_owner()}."  # a temporary name stays under NAME_MAX


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be as readable as any other file
    try:
        yield tmp
        fault_point("atomic_file.before_rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def swap_lock(path: str | os.PathLike) -> Path:
    """The lock file held exclusively while the folder ``path`` is replaced (readers hold it shared)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def recover_swap(path: str | os.PathLike) -> None:
    """Finish or undo a replacement of the folder ``path`` cut short by a kill (call under its swap lock)."""
    path = Path(path)
    old = old_path(path)
    if not old.exists():
        return
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, path)


def swap_dir(new: Path, path: Path) -> None:
    """Replace the folder ``path`` by the complete folder ``new`` (call under ``swap_lock(path)``)."""
    recover_swap(path)
    if not path.exists():
        os.replace(new, path)
        return
    old = old_path(path)
    os.replace(path, old)
    fault_point("swap.between_renames")
    os.replace(new, path)
    fault_point("swap.before_cleanup")
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        with locked(swap_lock(path)):
            swap_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns the path.

    NaN and infinities are refused (``ValueError``): a bare ``NaN`` is not JSON."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


# ---- a folder replaced as a whole (reports): what is under its name is always one complete run's ----

_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot exchange
        return False
    raise OSError(error, os.strerror(error), str(b))


def _tidy(path: Path) -> None:
    """Undo what a killed run left beside ``path``: restore a folder it had only moved aside (the
    two-rename fallback) and remove the temporary folders of runs that are no longer alive."""
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replaced_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it takes the place of
    ``path`` in one atomic exchange, so a reader (or a kill at any moment) sees either the previous
    complete folder or the new complete one, never a mix. Where the exchange is unavailable two
    renames are used and the next run restores a folder left only under its ``.old`` name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _tidy(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange: the previous folder
