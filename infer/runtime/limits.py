"""Bounds on what running a model may take, and the one line when onnxruntime refuses a run.

Every session of a process allocates host memory from one CPU arena capped at
:func:`session_memory_limit`: a graph that expands a tensor beyond it at run time fails on that
allocation (one error line), never by exhausting the host. Which file a session came from is kept
here, so a failed run names it.
"""
from __future__ import annotations

import functools
import os
import re
import weakref

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ...common.errors import InputError

ORT_ERRORS = (_ort_state.Fail, _ort_state.InvalidArgument, _ort_state.InvalidProtobuf, _ort_state.InvalidGraph,
              _ort_state.NoSuchFile, _ort_state.RuntimeException, _ort_state.NotImplemented)
MAX_SESSION_MEMORY = 32 * 2**30  # bytes of host memory all sessions of a process may hold together


def session_memory_limit() -> int:
    """The host memory onnxruntime's CPU allocator may hold in this process, all sessions together:
    MAX_SESSION_MEMORY, or three quarters of the physical memory where that is less. A graph that
    asks for more at run time (a tensor expanded to 64 GiB) fails on that allocation with one error
    line instead of exhausting the host; a ViT-B export needs about 1.5 GiB at batch 64."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    return min(MAX_SESSION_MEMORY, physical * 3 // 4) if physical > 0 else MAX_SESSION_MEMORY


@functools.lru_cache(maxsize=None)
def _capped_cpu_allocator() -> int:
    """Register, once per process, the shared CPU arena bounded by :func:`session_memory_limit`."""
    limit = session_memory_limit()
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": limit}))
    return limit


def cap_cpu_memory(options: ort.SessionOptions) -> None:
    """Make a session opened with ``options`` allocate from the process's capped CPU arena."""
    _capped_cpu_allocator()
    options.add_session_config_entry("session.use_env_allocators", "1")


_SOURCES: "weakref.WeakKeyDictionary[ort.InferenceSession, str]" = weakref.WeakKeyDictionary()


def remember(session: ort.InferenceSession, where: str) -> None:
    """Note that ``session`` was opened from ``where`` (a file as messages show it)."""
    _SOURCES[session] = where


def quiet_run() -> ort.RunOptions:
    """Run options that keep onnxruntime's own log of a failed run off stderr: :func:`run_failure`
    turns the failure into the one line the user sees."""
    options = ort.RunOptions()
    options.log_severity_level = 4  # fatal only
    return options


_REQUESTED = re.compile(r"requested (?:bytes of|buffer of size) (\d+)")


def run_failure(session: ort.InferenceSession, error: Exception) -> InputError:
    """One line for a model run that onnxruntime refused (an allocation beyond
    :func:`session_memory_limit`, a shape the graph cannot take), naming the model's file."""
    where = _SOURCES.get(session, "model")
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    asked = _REQUESTED.search(str(error))
    if asked or "allocate memory" in text:
        size = f" {int(asked.group(1)) / 2**30:.1f} GiB" if asked else ""
        return InputError(f"{where}: running it asks for{size} more memory than the limit of "
                          f"{session_memory_limit() / 2**30:.1f} GiB for onnxruntime in one process; a smaller "
                          "--batch-size helps a genuine export, a graph that expands tensors beyond it is refused")
    return InputError(f"{where}: onnxruntime failed running it ({text[:300]})")
