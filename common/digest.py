"""sha256 of files, read in chunks."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InputError, shown


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the bytes of ``path``; InputError naming it when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such file") from None
    except OSError as e:
        raise InputError(f"{shown(path)}: cannot read ({e.strerror})") from None
    return h.hexdigest()
