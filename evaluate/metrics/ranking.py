"""The ranking step of retrieval over cosine similarity: per-query outcomes, each computed only when
a metric requires it (the metrics themselves are declared in :mod:`.table`). Pure functions over
numpy arrays.

Conventions shared by every function here:

* Embeddings are L2-normalised float32 rows, so cosine similarity is a dot product, computed in
  float32 by one BLAS product per block (:func:`similarities`) whatever arrays hold the rows: a
  query set that is the gallery set gives the same numbers as a copy of it.
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

Only what the metrics read is ranked (:mod:`.prefix`): each row's first R places (the largest R
among its queries' in a block) found by a threshold and sorted, not the whole row; exact AP
(:data:`FULL_RANKING`) alone sorts every row.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import AbstractSet, Optional

import numpy as np

from .neighbours import knn_predict
from .prefix import ordered_prefix, outside
from .selection import LabelColumns, hits_at_r, sklearn_ap

# Similarities per block of rows: ~16 MB of float32 per copy whatever the gallery size.
_BLOCK_ELEMENTS = 4 * 1024 * 1024

# What the ranking step can compute, each named once, with the fields of QueryOutcomes it fills; a metric
# declares the ones it reads (:mod:`.table`) and the ranking computes only those asked for, in one pass.
FIRST_HIT = "first_hit"  # the place of each query's first relevant item
KNN_VOTE = "knn_vote"  # the majority vote of its k nearest items
FIRST_R = "first_r"  # its relevant items among the first R places (AP@R, R-precision)
FULL_RANKING = "full_ranking"  # every relevant item's place over the whole ranking (exact AP)
OUTCOME_FIELDS = {FIRST_HIT: ("first_hit",), KNN_VOTE: ("knn_correct",), FIRST_R: ("ap_at_r", "r_precision"),
                  FULL_RANKING: ("ap",)}
REQUIREMENTS = frozenset(OUTCOME_FIELDS)


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


def check_requirements(requires: AbstractSet[str], *, known: AbstractSet[str] = REQUIREMENTS,
                       what: str = "ranking") -> frozenset:
    """``requires`` as a frozenset, or ValueError naming what the ``what`` (whose requirements are
    ``known``) cannot compute."""
    unknown = set(requires) - set(known)
    if unknown:
        raise ValueError(f"unknown {what} requirement(s) {sorted(unknown)}: expected among {sorted(known)}")
    return frozenset(requires)


def check_depth(items: int, places: int) -> None:
    """ValueError when a query's gallery holds fewer than ``places`` items (the deepest place ranked)."""
    if items < places:
        raise ValueError(f"the gallery has {items} items per query, fewer than the {places} ranked")


def _no_outcomes(n: int, requires: frozenset) -> dict[str, np.ndarray]:
    """The label-wise fields ``requires`` asks for, as for queries with no relevant item: place 0, NaN."""
    return {f: np.zeros(n, np.int64) if f == "first_hit" else np.full(n, np.nan)
            for r in sorted(requires - {KNN_VOTE}) for f in OUTCOME_FIELDS[r]}


def _full_ap(similarity: np.ndarray, query_labels: np.ndarray, columns: LabelColumns) -> np.ndarray:
    """Exact AP [n] (:data:`FULL_RANKING`): every row sorted, sklearn's tie groups (:func:`.selection.sklearn_ap`)."""
    relevant, sizes = columns.relevant_values(similarity, query_labels)
    if not relevant.shape[1]:  # no query has a relevant item
        return np.full(len(similarity), np.nan)
    return sklearn_ap(np.sort(similarity, axis=1), relevant, (relevant > -np.inf).sum(axis=1), sizes)


def _outside(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
             excluded: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.prefix.outside` (finite entries per row, relevant ones outside the gallery), by a scan
    or, when ``excluded`` [n] names each row's only ``-inf`` entry (-1: none), from it."""
    if excluded is None:
        return outside(similarity, query_labels, gallery_labels)
    left_out = excluded >= 0
    return similarity.shape[1] - left_out, left_out & (gallery_labels[np.maximum(excluded, 0)] == query_labels)


def _prefix_outcomes(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     columns: LabelColumns, k: int, requires: frozenset,
                     excluded: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """The fields of :data:`FIRST_HIT`, :data:`FIRST_R` and :data:`KNN_VOTE` that ``requires`` asks
    for, from each row's first places in the total order (:mod:`.prefix`): R of them for the
    first R, k for the vote, one for the first relevant item (counted over the row when its first
    places hold none)."""
    n, m = similarity.shape
    finite, masked = _outside(similarity, query_labels, gallery_labels, excluded)
    sizes = columns.sizes(query_labels)[1]
    count = sizes - masked  # R: relevant items in the query's gallery
    if KNN_VOTE in requires and finite.min(initial=k) < k:
        raise ValueError(f"k={k} must be at most the number of items in every query's gallery")
    need = max(k if KNN_VOTE in requires else 1, int(count.max(initial=0)) if FIRST_R in requires else 1)
    ranked, length = ordered_prefix(similarity, min(need, m), finite)
    hits = gallery_labels.take(ranked, mode="clip") == query_labels[:, None]
    hits &= np.arange(ranked.shape[1]) < length[:, None]  # not the padding
    out = {}
    if FIRST_R in requires:
        out["ap_at_r"], out["r_precision"] = hits_at_r(hits, count, sizes)
    if FIRST_HIT in requires:
        out["first_hit"] = np.zeros(n, np.int64)
        if hits.shape[1]:  # no places at all when every row is outside its gallery
            first = hits.argmax(axis=1)
            out["first_hit"] = np.where(hits[np.arange(n), first], first + 1, 0)
        far = np.flatnonzero((out["first_hit"] == 0) & (count > 0))  # relevant items, none among the first places
        if len(far):
            out["first_hit"][far] = columns.first_places(similarity[far], query_labels[far])
    if KNN_VOTE in requires:
        out["knn_correct"] = knn_predict(gallery_labels[ranked[:, :k]]) == query_labels
    return out


def ranked_outcomes(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, *, k: int = 5,
                    columns: Optional[LabelColumns] = None, requires: AbstractSet[str] = REQUIREMENTS,
                    excluded: Optional[np.ndarray] = None) -> QueryOutcomes:
    """The per-query outcomes ``requires`` asks for, of queries against a gallery given their similarities.

    Parameters
    ----------
    similarity : float array [Nq, Ng]; ``-inf`` marks items outside a query's gallery; no NaN.
    query_labels : int array [Nq]; gallery_labels : int array [Ng].
    k : neighbours of the kNN vote (at most the finite entries of every row).
    columns : optional, ``LabelColumns.of(gallery_labels)`` when already computed.
    requires : subset of :data:`REQUIREMENTS`; default all.
    excluded : optional int [Nq], the gallery index of each row's one ``-inf`` entry (-1: none) when
        the caller set them and no other entry is ``-inf`` or NaN (spares a scan of the block).

    Returns
    -------
    :class:`QueryOutcomes` with arrays [Nq] for what was required, None for the rest.

    Notes
    -----
    Each row is ranked to the depth its metrics read (:mod:`.prefix`): R (the largest among the
    rows) for :data:`FIRST_R`, k for the vote, its first relevant item for :data:`FIRST_HIT`; the
    whole row, sorted, for :data:`FULL_RANKING` (AP = (1/R) * sum over relevant items r of P(r),
    P(r) = #relevant with score >= s_r divided by #items with score >= s_r).
    """
    requires = check_requirements(requires)
    similarity = np.ascontiguousarray(similarity)
    gallery_labels, columns = np.asarray(gallery_labels), columns or LabelColumns.of(gallery_labels)
    out = _no_outcomes(len(similarity), requires)
    if FULL_RANKING in requires:
        out["ap"] = _full_ap(similarity, query_labels, columns)
    if requires - {FULL_RANKING}:
        out.update(_prefix_outcomes(similarity, np.asarray(query_labels), gallery_labels, columns, k, requires,
                                    excluded))
    return QueryOutcomes(**out)


def average_precision(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Average precision of every query over the whole ranked gallery (sklearn tie semantics).

    Shapes: similarity [Nq, Ng] (``-inf``: not in the gallery), query_labels [Nq], gallery_labels [Ng].
    Returns float64 [Nq]; NaN for a query with no relevant item in its gallery.
    """
    return ranked_outcomes(similarity, query_labels, gallery_labels, requires={FULL_RANKING}).ap


def similarities(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarities, float32 [n, m], of ``query`` rows [n, D] against ``gallery`` [m, D]
    (L2-normalised float32 rows, the gallery C-contiguous).

    One general BLAS product (sgemm) of a private copy of the query rows: numpy runs ``x @ x.T`` on
    one array as a symmetric product (syrk), which rounds differently, so a query set that is the
    gallery array itself would rank otherwise than a copy of it. The copy is n x D, small beside the
    n x m product."""
    return np.array(query, dtype=np.float32, order="C") @ gallery.T


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def block_rows(gallery_size: int, threads: int) -> int:
    """Query rows per block of similarities: ``_BLOCK_ELEMENTS`` in all, at least one per thread."""
    return max(threads, _BLOCK_ELEMENTS // max(gallery_size, 1))


def retrieval_outcomes(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                       *, k: int = 5, exclude_self: bool = False, threads: Optional[int] = None,
                       requires: AbstractSet[str] = REQUIREMENTS) -> QueryOutcomes:
    """Per-query outcomes of queries against a gallery by cosine similarity, in row blocks.

    Parameters
    ----------
    query : float32 [Nq, D] and gallery : float32 [Ng, D], L2-normalised finite rows.
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
    ``_BLOCK_ELEMENTS`` similarities in flight, each with its ranking's temporaries.
    """
    requires = check_requirements(requires)
    query, gallery = np.asarray(query), np.ascontiguousarray(gallery, dtype=np.float32)  # views of mapped sets
    nq, ng = len(query), len(gallery)
    if exclude_self and nq != ng:
        raise ValueError("exclude_self needs the query and gallery sets to be the same images")
    check_depth(ng - exclude_self, k if KNN_VOTE in requires else 1)
    if not all(np.isfinite(x.min(initial=0.0)) and np.isfinite(x.max(initial=0.0)) for x in (query, gallery)):
        raise ValueError("the embeddings must be finite (L2-normalised rows)")  # then the only -inf are set below
    threads = threads or _usable_cpus()
    columns = LabelColumns.of(gallery_labels)
    block = block_rows(ng, threads)
    parts: dict[int, QueryOutcomes] = {}

    def rank(similarity: np.ndarray, start: int) -> None:
        own = np.arange(start, start + len(similarity))
        parts[start] = ranked_outcomes(similarity, query_labels[own], gallery_labels, k=k, columns=columns,
                                       requires=requires, excluded=own if exclude_self else np.full(len(own), -1))

    with ThreadPoolExecutor(threads) as pool:
        ranking: list = []
        for start in range(0, nq, block):
            similarity = similarities(query[start:start + block], gallery)
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
