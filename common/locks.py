"""Advisory file locks (``fcntl.flock``) that serialise writers and keep readers off a folder swap.

A lock file is hidden beside what it guards and is never deleted (deleting a lock file another
process waits on would let a third one take a second, independent lock). The kernel releases a
lock when its holder exits, killed or not.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional


@contextmanager
def locked(lock_file: str | os.PathLike, *, shared: bool = False,
           waiting: Optional[Callable[[], None]] = None) -> Iterator[bool]:
    """Hold ``lock_file`` exclusively (or ``shared``) for the block; yields whether a lock is held.

    ``waiting()`` is called once if another process holds it first. A shared lock that cannot be
    created (a read-only store, a folder that does not exist) is skipped: yields False.
    """
    lock_file = Path(lock_file)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if not shared:
            raise
        try:
            fd = os.open(lock_file, os.O_RDONLY)
        except OSError:
            yield False
            return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, mode)
        yield True
    finally:
        os.close(fd)  # releases the lock
