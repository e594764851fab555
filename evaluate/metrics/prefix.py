"""Each row's first places in the ranking's total order, found without sorting the row.

Conventions are those of :mod:`.ranking`: decreasing similarity, equal similarities by increasing
gallery index, ``-inf`` for an item outside the query's gallery, -0.0 equal to 0.0. For a block of
similarities [n, m] and the number of places the metrics read (``need``):

1. each row gets a threshold at most its need-th largest finite value, read from a fixed sample of
   its columns with a margin (:func:`thresholds`); a row the sample misjudged (fewer candidates than
   it needs) gets the exact value from a partition of that row;
2. every finite value at least its row's threshold is a candidate: the candidates are exactly the
   row's first places, since whatever is more similar is a candidate too;
3. the candidates are sorted by one 64-bit key each, the similarity's bits ordered downwards above
   the gallery index, so that equal similarities come by increasing index: the total order itself,
   with no separate step for ties.

The cost is one comparison and one extraction per similarity, then a sort of a little more than
the places needed (the margin: two standard deviations of the sample's count; about one row in
forty is found again from its exact threshold).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_SAMPLE = 1024  # sampled columns per row for the thresholds
_SPREAD = 2.0  # margin of a sampled threshold, in standard deviations of the sample's count
_SMALLEST = np.float32(-np.finfo(np.float32).max)  # the lowest threshold: every finite value
_PAST_EVERY_KEY = 0x7FF0000000000000  # padding after every key of :func:`_in_order` (+inf as float64)


@lru_cache(maxsize=16)
def _sample(m: int) -> np.ndarray:
    """``_SAMPLE`` of the m column indices, ascending, the same on every call (a fixed seed: spread
    over the row whatever period the gallery's order has)."""
    return np.sort(np.random.default_rng(m).choice(m, _SAMPLE, replace=False))


def outside(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """(finite [n]: entries of each row in its query's gallery, i.e. above ``-inf``; relevant [n]:
    entries outside it that have the query's label), both int64, for ``similarity`` [n, m]
    (C-contiguous). ValueError when a similarity is NaN (no place in any order)."""
    n, m = similarity.shape
    flat = np.flatnonzero(~(similarity > -np.inf))
    if len(flat) and np.isnan(similarity.reshape(-1)[flat]).any():
        raise ValueError("a similarity is NaN: the embeddings must be finite (L2-normalised rows)")
    rows, cols = np.divmod(flat, m)
    relevant = gallery_labels[cols] == query_labels[rows]
    return m - np.bincount(rows, minlength=n), np.bincount(rows[relevant], minlength=n)


def thresholds(similarity: np.ndarray, need: int) -> np.ndarray:
    """float32 [n]: per row of ``similarity`` [n, m] a value at most its ``need``-th largest (1 <=
    need <= m), never below the lowest finite float32, so that its values at least the threshold
    are its first places. Exact (a partition) for short rows or a deep need; otherwise from
    :func:`_sample` with a margin, which may, rarely, set it above the need-th largest."""
    m = similarity.shape[1]
    if m <= 4 * _SAMPLE or 4 * need > m:
        found = np.partition(similarity, m - need, axis=1)[:, m - need]
    else:
        share = need * _SAMPLE / m  # the sample's expected count at or above the need-th largest
        j = min(_SAMPLE, max(1, int(np.ceil(share + _SPREAD * np.sqrt(share))) + 1))
        found = np.partition(similarity.take(_sample(m), axis=1), _SAMPLE - j, axis=1)[:, _SAMPLE - j]
    return np.maximum(found, _SMALLEST)


def _candidates(similarity: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the values at least their row's ``threshold`` [n], ascending; bounds
    int64 [n + 1]: row r's are ``flat[bounds[r]:bounds[r + 1]]``)."""
    n, m = similarity.shape
    flat = np.flatnonzero(similarity >= threshold[:, None])
    return flat, np.searchsorted(flat, np.arange(n + 1) * m)


def _descending_keys(bits: np.ndarray) -> np.ndarray:
    """uint32 keys of finite float32 values given as their int32 ``bits`` (overwritten), ascending as
    the values descend, -0.0 equal to 0.0: 0x7FFFFFFF - bits for a value >= +0.0, bits - 1 (as
    uint32: at least 0x7FFFFFFF) for one <= -0.0. Below 0xFF800000, so a key shifted left by 31
    bits is a finite float64's bits."""
    negative = bits < 0
    np.subtract(np.int32(0x7FFFFFFF), bits, out=bits, where=~negative)
    np.subtract(bits, np.int32(1), out=bits, where=negative)
    return bits.view(np.uint32)


def ordered_prefix(similarity: np.ndarray, need: int, finite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first places in the total order.

    Parameters
    ----------
    similarity : float32 [n, m], C-contiguous; ``-inf`` outside a query's gallery, no NaN.
    need : places wanted per row, 1 <= need <= m.
    finite : int [n], each row's entries above ``-inf`` (:func:`outside`).

    Returns
    -------
    (ranked int64 [n, L]: the gallery index at place p of row r is ``ranked[r, p - 1]``, meaningful
    for p <= ``length[r]``, padding beyond; length int64 [n], at least min(need, finite) for each row:
    all of a row's places down to its threshold, ties at the threshold included).
    """
    m = similarity.shape[1]
    flat, bounds = _candidates(similarity, thresholds(similarity, need))
    ranked, length = _in_order(similarity, flat, bounds)
    short = np.flatnonzero(length < np.minimum(need, finite))
    if len(short):  # the sample put these rows' thresholds too high: their exact need-th largest
        rows = similarity[short]
        again, again_length = _in_order(rows, *_candidates(rows, np.maximum(
            np.partition(rows, m - need, axis=1)[:, m - need], _SMALLEST)))
        width = max(ranked.shape[1], again.shape[1])
        ranked = np.pad(ranked, ((0, 0), (0, width - ranked.shape[1])))
        ranked[short] = np.pad(again, ((0, 0), (0, width - again.shape[1])))
        length[short] = again_length
    return ranked, length


def _in_order(similarity: np.ndarray, flat: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates ``flat`` (rows between ``bounds``, :func:`_candidates`) of each row in the total
    order, padded: (ranked int64 [n, L], length int64 [n]) as :func:`ordered_prefix` returns them.
    float32 rows sort one 63-bit key per candidate (the value's bits ordered downwards, then the flat
    index); other dtypes, or blocks of 2^31 similarities or more, a lexsort."""
    n, m = similarity.shape
    length = np.diff(bounds)
    width = int(length.max(initial=0))
    filled = np.arange(width) < length[:, None]  # row-major, as the candidates come
    offsets = (np.arange(n, dtype=np.int64) * m)[:, None]
    if similarity.dtype != np.float32 or n * m >= 2**31:
        rows = np.repeat(np.arange(n, dtype=np.int64), length)
        order = np.lexsort((flat, -similarity.reshape(-1)[flat], rows))  # rows stay in place
        ranked = np.zeros((n, width), np.int64)
        ranked[filled] = flat[order]
        return np.where(filled, ranked - offsets, 0), length
    keys = _descending_keys(similarity.reshape(-1).view(np.int32).take(flat)).astype(np.int64)
    keys <<= 31
    keys |= flat
    ranked = np.full((n, width), _PAST_EVERY_KEY, np.int64)
    ranked[filled] = keys
    ranked.view(np.float64).sort(axis=1)  # keys below 2^62 with a finite float64's bits: the same order, sorted faster
    ranked &= 0x7FFFFFFF
    ranked -= offsets
    return ranked, length
