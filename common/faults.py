"""Deterministic crash points for the fault tests: ``DPCOMPAT_KILL_AT=NAME[:N]`` makes the process
SIGKILL itself the N-th time (default 1) it reaches ``fault_point(NAME)``. Unset, a point costs one
dictionary look-up. The names are listed where each point is placed (``grep -rn fault_point``).
"""
from __future__ import annotations

import os
import signal

ENV = "DPCOMPAT_KILL_AT"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``DPCOMPAT_KILL_AT`` names this point (and this is its N-th hit)."""
    target = os.environ.get(ENV)
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
