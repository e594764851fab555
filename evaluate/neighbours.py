"""Top-k cosine neighbours of every row of one set among the rows of another, streamed in blocks.

The similarity of a block of ``BLOCK_ROWS`` left rows with a block of ``BLOCK_COLUMNS`` right rows is
the only matrix held, so working memory is about 4 * BLOCK_ROWS * (BLOCK_COLUMNS + 2k) bytes
(32 MiB at the defaults) whatever N and M are; an N x M matrix never exists.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

BLOCK_ROWS = 1024
BLOCK_COLUMNS = 8192


_SEED_COLUMNS = 512  # the k-th best of these bounds the block's k-th best from below


def _merge(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k of each row after seeing block ``s`` [R, C] (columns ``start`` ..): decreasing
    similarity, equal similarities to the lower column index.

    Only entries at or above a lower bound of each row's k-th best are sorted: the current k-th best,
    or before there are k, the k-th best of the block's first columns. On data without structure
    that is a few entries per row instead of C.
    """
    rows = len(s)
    if best_s.shape[1] == k:
        floor = best_s[:, -1:]
    else:
        seed = s[:, :max(k, _SEED_COLUMNS)]
        kk = min(k, seed.shape[1])
        floor = np.partition(seed, seed.shape[1] - kk, axis=1)[:, seed.shape[1] - kk][:, None]
    r, c = np.nonzero(s >= floor)
    cand_r = np.concatenate([np.repeat(np.arange(rows), best_s.shape[1]), r])
    cand_i = np.concatenate([best_i.ravel(), c + start])
    cand_s = np.concatenate([best_s.ravel(), s[r, c]])
    order = np.lexsort((cand_i, -cand_s, cand_r))
    counts = np.bincount(cand_r, minlength=rows)
    keep = min(k, best_s.shape[1] + s.shape[1])
    take = (np.cumsum(counts) - counts)[:, None] + np.arange(keep)
    return cand_s[order][take], cand_i[order][take]


def top_k_neighbours(left: np.ndarray, right: np.ndarray, *, k: int, exclude_self: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar right rows of every left row, by dot product (cosine for unit rows).

    Parameters
    ----------
    left : float32 [N, D]; right : float32 [M, D] (memory-mapped arrays are read block by block).
    k : neighbours kept per left row (at most M, or M - 1 with ``exclude_self``).
    exclude_self : left and right are the same set; row i is not its own neighbour.
    progress : called with (left rows done, N) after each block of rows.

    Returns
    -------
    (similarity float32 [N, k], index int64 [N, k]): per row by decreasing similarity, equal
    similarities in increasing right index.
    """
    n, m = len(left), len(right)
    if not 1 <= k <= m - exclude_self:
        raise ValueError(f"k = {k}: must be between 1 and {m - exclude_self}, the neighbours available")
    sims = np.empty((n, k), np.float32)
    index = np.empty((n, k), np.int64)
    for r0 in range(0, n, BLOCK_ROWS):
        rows = np.asarray(left[r0:r0 + BLOCK_ROWS], np.float32)
        best_s, best_i = np.empty((len(rows), 0), np.float32), np.empty((len(rows), 0), np.int64)
        for c0 in range(0, m, BLOCK_COLUMNS):
            s = rows @ np.asarray(right[c0:c0 + BLOCK_COLUMNS], np.float32).T
            if exclude_self:
                own = np.arange(r0, r0 + len(rows))
                hit = (own >= c0) & (own < c0 + s.shape[1])
                s[np.flatnonzero(hit), own[hit] - c0] = -np.inf
            best_s, best_i = _merge(best_s, best_i, s, c0, k)
        sims[r0:r0 + len(rows)], index[r0:r0 + len(rows)] = best_s, best_i
        if progress:
            progress(r0 + len(rows), n)
    return sims, index
