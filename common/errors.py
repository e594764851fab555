"""The one exception type that the command line turns into a one-line message and exit code 2, and
how messages show names that come from data."""
from __future__ import annotations

import os


class InputError(Exception):
    """Bad input from the user (a missing, corrupt or mismatched file, an impossible option).

    The message must name the file or option and say what is wrong, in one line.
    """


def shown(name: object) -> str:
    """``name`` (a path, a file or item name) as a message embeds it: unchanged when every character is
    printable, else quoted as Python's ``repr`` writes it, so a control character (a newline, an
    escape sequence, a bidirectional override, an undecodable byte) can neither split the one-line
    message nor pass for text of its own: ``bad\\nerror: x.png`` is shown as ``'bad\\nerror: x.png'``."""
    text = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    return text if text.isprintable() else repr(text)
