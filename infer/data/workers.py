"""Feed the model: decode and preprocess images in worker processes, in order, a bounded number of
batches ahead, while the model runs in the main process.

:func:`batch_source` yields :class:`Batch` objects (float32 model inputs with the dataset rows they
hold) in dataset order. ``workers`` 0 or 1 decodes in the calling process (one background thread,
so the next batch decodes while the model runs); 2 or more uses that many processes. Both paths run
the same :func:`load_batch`, so their batches are identical bit for bit, unreadable images included
(an error at the first one in order, or with ``skip_bad`` left out and named).

Worker processes start with ``fork`` on Linux and ``spawn`` elsewhere; ``spawn`` and ``forkserver``
work too: a fresh interpreter cannot unpickle our functions before the package is importable, and a
checkout is registered as ``dpcompat`` by checkout.py rather than found on ``sys.path``, so such a
worker's initializer is ``runpy.run_path(checkout.py)`` (standard library), which registers the
package and then calls :func:`init_worker_from_bytes` by module name.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import pickle
import runpy
import signal
import sys
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ...common.errors import InputError
from .base import Dataset
from ..runtime.metadata import Preprocessing
from ..runtime.options import MAX_WORKERS
from .preprocess import preprocess_batch

START_METHODS = ("fork", "forkserver", "spawn")
_CHECKOUT = Path(__file__).resolve().parents[2] / "checkout.py"
_STATE: Optional[tuple[Dataset, Preprocessing, bool]] = None  # a worker's dataset, transform, skip_bad


@dataclass
class Batch:
    """One batch of model inputs.

    ``start``: the first dataset row the batch covers; ``rows``: int64 [B], the dataset rows of the
    images kept, ascending; ``images``: float32 [B, 3, S, S]; ``skipped``: item names of unreadable
    images left out (``skip_bad``). ``size`` = B + len(skipped) rows of the dataset are covered.
    """

    start: int
    rows: np.ndarray
    images: np.ndarray
    skipped: list[str]

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.skipped)


@dataclass
class Embedded:
    """A batch's raw model outputs: ``rows`` int64 [B] (dataset rows, ascending), ``embeddings``
    float32 [B, D], ``prompt_index`` int64 [B] or [B, top_k], ``skipped`` item names left out, from
    the batch that starts at dataset row ``start``; ``provider`` that ran it (None: the caller's)."""

    start: int
    rows: np.ndarray
    embeddings: np.ndarray
    prompt_index: np.ndarray
    skipped: list[str]
    provider: Optional[str] = None

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.skipped)


def load_batch(dataset: Dataset, start: int, stop: int, spec: Preprocessing, *, skip_bad: bool = False) -> Batch:
    """Rows ``start``..``stop - 1`` of ``dataset`` decoded and preprocessed with ``spec``.

    An unreadable image raises InputError naming it, or with ``skip_bad`` is left out and named in
    ``skipped``.
    """
    images, rows, skipped = [], [], []
    for i in range(start, stop):
        try:
            images.append(dataset.image(i))
        except InputError:
            if not skip_bad:
                raise
            skipped.append(dataset.item_name(i))
            continue
        rows.append(i)
    return Batch(start, np.asarray(rows, np.int64), preprocess_batch(images, spec), skipped)


def default_start_method() -> str:
    """``fork`` on Linux (cheap, the dataset is inherited), ``spawn`` elsewhere (macOS, Windows)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def batch_bounds(start: int, stop: int, batch_size: int, align: Optional[int] = None) -> list[tuple[int, int]]:
    """Row ranges [s, e) of at most ``batch_size`` rows covering [start, stop); with ``align`` no range
    crosses a multiple of ``align`` (a store shard boundary), so every shard ends with a batch."""
    bounds, s = [], start
    while s < stop:
        e = min(s + batch_size, stop)
        if align:
            e = min(e, (s // align + 1) * align)
        bounds.append((s, e))
        s = e
    return bounds


def batch_source(dataset: Dataset, spec: Preprocessing, *, batch_size: int = 64, workers: Optional[int] = None,
                 skip_bad: bool = False, start: int = 0, align: Optional[int] = None, prefetch: Optional[int] = None,
                 start_method: Optional[str] = None) -> Iterator[Batch]:
    """Batches of ``batch_size`` dataset rows from row ``start`` on, in order (see the module doc);
    ``align``: see :func:`batch_bounds`.

    ``workers``: decoding processes at most (default: the usable cores; 0 or 1: in this process); only
    as many start as there are batches, so a two-batch run forks two, not every core's worth.
    ``prefetch``: batches decoded ahead of the consumer (default 2 per worker, 1 in-process), which
    bounds memory to about ``prefetch`` batches. The options are checked here, before any work.
    Closing the iterator (or an error, or Ctrl-C, in the consumer) stops the workers: queued batches
    are cancelled and the processes exit after their current batch.
    """
    if workers is None:
        from ..runtime.session import usable_cores  # onnxruntime is not needed by the workers themselves

        workers = usable_cores()
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not 0 <= workers <= MAX_WORKERS:
        raise InputError(f"--workers {workers}: must be from 0 to {MAX_WORKERS} (0 or 1: decode in this process)")
    if prefetch is not None and prefetch < 1:
        raise InputError(f"prefetch {prefetch}: must be at least 1")
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise InputError(f"start method {method!r}: expected one of {', '.join(START_METHODS)}")
    if not 0 <= start <= len(dataset):
        raise InputError(f"start row {start}: the data set has {len(dataset)} rows")
    bounds = batch_bounds(start, len(dataset), batch_size, align)
    state = (dataset, spec, skip_bad)
    workers = min(workers, len(bounds))
    if workers <= 1:
        return _ordered(lambda: ThreadPoolExecutor(1), lambda pool, b: pool.submit(load_batch, dataset, *b, spec,
                                                                                   skip_bad=skip_bad), bounds, prefetch or 1)
    return _ordered(lambda: _process_pool(workers, state, method), lambda pool, b: pool.submit(_work, *b),
                    bounds, prefetch or 2 * workers)


def _ordered(make_pool: Callable[[], Executor], submit: Callable[[Executor, tuple[int, int]], Future],
             bounds: list[tuple[int, int]], ahead: int) -> Iterator[Batch]:
    """Results of ``submit`` over ``bounds`` in order, at most ``ahead`` of them pending at a time."""
    if not bounds:
        return
    pool = make_pool()
    pending: deque[Future] = deque()
    try:
        for b in bounds:
            if len(pending) == ahead:
                yield pending.popleft().result()
            pending.append(submit(pool, b))
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_PR_SET_PDEATHSIG = 1


def _process_pool(workers: int, state: tuple, method: str) -> ProcessPoolExecutor:
    context = multiprocessing.get_context(method)
    if method == "fork":  # the child inherits the state and the imported package: nothing is pickled
        return ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(state,))
    then = {"then": (__name__, "init_worker_from_bytes", (pickle.dumps(state),))}
    return ProcessPoolExecutor(workers, mp_context=context, initializer=runpy.run_path,
                               initargs=(str(_CHECKOUT), then, "__dpcompat_worker__"))


def init_worker(state: tuple[Dataset, Preprocessing, bool]) -> None:
    """A worker process's set-up: keep the dataset and transform; leave Ctrl-C to the main process,
    which stops the pool (a worker killed mid-batch would only turn it into a broken pool)."""
    global _STATE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _STATE = state


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the main process dies. A main process killed outright cannot
    stop its pool, and its workers would otherwise wait forever on a queue nobody closes (holding the
    caller's stdout and stderr open)."""
    if not sys.platform.startswith("linux"):
        return
    try:  # a forkserver's worker is tied to the forkserver, which exits with the main process
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return


def init_worker_from_bytes(state: bytes) -> None:
    """:func:`init_worker` for a spawned worker, its state pickled (unpickled once the package exists)."""
    init_worker(pickle.loads(state))


def _work(start: int, stop: int) -> Batch:
    dataset, spec, skip_bad = _STATE
    return load_batch(dataset, start, stop, spec, skip_bad=skip_bad)
