"""Each row's first places in the ranking's total order, found without sorting the row.

Conventions are those of :mod:`.ranking`: decreasing similarity, equal similarities by increasing
gallery index, ``-inf`` for an item outside the query's gallery, -0.0 equal to 0.0. For a block of
similarities [n, m] and the number of places the metrics read (``need``):

1. each row gets a threshold at most its need-th largest finite value, read from a sample of its
   columns (one of a few fixed ones, in turn) with a margin (:func:`thresholds`); a row the sample
   misjudged (fewer candidates than it needs) gets the exact value from a partition of that row;
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

import itertools
from functools import lru_cache

import numpy as np

_SAMPLE = 1024  # sampled columns per row for the thresholds
_SAMPLES = 16  # samples drawn per gallery size, taken in turn by the blocks
_SPREAD = 2.0  # margin of a sampled threshold, in standard deviations of the sample's count
_SMALLEST = np.float32(-np.finfo(np.float32).max)  # the lowest threshold: every finite value
_PAST_EVERY_KEY = 0x7FF0000000000000  # padding after every key of :func:`_in_order` (+inf as float64)
_draws = itertools.count()  # which sample the next block takes


@lru_cache(maxsize=4 * _SAMPLES)
def _sample(m: int, draw: int) -> np.ndarray:
    """``_SAMPLE`` of the m column indices, ascending, spread over the row whatever period the
    gallery's order has; ``draw`` (0 to ``_SAMPLES`` - 1) picks one of a few fixed samples. Blocks
    take them in turn: a sample that holds many items of one label misjudges that label's queries
    (their first places crowd the sample), and one sample for every block would misjudge them all."""
    return np.sort(np.random.default_rng((m, draw)).choice(m, _SAMPLE, replace=False))


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
    are its first places. Exact (a partition) for short rows; otherwise from a :func:`_sample` with a
    margin, which may, rarely, set it above the need-th largest; the lowest when the margin reaches
    the whole sample."""
    n, m = similarity.shape
    if m <= 4 * _SAMPLE:
        return np.maximum(np.partition(similarity, m - need, axis=1)[:, m - need], _SMALLEST)
    share = need * _SAMPLE / m  # the sample's expected count at or above the need-th largest
    j = int(np.ceil(share + _SPREAD * np.sqrt(share))) + 1
    if j >= _SAMPLE:
        return np.full(n, _SMALLEST)
    sample = similarity.take(_sample(m, next(_draws) % _SAMPLES), axis=1)
    return np.maximum(np.partition(sample, _SAMPLE - j, axis=1)[:, _SAMPLE - j], _SMALLEST)


def _candidates(similarity: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the values at least their row's ``threshold`` [n], ascending; bounds
    int64 [n + 1]: row r's are ``flat[bounds[r]:bounds[r + 1]]``)."""
    n, m = similarity.shape
    flat = np.flatnonzero(similarity >= threshold[:, None])
    return flat, np.searchsorted(flat, np.arange(n + 1) * m)


def _descending_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys of finite float32 ``values`` (a copy: overwritten), ascending as the values
    descend, -0.0 equal to 0.0: 0x7FFFFFFF - bits for a value >= +0.0 (its bits flipped but the
    sign's), the bits themselves (at least 0x80000000) for one below. Below 0xFF800000, so a key
    shifted left by 31 bits is a finite float64's bits."""
    values += np.float32(0)  # -0.0 becomes 0.0
    bits = values.view(np.int32)
    flip = bits >> 31  # 0 for a value >= 0, all ones below
    np.invert(flip, out=flip)
    flip &= 0x7FFFFFFF
    bits ^= flip
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
    length = np.diff(bounds)
    short = np.flatnonzero(length < np.minimum(need, finite))
    ranked = _in_order(similarity, flat, length)
    if len(short):  # the sample put these rows' thresholds too high: their exact need-th largest
        rows = similarity[short]
        exact = np.maximum(np.partition(rows, m - need, axis=1)[:, m - need], _SMALLEST)
        again, again_bounds = _candidates(rows, exact)
        length[short] = np.diff(again_bounds)
        fixed = _in_order(rows, again, length[short])
        if fixed.shape[1] > ranked.shape[1]:
            ranked = np.pad(ranked, ((0, 0), (0, fixed.shape[1] - ranked.shape[1])))
        ranked[short, :fixed.shape[1]] = fixed
    return ranked, length


def _in_order(similarity: np.ndarray, flat: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The candidates ``flat`` of each row (``length`` [n] of them, row by row: :func:`_candidates`) in
    the total order, padded: ranked int64 [n, L] as :func:`ordered_prefix` returns it. float32 rows
    sort one 63-bit key per candidate (the value's bits ordered downwards, then the flat index);
    other dtypes, or blocks of 2^31 similarities or more, a lexsort."""
    n, m = similarity.shape
    width = int(length.max(initial=0))
    filled = np.arange(width) < length[:, None]  # row-major, as the candidates come
    offsets = (np.arange(n, dtype=np.int64) * m)[:, None]
    if similarity.dtype != np.float32 or n * m >= 2**31:
        rows = np.repeat(np.arange(n, dtype=np.int64), length)
        order = np.lexsort((flat, -similarity.reshape(-1)[flat], rows))  # rows stay in place
        ranked = np.zeros((n, width), np.int64)
        ranked[filled] = flat[order]
        return np.where(filled, ranked - offsets, 0)
    keys = _descending_keys(similarity.reshape(-1).take(flat)).astype(np.int64)
    keys <<= 31
    keys |= flat
    ranked = np.full((n, width), _PAST_EVERY_KEY, np.int64)
    ranked[filled] = keys
    ranked.view(np.float64).sort(axis=1)  # keys below 2^62 with a finite float64's bits: the same order, sorted faster
    ranked &= 0x7FFFFFFF
    ranked -= offsets
    return ranked
