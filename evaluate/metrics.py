"""Retrieval metrics over cosine similarity, and linear CKA. Pure functions over numpy arrays.

Conventions shared by every function here:

* Embeddings are L2-normalised float32 rows, so cosine similarity is a dot product.
* Ranking: gallery items in decreasing similarity; equal similarities are ordered by increasing
  gallery index (so the ranked list is a total order and top-k is deterministic).
* A similarity of ``-inf`` means "not in this query's gallery" (used to leave a query's own image
  out): such an item is never ranked, retrieved or counted as relevant.
* Relevant = same label as the query.
* Average precision follows ``sklearn.metrics.average_precision_score`` over the whole ranked
  gallery, including its tie semantics: items of equal similarity form one threshold, so each
  relevant item of a tied group scores the precision measured after the whole group. A query with
  no relevant item in its gallery has no AP (NaN) and is left out of mAP.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

# Similarities per block of rows: ~16 MB of float32 per copy whatever the gallery size.
_BLOCK_ELEMENTS = 4 * 1024 * 1024


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
    # Every item at least as similar as the k-th is a candidate; more than k only when the k-th
    # value is tied, and the lexsort then keeps the lowest indices among the tied.
    rows, cols = np.nonzero(similarity >= kth_value[:, None])
    order = np.lexsort((cols, -similarity[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    return cols[rank < k].reshape(n, k).astype(np.int64)


def topk_accuracy(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of queries whose label is among their ``k`` nearest gallery items.

    Parameters
    ----------
    neighbour_labels : int array [Nq, K >= k], labels of the ranked nearest items, best first.
    query_labels : int array [Nq].
    """
    return float(np.mean(np.any(neighbour_labels[:, :k] == query_labels[:, None], axis=1)))


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


def knn_accuracy(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Fraction of queries whose :func:`knn_predict` label is their own. Shapes [Nq, k] and [Nq]."""
    return float(np.mean(knn_predict(neighbour_labels) == query_labels))


def average_precision(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                      sorted_similarity: Optional[np.ndarray] = None,
                      class_columns: Optional[dict[int, np.ndarray]] = None) -> np.ndarray:
    """Average precision of every query over the whole ranked gallery (sklearn tie semantics).

    Parameters
    ----------
    similarity : float array [Nq, Ng]; ``-inf`` marks items outside a query's gallery.
    query_labels : int array [Nq]; gallery_labels : int array [Ng].
    sorted_similarity : optional, ``np.sort(similarity, axis=1)`` when already computed.
    class_columns : optional, ``{label: np.flatnonzero(gallery_labels == label)}`` when already computed.

    Returns
    -------
    float64 array [Nq]; NaN for a query with no relevant item in its gallery.

    Notes
    -----
    AP = (1/R) * sum over relevant items r of P(r), P(r) = #relevant with score >= s_r divided by
    #items with score >= s_r. Only each row's sort and the ranks of its relevant items are needed,
    not a full argsort.
    """
    n, m = similarity.shape
    if sorted_similarity is None:
        sorted_similarity = np.sort(similarity, axis=1)
    if class_columns is None:
        class_columns = columns_by_label(gallery_labels)
    ap = np.full(n, np.nan)
    for label in np.unique(query_labels):
        cols = class_columns.get(int(label))
        if cols is None:
            continue
        rows = np.flatnonzero(query_labels == label)
        relevant = np.sort(similarity[np.ix_(rows, cols)], axis=1)  # [n_c, R] ascending, -inf first
        size = relevant.shape[1]
        # #relevant >= a value = size - index of the first of its tied group in the ascending row
        index = np.arange(size)
        new_value = np.ones(relevant.shape, bool)
        new_value[:, 1:] = relevant[:, 1:] != relevant[:, :-1]
        group_start = np.where(new_value, index, 0)
        np.maximum.accumulate(group_start, axis=1, out=group_start)
        above = np.empty(relevant.shape, np.int64)
        for i, q in enumerate(rows):  # one binary search per row beats flattening 10^8 keys
            above[i] = np.searchsorted(sorted_similarity[q], relevant[i])
        precision = (size - group_start) / (m - above)
        valid = relevant > -np.inf
        count = valid.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[rows] = np.where(valid, precision, 0.0).sum(axis=1) / count
    return ap


def columns_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: indices of items with that label}`` for int ``labels`` [N]."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return {int(v): idx for v, idx in zip(values, np.split(order, starts[1:]))}


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def retrieval_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                      gallery_labels: np.ndarray, k: int = 5, exclude_self: bool = False,
                      threads: Optional[int] = None) -> dict[str, float]:
    """top1, top5, knn and mAP of queries against a gallery by cosine similarity, in row blocks.

    Parameters
    ----------
    query : float32 [Nq, D] and gallery : float32 [Ng, D], L2-normalised rows.
    query_labels : int [Nq]; gallery_labels : int [Ng].
    k : neighbours of the kNN vote.
    exclude_self : query i and gallery item i are the same image (same data set, same order):
        leave it out of query i's gallery.
    threads : threads ranking each block (numpy releases the GIL), default: the usable CPUs. The
        next block's similarities are computed (BLAS) while the current one is ranked.

    Returns
    -------
    ``{"top1", "top5", "knn", "mAP"}`` as floats; mAP is NaN when no query has a relevant item.

    Memory beyond the inputs is bounded by the block size, whatever Nq and Ng: two blocks of
    ``_BLOCK_ELEMENTS`` similarities in flight, each with a sorted copy and ranking temporaries
    (about 16 * ``_BLOCK_ELEMENTS`` * 4 bytes, ~ 270 MB, in the worst case).
    """
    query, gallery = np.asarray(query), np.asarray(gallery)  # plain views of memory-mapped sets
    nq, ng = len(query), len(gallery)
    if exclude_self and nq != ng:
        raise ValueError("exclude_self needs the query and gallery sets to be the same images")
    depth = max(k, 5)
    if ng - exclude_self < depth:
        raise ValueError(f"the gallery has {ng - exclude_self} items per query, fewer than the {depth} ranked")
    threads = threads or _usable_cpus()
    class_columns = columns_by_label(gallery_labels)
    block = max(threads, _BLOCK_ELEMENTS // max(ng, 1))
    neighbours = np.empty((nq, depth), np.int64)
    ap = np.empty(nq)

    def rank(similarity: np.ndarray, start: int) -> None:
        stop = start + len(similarity)
        ordered = np.sort(similarity, axis=1)
        neighbours[start:stop] = topk_indices(similarity, depth, ordered[:, ng - depth])
        ap[start:stop] = average_precision(similarity, query_labels[start:stop], gallery_labels,
                                           ordered, class_columns)

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
    neighbour_labels = gallery_labels[neighbours]
    has_relevant = ~np.isnan(ap)
    return {"top1": topk_accuracy(neighbour_labels, query_labels, 1),
            "top5": topk_accuracy(neighbour_labels, query_labels, 5),
            "knn": knn_accuracy(neighbour_labels[:, :k], query_labels),
            "mAP": float(ap[has_relevant].mean()) if has_relevant.any() else float("nan")}


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
