"""Top-R selection: the places of each query's relevant items in its ranking, without sorting its row.

Conventions are those of :mod:`.ranking` (total order: decreasing similarity, equal similarities by
increasing gallery index; ``-inf``: not in the query's gallery). For a block of similarities [n, m]:

* each row's relevant values are gathered by label (:class:`LabelColumns`) and sorted: [n, W], W the
  largest number of gallery items with a query's label, ``-inf`` where an item is masked or padding;
* each row's ``depth + 1`` largest values are selected (``np.partition``, linear) and sorted, depth =
  the deepest place a metric reads (R for AP@R and R-precision, k for the vote, m for exact AP);
* a relevant value v at least the depth-th largest of its row is at place 1 + #(row values > v): the
  count comes from one search of the sorted lists (:func:`count_below`). When
  another item has the same similarity (float32 similarities tie often enough: about one row in ten
  at 10,000 items, and duplicate images always), the tied group takes consecutive places in
  increasing index order, found by one comparison over that row;
* a first relevant item beyond the depth is placed by counting its row's larger values.

Only the sums that the full sort computed are sums here too, over rows of the same length and in the
same order, so every number is the one a full sort gives, bit for bit.
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

    def relevant_values(self, similarity: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities of each query's relevant items, ascending [n, W], ``-inf`` first for masked
        items and padding; the number of gallery items with each query's label [n])."""
        position, sizes = self.sizes(query_labels)
        n, m = similarity.shape
        width = int(sizes.max(initial=0))
        used = np.arange(width) < sizes[:, None]
        if self.padded is not None:
            columns = self.padded[position, :width]
        else:
            columns = self.order[self.starts[position][:, None] + np.where(used, np.arange(width), 0)]
        values = np.ascontiguousarray(similarity).reshape(-1).take(columns + (np.arange(n) * m)[:, None])
        values[~used] = -np.inf
        values.sort(axis=1)
        return values, sizes


def top_values(similarity: np.ndarray, depth: int) -> np.ndarray:
    """The ``min(depth + 1, m)`` largest values of each row of ``similarity`` [n, m], ascending."""
    m = similarity.shape[1]
    size = min(depth + 1, m)
    if size == m:
        return np.sort(similarity, axis=1)
    return np.sort(np.partition(similarity, m - size, axis=1)[:, m - size:], axis=1)


def _row_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys of float32 ``x`` [n, w] ordered as the values are within a row and row by row
    (row r's keys all below row r + 1's), -0.0 equal to 0.0: a row-major array of ascending rows
    becomes one ascending array."""
    bits = (x + np.float32(0)).view(np.int32)  # + 0: -0.0 becomes 0.0
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64) + 2**31
    return ordered + (np.arange(len(x), dtype=np.int64) << 32)[:, None]


def count_below(top: np.ndarray, values: np.ndarray, *, strictly: bool) -> np.ndarray:
    """For each v of ``values`` [n, W], the number of ``top`` [n, L] values of its row below it
    (``strictly``: < v, else <= v); both ascending per row. Equal values compare as numpy's sort
    does (-0.0 equals 0.0). float32 rows are searched all at once (:func:`_row_keys`); others row by
    row."""
    n, length = top.shape
    side = "left" if strictly else "right"
    if top.dtype == np.float32 and values.dtype == np.float32:
        found = np.searchsorted(_row_keys(top).reshape(-1), _row_keys(values), side)
        return found - (np.arange(n, dtype=np.int64) * length)[:, None]
    out = np.empty(values.shape, np.int64)
    for r in range(n):
        out[r] = np.searchsorted(top[r], values[r], side)
    return out


def _untie(place: np.ndarray, row: np.ndarray, relevant: np.ndarray, before: np.ndarray, values: np.ndarray,
           relevant_items: np.ndarray) -> None:
    """Places of one row's relevant items of similarity ``values`` (each shared with other items),
    written into ``place`` [W] (in the order of ``relevant`` [W], ascending values): a tied group
    takes consecutive places from ``before`` + 1 (``before`` [W]: items strictly more similar) in
    increasing index order. ``row`` [m]: the similarities; ``relevant_items`` [m] (bool): which
    items of the row are relevant."""
    for value in values:
        equal = np.flatnonzero(row == value)
        slots = np.flatnonzero(relevant == value)  # ascending slots, read in reverse as places ascend
        place[slots] = (before[slots[-1]] + 1 + np.flatnonzero(relevant_items[equal]))[::-1]


def relevant_places(similarity: np.ndarray, top: np.ndarray, relevant: np.ndarray, count: np.ndarray,
                    query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Places of each row's relevant items, ascending [n, W] (int64): exact within the first
    ``count`` [n] (R) places and for the first relevant item wherever it is; m + 1 for an item
    outside the query's gallery or beyond the depth of ``top``.

    ``top``: :func:`top_values` at a depth of at least R; ``relevant``: :meth:`LabelColumns.relevant_values`.
    """
    n, m = similarity.shape
    size = top.shape[1]
    floor = top[:, 1] if size < m else np.full(n, -np.inf, top.dtype)  # the depth-th largest value
    inside = (relevant > -np.inf) & (relevant >= floor[:, None])
    tail = max(1, int(inside.sum(axis=1).max()))  # the inside values: the last columns of each row
    below = count_below(top, relevant[:, -tail:], strictly=False)
    before = np.zeros(relevant.shape, np.int64)
    before[:, -tail:] = size - below  # items more similar; exact inside
    # another selected item has the same similarity (the next smaller selected value equals it)
    previous = top.reshape(-1).take(np.maximum(below - 2, 0) + (np.arange(n) * size)[:, None])
    shared = np.zeros(relevant.shape, bool)
    shared[:, -tail:] = inside[:, -tail:] & (below >= 2) & (previous == relevant[:, -tail:])
    beyond = np.flatnonzero((relevant[:, -1] > -np.inf) & ~inside[:, -1])
    if len(beyond):  # the first relevant item lies beyond the depth: count the larger values of its row
        best, rows = relevant[beyond, -1][:, None], similarity[beyond]
        before[beyond, -1] = np.count_nonzero(rows > best, axis=1)
        inside[beyond, -1] = True
        shared[beyond, -1] = np.count_nonzero(rows == best, axis=1) > 1
    place = np.where(inside, before + 1, m + 1)
    shared &= (before < count[:, None]) | (relevant == relevant[:, -1:])  # within R, or the first relevant
    for r in np.flatnonzero(shared.any(axis=1)):
        row = similarity[r]
        _untie(place[r], row, relevant[r], before[r], np.unique(relevant[r, shared[r]]),
               (gallery_labels == query_labels[r]) & (row > -np.inf))
    return np.ascontiguousarray(place[:, ::-1])


def row_sums(terms: np.ndarray, lengths: np.ndarray, *, from_end: bool = False) -> np.ndarray:
    """Sum of each row of ``terms`` [n, W] over its first (``from_end``: last) ``lengths`` [n] entries,
    float64 [n]. Rows of one length are summed together, so each sum is numpy's pairwise sum over an
    array of that length, the same bits as summing the row alone."""
    out = np.zeros(len(terms))
    width = terms.shape[1]
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        out[rows] = (terms[rows, width - length:] if from_end else terms[rows, :length]).sum(axis=1)
    return out


def at_r(place: np.ndarray, count: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP@R, R-precision) [n] from the ascending ``place`` [n, W] of each row's relevant items, R =
    ``count`` [n] of them in its gallery (NaN when 0), ``sizes`` [n] the gallery items with its label."""
    within = place <= count[:, None]
    terms = np.divide(np.arange(1, place.shape[1] + 1), place, out=np.zeros(place.shape), where=within)
    with np.errstate(invalid="ignore", divide="ignore"):
        return row_sums(terms, sizes) / count, within.sum(axis=1) / count


def sklearn_ap(top: np.ndarray, relevant: np.ndarray, count: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average precision over the whole ranking with scikit-learn's tie groups [n] (NaN: no relevant
    item), from the fully sorted rows ``top`` [n, m] and the ascending ``relevant`` values [n, W]."""
    m, size = top.shape[1], relevant.shape[1]
    below = count_below(top, relevant, strictly=True)  # items less similar than each relevant item
    # #relevant >= a value = size - index of the first of its tied group in the ascending row
    index = np.arange(size)
    new_value = np.ones(relevant.shape, bool)
    new_value[:, 1:] = relevant[:, 1:] != relevant[:, :-1]
    group_start = np.where(new_value, index, 0)
    np.maximum.accumulate(group_start, axis=1, out=group_start)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(relevant > -np.inf, (size - group_start) / (m - below), 0.0)
        return row_sums(terms, sizes, from_end=True) / count
