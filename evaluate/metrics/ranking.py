"""The ranking step of retrieval over cosine similarity (per-query outcomes, each computed only when
a metric requires it; the metrics themselves are declared in :mod:`.table`), and linear CKA. Pure
functions over numpy arrays.

Conventions shared by every function here:

* Embeddings are L2-normalised float32 rows, so cosine similarity is a dot product.
* Ranking: gallery items in decreasing similarity; equal similarities are ordered by increasing
  gallery index (so the ranked list is a total order and top-k, CMC, mAP@R and R-precision are
  deterministic).
* A similarity of ``-inf`` means "not in this query's gallery" (used to leave a query's own image
  out): such an item is never ranked, retrieved or counted as relevant.
* Relevant = same label as the query. R = the number of relevant items in the query's gallery.
* Average precision follows ``sklearn.metrics.average_precision_score`` over the whole ranked
  gallery, including its tie semantics: items of equal similarity form one threshold, so each
  relevant item of a tied group scores the precision measured after the whole group. A query with
  no relevant item in its gallery has no AP, AP@R or R-precision (NaN) and is left out of their means.
* mAP@R and R-precision (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020) look at the
  first R places of the total order: R-precision = (relevant among them) / R, AP@R = (1/R) * sum over
  the relevant items at places p <= R of (relevant at places <= p) / p.

Nothing here sorts indices of whole rows (``argsort`` is about four times slower than ``np.sort`` on
float32): each row is sorted by value once, the place of each relevant item is found by a binary
search, and only the few candidates for the top k are ordered by index.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import AbstractSet, Optional, Sequence

import numpy as np

# Similarities per block of rows: ~16 MB of float32 per copy whatever the gallery size.
_BLOCK_ELEMENTS = 4 * 1024 * 1024
_TOPK_CHUNK = 128  # columns per chunk when looking for the top-k candidates

# What the ranking step can compute, each named once, with the fields of QueryOutcomes it fills; a metric
# declares the ones it reads (:mod:`.table`) and the ranking computes only those asked for, in one pass.
FIRST_HIT = "first_hit"  # the place of each query's first relevant item
KNN_VOTE = "knn_vote"  # the majority vote of its k nearest items
FIRST_R = "first_r"  # its relevant items among the first R places (AP@R, R-precision)
FULL_RANKING = "full_ranking"  # every relevant item's place over the whole ranking (exact AP)
OUTCOME_FIELDS = {FIRST_HIT: ("first_hit",), KNN_VOTE: ("knn_correct",), FIRST_R: ("ap_at_r", "r_precision"),
                  FULL_RANKING: ("ap",)}
REQUIREMENTS = frozenset(OUTCOME_FIELDS)
_PLACES = frozenset({FIRST_HIT, FIRST_R})  # what needs the exact places of the relevant items


@dataclass
class QueryOutcomes:
    """Per-query results of one query set against one gallery; every array has shape [Nq], and a
    field is None when its requirement was not asked of the ranking.

    ``first_hit`` (:data:`FIRST_HIT`): int64, 1-based place of the first relevant item, 0 when the
    query has none; ``knn_correct`` (:data:`KNN_VOTE`): bool, the kNN vote is the query's label;
    ``ap_at_r``, ``r_precision`` (:data:`FIRST_R`), ``ap`` (:data:`FULL_RANKING`): float64, NaN when
    the query has no relevant item. For a ranked list cut at K places (an index's search,
    :func:`evaluate.search.indexes.list_outcomes`) ``first_hit`` is 0 beyond K and ``ap`` is AP@K.
    """

    first_hit: Optional[np.ndarray] = None
    knn_correct: Optional[np.ndarray] = None
    ap: Optional[np.ndarray] = None
    ap_at_r: Optional[np.ndarray] = None
    r_precision: Optional[np.ndarray] = None


def check_requirements(requires: AbstractSet[str]) -> frozenset:
    """``requires`` as a frozenset, or ValueError naming what the ranking cannot compute."""
    unknown = set(requires) - REQUIREMENTS
    if unknown:
        raise ValueError(f"unknown ranking requirement(s) {sorted(unknown)}: expected among {sorted(REQUIREMENTS)}")
    return frozenset(requires)


def check_depth(items: int, places: int) -> None:
    """ValueError when a query's gallery holds fewer than ``places`` items (the deepest place ranked)."""
    if items < places:
        raise ValueError(f"the gallery has {items} items per query, fewer than the {places} ranked")


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


def _no_outcomes(n: int, requires: frozenset) -> dict[str, np.ndarray]:
    """The label-wise fields ``requires`` asks for, as for queries with no relevant item: place 0, NaN."""
    return {f: np.zeros(n, np.int64) if f == "first_hit" else np.full(n, np.nan)
            for r in sorted(requires - {KNN_VOTE}) for f in OUTCOME_FIELDS[r]}


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


def average_precision(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Average precision of every query over the whole ranked gallery (sklearn tie semantics).

    Shapes: similarity [Nq, Ng] (``-inf``: not in the gallery), query_labels [Nq], gallery_labels [Ng].
    Returns float64 [Nq]; NaN for a query with no relevant item in its gallery.
    """
    return ranked_outcomes(similarity, query_labels, gallery_labels, requires={FULL_RANKING}).ap


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def retrieval_outcomes(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                       *, k: int = 5, exclude_self: bool = False, threads: Optional[int] = None,
                       requires: AbstractSet[str] = REQUIREMENTS) -> QueryOutcomes:
    """Per-query outcomes of queries against a gallery by cosine similarity, in row blocks.

    Parameters
    ----------
    query : float32 [Nq, D] and gallery : float32 [Ng, D], L2-normalised rows.
    query_labels : int [Nq]; gallery_labels : int [Ng].
    k : neighbours of the kNN vote.
    exclude_self : query i and gallery item i are the same image (same data set, same order):
        leave it out of query i's gallery.
    threads : threads ranking each block (numpy releases the GIL), default: the usable CPUs. The
        next block's similarities are computed (BLAS) while the current one is ranked.
    requires : what to compute, a subset of :data:`REQUIREMENTS` (default all); the metrics of
        :mod:`.table` declare theirs.

    Returns
    -------
    :class:`QueryOutcomes`, arrays [Nq] (None for what was not required).

    Memory beyond the inputs is bounded by the block size, whatever Nq and Ng: two blocks of
    ``_BLOCK_ELEMENTS`` similarities in flight, each with a sorted copy and ranking temporaries.
    """
    requires = check_requirements(requires)
    query, gallery = np.asarray(query), np.asarray(gallery)  # plain views of memory-mapped sets
    nq, ng = len(query), len(gallery)
    if exclude_self and nq != ng:
        raise ValueError("exclude_self needs the query and gallery sets to be the same images")
    check_depth(ng - exclude_self, k if KNN_VOTE in requires else 1)
    threads = threads or _usable_cpus()
    class_columns = columns_by_label(gallery_labels)
    block = max(threads, _BLOCK_ELEMENTS // max(ng, 1))
    parts: dict[int, QueryOutcomes] = {}

    def rank(similarity: np.ndarray, start: int) -> None:
        parts[start] = ranked_outcomes(similarity, query_labels[start:start + len(similarity)], gallery_labels,
                                       k=k, class_columns=class_columns, requires=requires)

    with ThreadPoolExecutor(threads) as pool:
        ranking: list = []
        for start in range(0, nq, block):
            similarity = query[start:start + block] @ gallery.T
            if exclude_self:
                rows = np.arange(len(similarity))
                similarity[rows, rows + start] = -np.inf
            for done in ranking:
                done.result()
            bounds = np.linspace(0, len(similarity), threads + 1).astype(int)
            ranking = [pool.submit(rank, similarity[a:b], start + a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        for done in ranking:
            done.result()
    ordered = [parts[s] for s in sorted(parts)]
    return QueryOutcomes(**{f.name: np.concatenate([getattr(p, f.name) for p in ordered])
                            for f in fields(QueryOutcomes) if getattr(ordered[0], f.name) is not None})


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two embeddings of the same N items.

    Parameters
    ----------
    x : [N, D1], y : [N, D2]; row i of both is item i.

    Returns
    -------
    float in [0, 1]: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc, Yc centred per column.
    """
    return float(linear_cka_matrix([x, y])[0, 1])


def _centred_cross(x: np.ndarray, y: np.ndarray, mean_x: np.ndarray, mean_y: np.ndarray,
                   rows: int = 4096) -> np.ndarray:
    """(x - mean_x)^T (y - mean_y) in float64, centring one block of rows at a time."""
    out = np.zeros((x.shape[1], y.shape[1]))
    for s in range(0, len(x), rows):
        xc = (x[s:s + rows] - mean_x).astype(np.float32)
        yc = xc if y is x else (y[s:s + rows] - mean_y).astype(np.float32)
        out += xc.T @ yc
    return out


def linear_cka_matrix(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA between every two of ``embeddings`` (each [N, D_t], same N items in the same order).

    Returns
    -------
    float64 array [T, T], symmetric, ones on the diagonal (NaN where an embedding is constant).
    Products of centred float32 blocks are summed in float64; no centred copy of a whole set is kept.
    """
    embeddings = [np.asarray(e) for e in embeddings]
    means = [e.mean(axis=0, dtype=np.float64) for e in embeddings]
    self_norm = [np.linalg.norm(_centred_cross(e, e, m, m)) for e, m in zip(embeddings, means)]
    t = len(embeddings)
    cka = np.eye(t)
    for i in range(t):
        for j in range(i):
            cross = np.linalg.norm(_centred_cross(embeddings[i], embeddings[j], means[i], means[j])) ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                cka[i, j] = cka[j, i] = cross / (self_norm[i] * self_norm[j])
    for i in range(t):
        if self_norm[i] == 0:
            cka[i, :] = cka[:, i] = np.nan
    return cka
