"""Gallery items grouped by label, and the sums of the label metrics: AP@R and R-precision from
each row's first places (:mod:`.prefix`), exact AP over the whole sorted row with scikit-learn's tie
groups. Conventions are those of :mod:`.ranking`.

Every sum is numpy's pairwise sum over the same terms, in the same order and paired the same way,
as in the full sort it replaced (tests/ranking_reference.py), so every number is that one, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class LabelColumns:
    """Gallery items grouped by label: ``labels`` [C], the distinct labels ascending; ``counts`` int64
    [C], items of each; ``order`` int64 [Ng], item indices sorted by label (stable), each label's
    items from ``starts`` [C]; ``padded`` int64 [C, max count], row c the items of label c padded
    with 0, or None when that table would hold more than four times Ng entries (very uneven labels)."""

    labels: np.ndarray
    counts: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    padded: Optional[np.ndarray]

    @classmethod
    def of(cls, gallery_labels: np.ndarray) -> "LabelColumns":
        order = np.argsort(gallery_labels, kind="stable")
        labels, starts, counts = np.unique(gallery_labels[order], return_index=True, return_counts=True)
        width = int(counts.max(initial=0))
        padded = None
        if len(labels) * width <= 4 * len(order):
            padded = np.zeros((len(labels), width), np.int64)
            padded[np.repeat(np.arange(len(labels)), counts), np.arange(len(order)) - np.repeat(starts, counts)] = order
        return cls(labels, counts, order, starts, padded)

    def sizes(self, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of each query's label in ``labels`` [n], gallery items with that label [n]; both 0
        where the gallery has no item of the label)."""
        if not len(self.labels):
            zeros = np.zeros(len(query_labels), np.int64)
            return zeros, zeros
        position = np.minimum(np.searchsorted(self.labels, query_labels), len(self.labels) - 1)
        found = self.labels[position] == query_labels
        return np.where(found, position, 0), np.where(found, self.counts[position], 0)

    def _columns(self, position: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the columns of each row's label [n, W] (W the largest size), ascending, padded; used
        [n, W]: which are not padding), from :meth:`sizes`' ``position`` and ``sizes``."""
        width = int(sizes.max(initial=0))
        used = np.arange(width) < sizes[:, None]
        if self.padded is not None:
            return self.padded[position, :width], used
        return self.order[self.starts[position][:, None] + np.where(used, np.arange(width), 0)], used

    def _values(self, similarity: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, ...]:
        """(similarities of each query's relevant items [n, W], ``-inf`` for padding; their columns and
        which are not padding (:meth:`_columns`); the gallery items with each query's label [n])."""
        position, sizes = self.sizes(query_labels)
        columns, used = self._columns(position, sizes)
        values = np.take_along_axis(similarity, columns, axis=1)
        values[~used] = -np.inf
        return values, columns, used, sizes

    def relevant_values(self, similarity: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities of each query's relevant items, ascending [n, W], ``-inf`` first for masked
        items and padding; the number of gallery items with each query's label [n])."""
        values, _, _, sizes = self._values(similarity, query_labels)
        values.sort(axis=1)
        return values, sizes

    def first_places(self, similarity: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
        """Place of each row's first relevant item in the total order, int64 [n], counted over the
        whole row of ``similarity`` [n, m]; every row must hold a relevant item above ``-inf``."""
        values, columns, used, _ = self._values(similarity, query_labels)
        best = values.max(axis=1, keepdims=True)
        index = np.where(used & (values == best), columns, similarity.shape[1]).min(axis=1, keepdims=True)
        ahead = (similarity > best) | ((similarity == best) & (np.arange(similarity.shape[1]) < index))
        return ahead.sum(axis=1) + 1


def _row_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys of float32 ``x`` [n, w] ordered as the values are within a row and row by row
    (row r's keys all below row r + 1's), -0.0 equal to 0.0: a row-major array of ascending rows
    becomes one ascending array."""
    bits = (x + np.float32(0)).view(np.int32)  # + 0: -0.0 becomes 0.0
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64) + 2**31
    return ordered + (np.arange(len(x), dtype=np.int64) << 32)[:, None]


def count_below(top: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each v of ``values`` [n, W], the number of ``top`` [n, L] values of its row below it
    (< v); both ascending per row. Equal values compare as numpy's sort does (-0.0 equals 0.0).
    float32 rows are searched all at once (:func:`_row_keys`); others row by row."""
    n, length = top.shape
    if top.dtype == np.float32 and values.dtype == np.float32:
        found = np.searchsorted(_row_keys(top).reshape(-1), _row_keys(values))
        return found - (np.arange(n, dtype=np.int64) * length)[:, None]
    out = np.empty(values.shape, np.int64)
    for r in range(n):
        out[r] = np.searchsorted(top[r], values[r])
    return out


def row_sums(terms: np.ndarray, lengths: np.ndarray, *, from_end: bool = False) -> np.ndarray:
    """Sum of each row of ``terms`` [n, W] over its first (``from_end``: last) ``lengths`` [n] entries,
    float64 [n]. Rows of one length are summed together, so each sum is numpy's pairwise sum over an
    array of that length, the same bits as summing the row alone."""
    out = np.zeros(len(terms))
    width = terms.shape[1]
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        columns = slice(width - length, width) if from_end else slice(0, length)
        out[rows] = (terms[:, columns] if len(rows) == len(terms) else terms[rows, columns]).sum(axis=1)
    return out


def hits_at_r(hits: np.ndarray, count: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP@R, R-precision) [n] from ``hits`` [n, L] (bool, column p - 1: the item at place p is
    relevant; each row's first R places at least), R = ``count`` [n] (NaN when 0), ``sizes`` [n]
    the gallery items with the query's label. Terms j / p for the j-th relevant item at place p <= R,
    summed as the full sort's row of ``sizes`` terms (zeros after the last) is summed."""
    n, width = hits.shape
    within = hits & (np.arange(1, width + 1) <= count[:, None])
    so_far = np.cumsum(within, axis=1, dtype=np.int32)  # j: relevant items at places <= p
    found = so_far[:, -1].astype(np.int64) if width else np.zeros(n, np.int64)
    at = np.flatnonzero(within)
    places = at + 1 - np.repeat(np.arange(n, dtype=np.int64) * width, found)
    lengths = pairwise_lengths(sizes, found)
    terms = np.zeros((n, int(lengths.max(initial=0))))
    terms[np.arange(terms.shape[1]) < found[:, None]] = so_far.reshape(-1).take(at) / places  # row by row
    with np.errstate(invalid="ignore", divide="ignore"):
        return row_sums(terms, lengths) / count, found / count


def pairwise_lengths(total: np.ndarray, used: np.ndarray) -> np.ndarray:
    """int64 [n]: for each row of ``total`` [n] float64 terms whose entries from ``used`` [n] on are
    zero, the length of the prefix whose numpy sum equals, bit for bit, that of the whole row: above
    128 entries numpy sums the first half (rounded down to a multiple of 8) and the rest apart and adds
    them, so a half of zeros adds exactly nothing and the sum is the first half's."""
    total = np.array(total, dtype=np.int64)
    while True:
        half = total // 2 - (total // 2) % 8
        shorter = (total > 128) & (used <= half)
        if not shorter.any():
            return total
        total[shorter] = half[shorter]


def sklearn_ap(top: np.ndarray, relevant: np.ndarray, count: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average precision over the whole ranking with scikit-learn's tie groups [n] (NaN: no relevant
    item), from the fully sorted rows ``top`` [n, m] and the ascending ``relevant`` values [n, W]."""
    m, size = top.shape[1], relevant.shape[1]
    below = count_below(top, relevant)  # items less similar than each relevant item
    # #relevant >= a value = size - index of the first of its tied group in the ascending row
    index = np.arange(size)
    new_value = np.ones(relevant.shape, bool)
    new_value[:, 1:] = relevant[:, 1:] != relevant[:, :-1]
    group_start = np.where(new_value, index, 0)
    np.maximum.accumulate(group_start, axis=1, out=group_start)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(relevant > -np.inf, (size - group_start) / (m - below), 0.0)
        return row_sums(terms, sizes, from_end=True) / count
