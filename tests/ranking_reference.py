"""The ranking step as it was before the top-R selection (every similarity row fully sorted, one
loop per class): the slow reference the new path is compared with, number for number. Copied from
evaluate/metrics/ranking.py at the commit that replaced it; not used by the package."""
from __future__ import annotations

from dataclasses import fields
from typing import AbstractSet, Optional

import numpy as np

from dpcompat.evaluate.metrics.neighbours import knn_predict  # unchanged by the selection
from dpcompat.evaluate.metrics.ranking import (FIRST_HIT, FIRST_R, FULL_RANKING, KNN_VOTE, REQUIREMENTS, QueryOutcomes,
                                               _no_outcomes, check_requirements)

_TOPK_CHUNK = 128
_PLACES = frozenset({FIRST_HIT, FIRST_R})


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
    # value: one cheap max-reduction instead of a comparison and index extraction over every item.
    starts = np.arange(0, m, _TOPK_CHUNK)
    rows, chunks = np.nonzero(np.maximum.reduceat(similarity, starts, axis=1) >= kth_value[:, None])
    cols = (starts[chunks][:, None] + np.arange(_TOPK_CHUNK)).ravel()
    rows = np.repeat(rows, _TOPK_CHUNK)
    inside = cols < m
    rows, cols = rows[inside], cols[inside]
    keep = similarity[rows, cols] >= kth_value[rows]
    rows, cols = rows[keep], cols[keep]
    order = np.lexsort((cols, -similarity[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    return cols[rank < k].reshape(n, k).astype(np.int64)


def columns_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: indices of items with that label}`` for int ``labels`` [N]."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return {int(v): idx for v, idx in zip(values, np.split(order, starts[1:]))}


def _tied_places(similarity_row: np.ndarray, before: int, value: float, relevant: np.ndarray) -> np.ndarray:
    """Places (1-based, total order) of the ``relevant`` [Ng] bool items whose similarity is ``value``,
    ascending, when ``before`` items are more similar: items of equal similarity take consecutive
    places in increasing index order."""
    equal = np.flatnonzero(similarity_row == value)
    return before + 1 + np.flatnonzero(relevant[equal])


def _sklearn_ap(relevant: np.ndarray, below: np.ndarray, valid: np.ndarray, count: np.ndarray, m: int) -> np.ndarray:
    """AP over the whole ranking with sklearn's tie groups, from each relevant item's similarity
    (``relevant`` [n_c, R] ascending) and the number of items less similar (``below``)."""
    size = relevant.shape[1]
    # sklearn AP: #relevant >= a value = size - index of the first of its tied group in the ascending row
    index = np.arange(size)
    new_value = np.ones(relevant.shape, bool)
    new_value[:, 1:] = relevant[:, 1:] != relevant[:, :-1]
    group_start = np.where(new_value, index, 0)
    np.maximum.accumulate(group_start, axis=1, out=group_start)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, (size - group_start) / (m - below), 0.0).sum(axis=1) / count


def _places(similarity: np.ndarray, sorted_similarity: np.ndarray, rows: np.ndarray, relevant: np.ndarray,
            below: np.ndarray, following: np.ndarray, valid: np.ndarray, count: np.ndarray,
            relevant_mask: np.ndarray) -> np.ndarray:
    """Places (1-based, total order) of each row's relevant items, ascending [n_c, R]; m + 1 for an
    item outside the query's gallery. Exact within the first R places and for the first relevant item."""
    m = similarity.shape[1]
    # Place in the total order: m - below when no other item has the same similarity.
    place = np.where(valid, m - below, m + 1).astype(np.int32)
    tied = valid & (below + 1 < m) & (following == relevant)
    done = set()
    for i, t in zip(*np.nonzero(tied)):
        q, value = rows[i], relevant[i, t]
        before = m - np.searchsorted(sorted_similarity[q], value, side="right")  # items strictly more similar
        # A tie moves places only inside its group: it matters when the group starts within the first
        # R places or holds the first relevant item (the best relevant similarity).
        if (before < count[i] or value == relevant[i, -1]) and (i, value) not in done:
            done.add((i, value))
            place[i, relevant[i] == value] = _tied_places(similarity[q], before, value, relevant_mask)
    place.sort(axis=1)
    return place


def _class_outcomes(similarity: np.ndarray, sorted_similarity: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                    relevant_mask: np.ndarray, requires: frozenset) -> dict[str, np.ndarray]:
    """The :class:`QueryOutcomes` fields that ``requires`` asks for (first_hit, ap_at_r, r_precision,
    ap) of the queries ``rows`` whose relevant items are the gallery ``columns`` (``relevant_mask``
    [Ng] marks the same items), as ``{field: array [n_c]}``."""
    m = similarity.shape[1]
    relevant = np.sort(similarity[np.ix_(rows, columns)], axis=1)  # [n_c, R] ascending, -inf first
    places = bool(requires & _PLACES)
    below = np.empty(relevant.shape, np.int64)  # items less similar than each relevant item
    following = np.empty(relevant.shape, sorted_similarity.dtype)  # the next larger-or-equal similarity
    for i, q in enumerate(rows):  # one binary search per row beats flattening 10^8 keys
        below[i] = np.searchsorted(sorted_similarity[q], relevant[i])
        if places:
            following[i] = sorted_similarity[q].take(np.minimum(below[i] + 1, m - 1))
    valid = relevant > -np.inf
    count = valid.sum(axis=1)
    out = {}
    if FULL_RANKING in requires:
        out["ap"] = _sklearn_ap(relevant, below, valid, count, m)
    if places:
        place = _places(similarity, sorted_similarity, rows, relevant, below, following, valid, count, relevant_mask)
        if FIRST_R in requires:
            within = place <= count[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                out["ap_at_r"] = np.where(within, (np.arange(relevant.shape[1]) + 1) / place, 0.0).sum(axis=1) / count
                out["r_precision"] = within.sum(axis=1) / count
        if FIRST_HIT in requires:
            out["first_hit"] = np.where(count > 0, place[:, 0], 0)
    return out


def ranked_outcomes(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, *, k: int = 5,
                    sorted_similarity: Optional[np.ndarray] = None,
                    class_columns: Optional[dict[int, np.ndarray]] = None,
                    requires: AbstractSet[str] = REQUIREMENTS) -> QueryOutcomes:
    """The per-query outcomes ``requires`` asks for, of queries against a gallery given their similarities.

    Parameters
    ----------
    similarity : float array [Nq, Ng]; ``-inf`` marks items outside a query's gallery.
    query_labels : int array [Nq]; gallery_labels : int array [Ng].
    k : neighbours of the kNN vote (at most the finite entries of every row).
    sorted_similarity : optional, ``np.sort(similarity, axis=1)`` when already computed.
    class_columns : optional, ``columns_by_label(gallery_labels)`` when already computed.
    requires : subset of :data:`REQUIREMENTS`; default all.

    Returns
    -------
    :class:`QueryOutcomes` with arrays [Nq] for what was required, None for the rest.

    Notes
    -----
    AP = (1/R) * sum over relevant items r of P(r), P(r) = #relevant with score >= s_r divided by
    #items with score >= s_r. Only each row's sort and the ranks of its relevant items are needed,
    not a full argsort; an item tied with another gets its place from an exact look at the tie.
    """
    requires = check_requirements(requires)
    if sorted_similarity is None:
        sorted_similarity = np.sort(similarity, axis=1)
    out = _no_outcomes(len(similarity), requires)
    if out:
        if class_columns is None:
            class_columns = columns_by_label(gallery_labels)
        for label in np.unique(query_labels):
            columns = class_columns.get(int(label))
            if columns is None:
                continue
            rows = np.flatnonzero(query_labels == label)
            got = _class_outcomes(similarity, sorted_similarity, rows, columns, gallery_labels == label, requires)
            for name, values in got.items():
                out[name][rows] = values
    if KNN_VOTE in requires:
        m = similarity.shape[1]
        out["knn_correct"] = knn_predict(gallery_labels[topk_indices(similarity, k, sorted_similarity[:, m - k])]
                                         ) == query_labels
    return QueryOutcomes(**out)


def assert_same_outcomes(got: QueryOutcomes, want: QueryOutcomes) -> None:
    """Every field equal bit for bit (NaN where NaN), None where None."""
    for f in fields(got):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert (a is None) == (b is None), f.name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f.name)
