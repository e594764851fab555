"""The nearest items of each query and what is read from them: the top-k in the total order (ties by
increasing gallery index), the kNN majority vote, top-k hits and the CMC curve. Pure numpy."""
from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import as_strided

_TOPK_CHUNK = 128  # columns per chunk when looking for the top-k candidates


def topk_hits(first_hit: np.ndarray, k: int) -> np.ndarray:
    """Whether each query has a relevant item among its first ``k``: bool [Nq] from ``first_hit`` [Nq]."""
    return (first_hit >= 1) & (first_hit <= k)


def cmc_curve(first_hit: np.ndarray, depth: int) -> np.ndarray:
    """Cumulative match characteristic: top-k accuracy for k = 1..depth, float64 [depth].

    ``first_hit`` : int [Nq], 1-based place of each query's first relevant item (0: none)."""
    hits = np.bincount(first_hit[(first_hit >= 1) & (first_hit <= depth)], minlength=depth + 1)[1:]
    return np.cumsum(hits) / len(first_hit)


def topk_indices(similarity: np.ndarray, k: int, kth_value: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the k most similar gallery items of each query, best first.

    Parameters
    ----------
    similarity : float array [Nq, Ng]; ``-inf`` marks items outside a query's gallery.
    k : int, 1 <= k <= number of finite entries of every row.
    kth_value : optional float array [Nq], the k-th largest value of each row when already known
        (saves a partition).

    Returns
    -------
    int64 array [Nq, k]. Ties are broken by increasing gallery index, also at the k-th place.
    """
    n, m = similarity.shape
    if not 1 <= k <= m:
        raise ValueError(f"k={k} must be between 1 and the gallery size {m}")
    if kth_value is None:
        kth_value = np.partition(similarity, m - k, axis=1)[:, m - k]
    # Every item at least as similar as the k-th is a candidate (more than k only when the k-th value
    # is tied). Candidates are looked for only in the chunks of columns whose maximum reaches the k-th
    # value: one cheap max-reduction, then a copy of those few chunks (the last one padded with -inf).
    rows, chunk = np.nonzero(np.maximum.reduceat(similarity, np.arange(0, m, _TOPK_CHUNK), axis=1)
                             >= kth_value[:, None])
    whole = m // _TOPK_CHUNK
    values = np.full((len(rows), _TOPK_CHUNK), -np.inf, similarity.dtype)
    full = chunk < whole
    row_step, column_step = similarity.strides
    chunked = as_strided(similarity, (n, whole, _TOPK_CHUNK), (row_step, column_step * _TOPK_CHUNK, column_step),
                         writeable=False)  # a view: chunk c of row r is similarity[r, c * chunk:(c + 1) * chunk]
    values[full] = chunked[rows[full], chunk[full]]
    values[~full, :m - whole * _TOPK_CHUNK] = similarity[rows[~full], whole * _TOPK_CHUNK:]
    at, offset = np.nonzero(values >= kth_value[rows][:, None])
    rows, cols, found = rows[at], chunk[at] * _TOPK_CHUNK + offset, values[at, offset]
    order = np.lexsort((cols, -found, rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    return cols[rank < k].reshape(n, k).astype(np.int64)


def knn_predict(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row of ranked neighbour labels.

    Parameters
    ----------
    neighbour_labels : int array [Nq, k], labels of the k nearest items, best first.

    Returns
    -------
    int64 array [Nq]. A tie between labels goes to the tied label whose nearest member ranks first.
    """
    votes = (neighbour_labels[:, :, None] == neighbour_labels[:, None, :]).sum(axis=2)  # [Nq, k]: votes for each position's label
    first_best = np.argmax(votes == votes.max(axis=1, keepdims=True), axis=1)  # earliest position with the most votes
    return neighbour_labels[np.arange(len(neighbour_labels)), first_best].astype(np.int64)
