"""Approximate-nearest-neighbour indexes (FAISS) over a gallery, exact streamed top-K search, and the
retrieval metrics of the top-K lists they return. Torch-free; faiss is imported only when used.

Index kinds (inner product, which is cosine on L2-normalised rows):

* ``flat``  exhaustive search (``IndexFlatIP``): the exact ranking.
* ``hnsw``  a navigable small-world graph (``IndexHNSWFlat``, ``hnsw_m`` links per node,
  ``ef_construction`` when built, ``ef_search`` candidates when searched).
* ``ivf``   ``nlist`` k-means lists (``IndexIVFFlat``); a query scans its ``nprobe`` nearest lists.
* ``ivfpq`` the same lists with product-quantised vectors (``IndexIVFPQ``: ``pq_m`` sub-vectors of
  ``pq_bits`` bits each), list centroids and codebooks trained on the gallery.

A neighbour list is int64 [Nq, K], best first; ``-1`` marks a slot the index left empty (an IVF
query whose probed lists hold fewer than K items) and counts as a wrong neighbour.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import AbstractSet, Optional

import numpy as np

from ...common.errors import InputError
from ..metrics.neighbours import knn_predict, topk_indices
from ..metrics.ranking import FIRST_HIT, FULL_RANKING, KNN_VOTE, QueryOutcomes
from ..metrics.table import index_requirements, index_summary

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
ADD_BLOCK = 65_536  # gallery rows copied into an index at a time
SEARCH_BLOCK = 4_096  # queries per index search call
TRAIN_PER_CENTROID = 64  # training rows per IVF list or PQ centroid
FAISS_MIN_PER_CENTROID = 39  # FAISS's k-means default: below it, FAISS prints a warning per training run


def faiss_module():
    """The faiss package, or InputError naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise InputError("--index needs faiss: pip install \"dpcompat[faiss]\" (faiss-cpu)") from None
    return faiss


@dataclass(frozen=True)
class IndexParams:
    """Settings of every kind; ``None`` means the default for the gallery's size (see :meth:`resolve`)."""

    nlist: Optional[int] = None
    nprobe: int = 16
    pq_m: Optional[int] = None
    pq_bits: Optional[int] = None
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 64

    def resolve(self, kind: str, n: int, d: int) -> dict:
        """The concrete parameters of ``kind`` on a gallery of ``n`` vectors of dimension ``d``.

        Defaults: nlist = round(sqrt(n)) capped so each list trains on at least 39 vectors; nprobe
        at most nlist; pq_m = the largest divisor of d that is at most d / 8 (sub-vectors of 8 or more
        dimensions); pq_bits = 8, fewer when n < 256 (2^bits centroids need as many training vectors).
        """
        if kind == "flat":
            return {}
        if kind == "hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        nlist = self.nlist or max(1, min(round(math.sqrt(n)), n // 39))
        if not 1 <= nlist <= n:
            raise InputError(f"--nlist {nlist}: must be between 1 and the gallery size {n}")
        out = {"nlist": nlist, "nprobe": min(self.nprobe, nlist)}
        if kind == "ivfpq":
            pq_m = self.pq_m or max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)
            bits = self.pq_bits or min(8, int(math.log2(n)))
            if d % pq_m:
                raise InputError(f"--pq-m {pq_m}: must divide the embedding dimension {d}")
            if not 1 <= bits <= 16 or 2 ** bits > n:
                raise InputError(f"--pq-bits {bits}: 2^bits centroids need at least as many gallery vectors ({n})")
            out.update(pq_m=pq_m, pq_bits=bits)
        return out


def check_kinds(kinds: tuple[str, ...], params: IndexParams) -> None:
    """InputError for an unknown kind or a non-positive setting, before any work."""
    for kind in kinds:
        if kind not in INDEX_KINDS:
            raise InputError(f"--index {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    for name, value in asdict(params).items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} {value}: must be at least 1")


def _train_rows(n: int, resolved: dict, seed: int) -> np.ndarray:
    """Sorted row indices of the training sample: every row, or TRAIN_PER_CENTROID per centroid."""
    centroids = max(resolved["nlist"], 2 ** resolved.get("pq_bits", 0))
    size = min(n, TRAIN_PER_CENTROID * centroids)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def training_shortfalls(kind: str, resolved: dict, n: int) -> list[str]:
    """One line per k-means of an index of ``kind`` over ``n`` gallery rows that trains on fewer points
    than FAISS recommends (FAISS_MIN_PER_CENTROID per centroid): the IVF lists, and for ``ivfpq`` the
    2^pq_bits centroids of each PQ sub-quantizer (trained on the same points). FAISS's own warning is
    silenced in :func:`build_index`; callers say these lines once per evaluation."""
    if kind not in ("ivf", "ivfpq"):
        return []
    points = min(n, TRAIN_PER_CENTROID * max(resolved["nlist"], 2 ** resolved.get("pq_bits", 0)))
    wanted = [("IVF", resolved["nlist"], "lists", "list")]
    if kind == "ivfpq":
        wanted.append(("PQ", 2 ** resolved["pq_bits"], "centroids per sub-vector", "centroid"))
    return [f"{what} trained on {points} points for {count} {unit}: fewer than FAISS recommends "
            f"({FAISS_MIN_PER_CENTROID} per {each}), recall may suffer"
            for what, count, unit, each in wanted if points < FAISS_MIN_PER_CENTROID * count]


def build_index(gallery: np.ndarray, kind: str, resolved: dict, *, seed: int = 0):
    """A faiss index of ``kind`` over ``gallery`` float32 [Ng, D] (ids 0..Ng-1), trained on a seeded
    sample of it and filled ADD_BLOCK rows at a time (no full in-memory copy of a memory-mapped set).
    FAISS's k-means warning about too few training points, printed by C++ on every training, is
    turned off (its only effect): :func:`training_shortfalls` reports the same condition once."""
    faiss = faiss_module()
    n, d = gallery.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, resolved["hnsw_m"], ip)
        index.hnsw.efConstruction = resolved["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = (faiss.IndexIVFFlat(quantizer, d, resolved["nlist"], ip) if kind == "ivf" else
                 faiss.IndexIVFPQ(quantizer, d, resolved["nlist"], resolved["pq_m"], resolved["pq_bits"], ip))
        for cp in (index.cp, index.pq.cp) if kind == "ivfpq" else (index.cp,):
            cp.seed = seed
            cp.max_points_per_centroid = TRAIN_PER_CENTROID
            cp.min_points_per_centroid = 1
        index.train(np.ascontiguousarray(gallery[_train_rows(n, resolved, seed)], dtype=np.float32))
    for start in range(0, n, ADD_BLOCK):
        index.add(np.ascontiguousarray(gallery[start:start + ADD_BLOCK], dtype=np.float32))
    return index


def search_params(kind: str, resolved: dict, selector=None):
    """faiss search parameters of ``kind`` (nprobe, efSearch), optionally restricted to ``selector``'s ids."""
    faiss = faiss_module()
    extra = {"sel": selector} if selector is not None else {}
    if kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(nprobe=resolved["nprobe"], **extra)
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=resolved["ef_search"], **extra)
    return faiss.SearchParameters(**extra)


def search(index, kind: str, resolved: dict, query: np.ndarray, depth: int, *, exclude_self: bool = False,
           selector=None, id_map: Optional[np.ndarray] = None) -> np.ndarray:
    """The ``depth`` best gallery items of each query row (int64 [Nq, depth], -1 for an empty slot).

    ``exclude_self``: query i is gallery item i; it is dropped from its own list (one more is fetched).
    ``selector``: a faiss IDSelector restricting the ids searched; ``id_map``: the gallery item of
    each index id (default: id = item).
    """
    params = search_params(kind, resolved, selector)
    fetch = depth + exclude_self
    out = np.empty((len(query), depth), np.int64)
    for start in range(0, len(query), SEARCH_BLOCK):
        block = np.ascontiguousarray(query[start:start + SEARCH_BLOCK], dtype=np.float32)
        _, ids = index.search(block, fetch, params=params)
        if id_map is not None:
            ids = np.where(ids >= 0, id_map[np.maximum(ids, 0)], -1)
        out[start:start + len(block)] = drop_own(ids, start, depth) if exclude_self else ids
    return out


def drop_own(ids: np.ndarray, start: int, depth: int) -> np.ndarray:
    """Rows of ``ids`` [B, K] (queries start..start+B-1) without the query's own id, first ``depth`` kept."""
    own = ids == (start + np.arange(len(ids)))[:, None]
    order = np.argsort(own, axis=1, kind="stable")  # the own id, if present, moves to the end
    return np.take_along_axis(ids, order, axis=1)[:, :depth]


def exact_topk(query: np.ndarray, gallery: np.ndarray, depth: int, *, exclude_self: bool = False,
               query_block: int = 1024, gallery_block: int = ADD_BLOCK) -> np.ndarray:
    """Exact top-``depth`` gallery ids by cosine (int64 [Nq, depth]), ties to the lower index.

    The gallery is read once, ``gallery_block`` rows at a time; each query keeps its running best
    ``depth``. Memory beyond the inputs: one [query_block, gallery_block] float32 block of
    similarities and the [Nq, depth] running lists, never an Nq x Ng matrix.
    """
    nq, ng = len(query), len(gallery)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    for gs in range(0, ng, gallery_block):
        g = np.asarray(gallery[gs:gs + gallery_block], dtype=np.float32)
        block_s, block_i = [], []
        for qs in range(0, nq, query_block):
            sim = np.asarray(query[qs:qs + query_block], dtype=np.float32) @ g.T
            if exclude_self:
                rows = np.arange(qs, qs + len(sim))
                inside = (rows >= gs) & (rows < gs + len(g))
                sim[np.flatnonzero(inside), rows[inside] - gs] = -np.inf
            idx = topk_indices(sim, min(depth, len(g)))
            block_s.append(np.take_along_axis(sim, idx, axis=1))
            block_i.append(idx + gs)
        s = np.concatenate([best_s, np.concatenate(block_s)], axis=1)
        i = np.concatenate([best_i, np.concatenate(block_i)], axis=1)
        order = np.lexsort((i, -s), axis=1)[:, :depth]
        best_s, best_i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    return best_i


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ exact[:, :k]| / k (both int [Nq, >= k], ids per row unique)."""
    hits = (found[:, :k, None] == exact[:, None, :k]).any(axis=2) & (found[:, :k] >= 0)
    return float(hits.sum(axis=1).mean() / k)


def average_precision_at(neighbour_labels: np.ndarray, query_labels: np.ndarray,
                         relevant_counts: np.ndarray) -> np.ndarray:
    """AP@K of each query over its ranked list (the index's order, no tie groups).

    Parameters
    ----------
    neighbour_labels : int [Nq, K], labels of the K retrieved items, best first (empty slots: a label
        no query has).
    query_labels : int [Nq].
    relevant_counts : int [Nq], relevant items in each query's whole gallery.

    Returns
    -------
    float64 [Nq]: (1 / min(R, K)) * sum over relevant ranks r <= K of precision@r; NaN when R = 0.
    With K = the whole gallery and no tied similarities it is the exact average precision.
    """
    hits = neighbour_labels == query_labels[:, None]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    denominator = np.minimum(relevant_counts, hits.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant_counts > 0, (precision * hits).sum(axis=1) / denominator, np.nan)


LIST_REQUIREMENTS = frozenset({FIRST_HIT, KNN_VOTE, FULL_RANKING})  # what a ranked top-K list can give


def list_outcomes(neighbours: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, *, k: int = 5,
                  exclude_self: bool = False, requires: AbstractSet[str] = LIST_REQUIREMENTS) -> QueryOutcomes:
    """Per-query outcomes of ranked neighbour lists, the index's order taken as the ranking.

    Parameters
    ----------
    neighbours : int [Nq, K], gallery ids best first, -1 for an empty slot (a wrong neighbour).
    query_labels : int [Nq]; gallery_labels : int [Ng].
    k : neighbours of the kNN vote (the first k of each list, k <= K).
    exclude_self : query i is gallery item i (not in its list, and not counted as relevant).
    requires : a subset of :data:`LIST_REQUIREMENTS`; other fields stay None.

    Returns
    -------
    :class:`QueryOutcomes`: ``first_hit`` the place of the first relevant item in the list (0 when
    none is among the K), ``knn_correct`` the vote of the first k, ``ap`` AP@K
    (:func:`average_precision_at`).
    """
    if not requires <= LIST_REQUIREMENTS:
        raise ValueError(f"a ranked top-K list cannot give {sorted(requires - LIST_REQUIREMENTS)}")
    empty = min(int(query_labels.min()), int(gallery_labels.min())) - 1
    labels = np.where(neighbours >= 0, gallery_labels[np.maximum(neighbours, 0)], empty)
    hits = labels == query_labels[:, None]
    out = QueryOutcomes()
    if FIRST_HIT in requires:
        out.first_hit = np.where(hits.any(axis=1), np.argmax(hits, axis=1) + 1, 0).astype(np.int64)
    if KNN_VOTE in requires:
        out.knn_correct = knn_predict(labels[:, :k]) == query_labels
    if FULL_RANKING in requires:
        values, counts = np.unique(gallery_labels, return_counts=True)
        position = np.clip(np.searchsorted(values, query_labels), 0, len(values) - 1)
        relevant = np.where(values[position] == query_labels, counts[position], 0) - int(exclude_self)
        out.ap = average_precision_at(labels, query_labels, relevant)
    return out


def neighbour_metrics(neighbours: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, *,
                      k: int = 5, exclude_self: bool = False) -> dict[str, float]:
    """``{index name: value}`` of the metrics reported through indexes (:func:`.table.index_metrics`:
    top1, top5, knn, mAP@K) of ranked neighbour ids [Nq, K]; K at least the deepest place they read
    and k. See :func:`list_outcomes` for the parameters."""
    return index_summary(list_outcomes(neighbours, query_labels, gallery_labels, k=k, exclude_self=exclude_self,
                                       requires=index_requirements()))


def embeddings_digest(embeddings: np.ndarray, rows: int = ADD_BLOCK) -> str:
    """sha256 over the shape and the float32 bytes of ``embeddings`` [N, D], read a block at a time."""
    h = hashlib.sha256(json.dumps(list(embeddings.shape)).encode())
    for start in range(0, len(embeddings), rows):
        h.update(np.ascontiguousarray(embeddings[start:start + rows], dtype=np.float32).tobytes())
    return h.hexdigest()


def cache_name(kind: str, resolved: dict, digest: str, seed: int) -> str:
    """File name of an index: kind, a hash of its parameters and faiss version, and the set's digest."""
    faiss = faiss_module()
    key = json.dumps({"kind": kind, **resolved, "seed": seed, "faiss": faiss.__version__}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}-{digest[:16]}.faiss"
