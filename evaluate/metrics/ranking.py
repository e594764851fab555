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

Only what the metrics read is ranked (:mod:`.selection`): each row's first R places (the largest R
among its queries' in a block) by a linear selection, not a sort of the row; exact AP
(:data:`FULL_RANKING`) alone sorts every row.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import AbstractSet, Optional

import numpy as np

from .neighbours import knn_predict, topk_indices
from .selection import LabelColumns, at_r, relevant_places, sklearn_ap, top_values

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


def _label_outcomes(similarity: np.ndarray, top: np.ndarray, relevant: np.ndarray, count: np.ndarray,
                    sizes: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                    requires: frozenset) -> dict[str, np.ndarray]:
    """The label-wise fields ``requires`` asks for (:func:`ranked_outcomes`), from the selected
    ``top`` values and the ``relevant`` ones (:mod:`.selection`), R = ``count`` [n]."""
    out = {}
    if FULL_RANKING in requires:
        out["ap"] = sklearn_ap(top, relevant, count, sizes)
    if requires & {FIRST_HIT, FIRST_R}:
        place = relevant_places(similarity, top, relevant, count, query_labels, gallery_labels)
        if FIRST_R in requires:
            out["ap_at_r"], out["r_precision"] = at_r(place, count, sizes)
        if FIRST_HIT in requires:
            out["first_hit"] = np.where(count > 0, place[:, 0], 0)
    return out


def ranked_outcomes(similarity: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, *, k: int = 5,
                    columns: Optional[LabelColumns] = None,
                    requires: AbstractSet[str] = REQUIREMENTS) -> QueryOutcomes:
    """The per-query outcomes ``requires`` asks for, of queries against a gallery given their similarities.

    Parameters
    ----------
    similarity : float array [Nq, Ng]; ``-inf`` marks items outside a query's gallery.
    query_labels : int array [Nq]; gallery_labels : int array [Ng].
    k : neighbours of the kNN vote (at most the finite entries of every row).
    columns : optional, ``LabelColumns.of(gallery_labels)`` when already computed.
    requires : subset of :data:`REQUIREMENTS`; default all.

    Returns
    -------
    :class:`QueryOutcomes` with arrays [Nq] for what was required, None for the rest.

    Notes
    -----
    Each row is ranked to the depth its metrics read: R (the largest among the rows) for the first
    relevant place and :data:`FIRST_R`, k for the vote, the whole row for :data:`FULL_RANKING`
    (AP = (1/R) * sum over relevant items r of P(r), P(r) = #relevant with score >= s_r divided by
    #items with score >= s_r). See :mod:`.selection`.
    """
    requires = check_requirements(requires)
    out = _no_outcomes(len(similarity), requires)
    depth, top = (k if KNN_VOTE in requires else 1), None
    if out:
        relevant, sizes = (columns or LabelColumns.of(gallery_labels)).relevant_values(similarity, query_labels)
        if relevant.shape[1]:  # else no query has a relevant item: the defaults stand
            count = (relevant > -np.inf).sum(axis=1)
            depth = max(depth, int(count.max()) if FIRST_R in requires else 1)
            depth = similarity.shape[1] if FULL_RANKING in requires else depth
            top = top_values(similarity, depth)
            out.update(_label_outcomes(similarity, top, relevant, count, sizes, query_labels, gallery_labels,
                                       requires))
    if KNN_VOTE in requires:
        top = top_values(similarity, k) if top is None else top
        nearest = topk_indices(similarity, k, top[:, top.shape[1] - k])
        out["knn_correct"] = knn_predict(gallery_labels[nearest]) == query_labels
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
    ``_BLOCK_ELEMENTS`` similarities in flight, each with a selected copy and ranking temporaries.
    """
    requires = check_requirements(requires)
    query, gallery = np.asarray(query), np.ascontiguousarray(gallery, dtype=np.float32)  # views of mapped sets
    nq, ng = len(query), len(gallery)
    if exclude_self and nq != ng:
        raise ValueError("exclude_self needs the query and gallery sets to be the same images")
    check_depth(ng - exclude_self, k if KNN_VOTE in requires else 1)
    threads = threads or _usable_cpus()
    columns = LabelColumns.of(gallery_labels)
    block = block_rows(ng, threads)
    parts: dict[int, QueryOutcomes] = {}

    def rank(similarity: np.ndarray, start: int) -> None:
        parts[start] = ranked_outcomes(similarity, query_labels[start:start + len(similarity)], gallery_labels,
                                       k=k, columns=columns, requires=requires)

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
