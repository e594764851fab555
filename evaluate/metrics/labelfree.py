"""Label-free compatibility (issue 24): what a gallery's users see when the same item comes back as a
query, measured without labels on query and gallery sets of the same items (query item n is gallery
item n: the same data, the same order).

For a cell (query model i, gallery model j), by cosine similarity over L2-normalised float32 rows:

* *cross-model self-retrieval*: the place (1-based) of gallery item n, as model j embedded it, in the
  ranking of j's gallery for item n's query as model i embedded it. The item is the target, so it is
  never left out of the gallery (``--include-self`` does not apply). Places follow :mod:`.ranking`'s
  total order: decreasing similarity, equal similarities by increasing gallery index. The metrics
  self-top1 / self-top5 (:mod:`.table`) are place <= 1 / <= 5; the places' distribution is the CMC
  curve of an unlabelled evaluation and is summarised by its median and 90th percentile.
* *neighbourhood agreement*: overlap@k = |N(q_j[n]) ∩ N(q_i[n])| / k, where N(q) are the k gallery
  items of j's gallery nearest to the query q (ties by increasing index, as :func:`.ranking.topk_indices`)
  with item n itself **always left out** of item n's neighbourhood, under both queries: it is the
  target of self-retrieval, not a neighbour, and keeping it would count one agreement whenever both
  queries retrieve it. q_j[n] is the deployed model's own query (the neighbourhood its users see
  today), q_i[n] the candidate's, on the same gallery.

On the diagonal (i = j) both are 1 by construction: each item retrieves itself first, and its
neighbourhood is its own (an exact duplicate of an item with a lower index can take its first place).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Optional

import numpy as np

from . import ranking
from .neighbours import topk_indices
from .ranking import _BLOCK_ELEMENTS

SELF_PLACE = "self_place"  # the place of each query's own item in the gallery's ranking
NEIGHBOURHOOD = "neighbourhood"  # the overlap of its k nearest gallery items with the deployed model's
FIELDS = {SELF_PLACE: ("self_place",), NEIGHBOURHOOD: ("overlap",)}
REQUIREMENTS = frozenset(FIELDS)


@dataclass
class ItemOutcomes:
    """Per-item results of one query set against a gallery of the same items; None when not required.

    ``self_place`` (:data:`SELF_PLACE`): int64 [N], 1-based place of the item's own gallery entry;
    ``overlap`` (:data:`NEIGHBOURHOOD`): float64 [N] in [0, 1], overlap@k with the reference
    neighbourhoods; ``neighbours``: int64 [N, k], the k nearest gallery items, the item left out, best
    first (the reference of the cells that use this one's gallery with another model's queries).
    """

    self_place: Optional[np.ndarray] = None
    overlap: Optional[np.ndarray] = None
    neighbours: Optional[np.ndarray] = None


def check_requirements(requires: AbstractSet[str]) -> frozenset:
    """``requires`` as a frozenset, or ValueError naming what the label-free ranking cannot compute."""
    return ranking.check_requirements(requires, known=REQUIREMENTS, what="label-free")


def self_places(similarity: np.ndarray, start: int) -> np.ndarray:
    """Places (1-based, total order) of items ``start + r`` in row r of ``similarity`` [b, N]: one plus the
    items more similar, plus the items as similar with a lower index. int64 [b]."""
    rows = np.arange(len(similarity))
    own = similarity[rows, rows + start][:, None]
    tied_before = (similarity == own) & (np.arange(similarity.shape[1])[None, :] < (rows + start)[:, None])
    return 1 + (similarity > own).sum(axis=1) + tied_before.sum(axis=1)


def overlap(neighbours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Share of each row's items that the same row of ``reference`` holds: float64 [N] from int [N, k]
    arrays of distinct indices per row."""
    return (neighbours[:, :, None] == reference[:, None, :]).any(axis=2).sum(axis=1) / neighbours.shape[1]


def item_outcomes(query: np.ndarray, gallery: np.ndarray, *, k: int, requires: AbstractSet[str] = REQUIREMENTS,
                  reference: Optional[np.ndarray] = None) -> ItemOutcomes:
    """The outcomes ``requires`` asks for, of the items' queries [N, D] against their gallery [N, D] (row n
    of both is item n), in row blocks of bounded memory.

    ``k``: neighbours of the neighbourhood, 1 <= k <= N - 1. ``reference``: int [N, k], the deployed
    model's own neighbourhoods (:attr:`ItemOutcomes.neighbours` of its diagonal cell); None: this cell
    is its own reference (a diagonal cell), overlap 1.
    """
    requires = check_requirements(requires)
    query, gallery = np.asarray(query), np.asarray(gallery)
    n = len(query)
    if len(gallery) != n:
        raise ValueError(f"label-free metrics need the same items as queries and gallery ({n} and {len(gallery)})")
    neighbourhood = NEIGHBOURHOOD in requires
    if neighbourhood and not 1 <= k <= n - 1:
        raise ValueError(f"k={k} must be between 1 and {n - 1}, the gallery items besides the query's own")
    places, neighbours = np.empty(n, np.int64), np.empty((n, k if neighbourhood else 0), np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, block):
        similarity = query[start:start + block] @ gallery.T
        if SELF_PLACE in requires:
            places[start:start + block] = self_places(similarity, start)
        if neighbourhood:
            rows = np.arange(len(similarity))
            similarity[rows, rows + start] = -np.inf
            neighbours[start:start + block] = topk_indices(similarity, k)
    out = ItemOutcomes(self_place=places if SELF_PLACE in requires else None)
    if neighbourhood:
        out.neighbours = neighbours
        out.overlap = overlap(neighbours, neighbours if reference is None else reference)
    return out
