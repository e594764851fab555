"""Backward-compatibility matrices (BCT, Shen et al. 2020), the multi-model criteria and their uncertainty.

C[i][j] = metric of queries embedded by model i against the gallery embedded by model j, for
j <= i (NaN above the diagonal). The papers' empirical criterion for a pair i > j is
C[i][j] > C[j][j]; the criteria below keep the papers' definitions and are evidence only: whether a
pair is *compatible* is the decision rule's verdict (:mod:`.decision`), never these. With T models
(0-based indices here, models 1..T in the papers):

* AC (Biondi et al., CL2R / CoReS): the fraction of pairs i > j meeting the empirical criterion; AC of
  model i: the fraction of its older models it meets it against. AM: the mean of C[i][j] over i >= j.
* BC = mean over j < T-1 of (C[T-1][j] - C[j][j]): the newest model against every older gallery.
  FC = mean over i >= 1 of (C[i][i-1] - C[i][i]): each model's queries on the previous gallery
  against a full re-index.
* Update gain of a cell: (C[i][j] - C[j][j]) / (C[i][i] - C[j][j]), the part of a full re-index's
  improvement obtained without re-indexing; undefined (NaN) unless the re-index's change
  C[i][i] - C[j][j] is itself significant (its bootstrap interval excludes 0): a ratio over a
  denominator that may be noise is noise.
* Negative flip rate (Yan et al., "Positive-Congruent Training", CVPR 2021) of a cell i > j: the
  fraction of queries that model j answered right against its own gallery and model i's query
  answers wrong against the same gallery (the metrics marked ``flip`` in :mod:`.table`: top-1, kNN).

Every metric computed (:func:`.table.chosen` by default: the label metrics of :data:`.table.METRICS`
but the opt-in exact mAP; the label-free ones of :data:`.table.LABEL_FREE`, :mod:`.labelfree`, on
request) gets its matrix, criteria and per-cell tests.

Uncertainty: see :mod:`.significance`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import table
from .cka import linear_cka_matrix
from .labelfree import item_outcomes
from .neighbours import cmc_curve
from .ranking import FIRST_HIT, QueryOutcomes, check_depth, retrieval_outcomes
from .significance import RESAMPLES, SEED, bootstrap_means, count_interval, interval, mcnemar_exact

CMC_DEPTH = 10


@dataclass
class CellTest:
    """One cell i > j of one metric, evidence for the pair: ``difference`` C[i][j] - C[j][j] (the mean
    paired per-query difference), its bootstrap ``low``/``high`` bounds, the bounds
    ``reindex_low``/``reindex_high`` of the re-index's change C[i][i] - C[j][j] (the update gain's
    denominator) and McNemar's ``gained``/``lost``/``p_value`` (None for metrics that are not
    right/wrong, ``Metric.binary``). No verdict: that is the decision rule's (:mod:`.decision`)."""

    query: int
    gallery: int
    difference: float
    low: float
    high: float
    reindex_low: float = float("nan")
    reindex_high: float = float("nan")
    gained: Optional[int] = None
    lost: Optional[int] = None
    p_value: Optional[float] = None


@dataclass
class Criteria:
    """Point criteria of one metric's matrix (see the module doc) and, when computed on per-query
    values, their intervals and per-cell tests.

    ``criterion``: (i, j, C[i][j] > C[j][j]) for every i > j (the papers' empirical criterion, not the
    decision rule's verdict); ``margins`` [T, T]: C[i][j] - C[j][j] for i > j, NaN elsewhere;
    ``update_gain`` [T, T] likewise (NaN also where undefined); ``ac_per_model`` [T] (NaN for the first
    model); ``intervals``: name -> (low, high) for AC (a count interval,
    :func:`.significance.count_interval`), BC and FC (bootstrap percentile intervals);
    ``diagonal_low``/``diagonal_high`` [T]: the bounds of each model's own C[i][i] (empty until
    computed on per-query values).
    """

    AC: float
    AM: float
    BC: float
    FC: float
    criterion: list[tuple[int, int, bool]]
    margins: np.ndarray
    update_gain: np.ndarray
    ac_per_model: np.ndarray
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    tests: list[CellTest] = field(default_factory=list)
    diagonal_low: np.ndarray = field(default_factory=lambda: np.empty(0))
    diagonal_high: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass
class Compatibility:
    """``metrics[name]`` [T, T] lower-triangular matrices of the metrics computed (table order),
    ``criteria[name]``, ``cka`` [T, T] symmetric,
    ``cmc`` [T, T, depth] (NaN above the diagonal), ``negative_flips[name]`` [T, T] for each flip
    metric (:func:`.table.flip_names`; NaN except below the diagonal), ``queries`` N,
    ``resamples``/``seed`` of the bootstrap and ``seconds`` spent per stage (cells: products and
    ranking of every metric; bootstrap: the resampled means; tests_and_criteria: McNemar, intervals,
    criteria, CMC, flips; cka; decision, added by :func:`evaluate.pipeline.evaluate_sets`: the rule
    and the backfill search of not-compatible pairs). ``per_query[name]`` float64 [N, cells]: the
    per-query values of every cell i >= j, columns in the order of ``cells`` (see :meth:`values`).
    ``metrics`` holds the metrics computed, in table order (:func:`.table.known`). With the label-free
    metrics: ``self_rank`` {"median", "p90"} [T, T] of the self-retrieval places (CMC is then their
    distribution when no label metric was computed) and ``neighbours`` {j: int64 [N, k]}, model j's own
    neighbourhoods, the reference of overlap@k (also on a backfilled gallery of j)."""

    metrics: dict[str, np.ndarray]
    criteria: dict[str, Criteria]
    cka: np.ndarray
    cmc: np.ndarray
    negative_flips: dict[str, np.ndarray]
    queries: int
    resamples: int
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    cells: list[tuple[int, int]] = field(default_factory=list)
    self_rank: dict[str, np.ndarray] = field(default_factory=dict)
    neighbours: dict[int, np.ndarray] = field(default_factory=dict)

    def values(self, name: str, i: int, j: int) -> np.ndarray:
        """Per-query values float64 [N] of metric ``name`` in cell (i, j), j <= i (NaN: no value)."""
        return self.per_query[name][:, self.cells.index((i, j))]


def _reduce(matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """AC, BC, FC of matrices [..., T, T] (NaN when undefined, i.e. fewer than two models)."""
    t = matrix.shape[-1]
    if t < 2:
        nan = np.full(matrix.shape[:-2], np.nan)
        return nan, nan, nan
    i, j = np.tril_indices(t, -1)
    diagonal = np.diagonal(matrix, axis1=-2, axis2=-1)
    margins = matrix[..., i, j] - diagonal[..., j]
    bc = (matrix[..., t - 1, :t - 1] - diagonal[..., :t - 1]).mean(axis=-1)
    fc = (matrix[..., np.arange(1, t), np.arange(t - 1)] - diagonal[..., 1:]).mean(axis=-1)
    return (margins > 0).mean(axis=-1), bc, fc


def criteria(matrix: np.ndarray, *, min_denominator: float = 0.0) -> Criteria:
    """Point criteria of a lower-triangular matrix C [T, T] (see the module doc).

    ``min_denominator``: the update gain is undefined where |C[i][i] - C[j][j]| < this (and where it is 0).
    """
    t = len(matrix)
    margins, gain = np.full((t, t), np.nan), np.full((t, t), np.nan)
    criterion = []
    for i in range(t):
        for j in range(i):
            margins[i, j] = matrix[i, j] - matrix[j, j]
            criterion.append((i, j, bool(matrix[i, j] > matrix[j, j])))
            denominator = matrix[i, i] - matrix[j, j]
            if abs(denominator) >= min_denominator and denominator != 0:
                gain[i, j] = margins[i, j] / denominator
    ac_per_model = np.array([np.mean([ok for a, _, ok in criterion if a == i]) if i else np.nan for i in range(t)])
    ac, bc, fc = (float(x) for x in _reduce(matrix))
    return Criteria(AC=ac, AM=float(np.mean(matrix[np.tril_indices(t)])), BC=bc, FC=fc, criterion=criterion,
                    margins=margins, update_gain=gain, ac_per_model=ac_per_model)


def _with_significance(point: Criteria, name: str, per_query: np.ndarray, resampled: np.ndarray) -> Criteria:
    """``point`` with intervals and cell tests from ``per_query`` [N, T, T] values of metric ``name``
    and the bootstrap means of its cells ``resampled`` [B, T, T]; the update gain is left undefined
    where the re-index's change C[i][i] - C[j][j] is not significant (its interval holds 0)."""
    t = per_query.shape[1]
    i, j = np.tril_indices(t, -1)
    low, high = interval(resampled[:, i, j] - resampled[:, j, j])
    reindex_low, reindex_high = interval(resampled[:, i, i] - resampled[:, j, j])
    tests = []
    for n, (a, b) in enumerate(zip(i, j)):
        test = CellTest(query=int(a), gallery=int(b), difference=float(point.margins[a, b]), low=float(low[n]),
                        high=float(high[n]), reindex_low=float(reindex_low[n]), reindex_high=float(reindex_high[n]))
        if not (test.reindex_low > 0 or test.reindex_high < 0):
            point.update_gain[a, b] = np.nan
        if table.metric(name).binary:
            old, new = per_query[:, b, b] > 0, per_query[:, a, b] > 0
            test.gained, test.lost = int(np.sum(new & ~old)), int(np.sum(old & ~new))
            test.p_value = mcnemar_exact(test.lost, test.gained)
        tests.append(test)
    bounds = {"AC": count_interval(per_query[:, i, j] - per_query[:, j, j]),
              **{key: tuple(float(x) for x in interval(value)) for key, value in zip(("BC", "FC"), _reduce(resampled)[1:])}}
    point.intervals, point.tests = bounds if t > 1 else {}, sorted(tests, key=lambda c: (c.query, c.gallery))
    point.diagonal_low, point.diagonal_high = interval(np.diagonal(resampled, axis1=1, axis2=2))
    return point


def _cells(query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: Optional[np.ndarray],
           gallery_labels: Optional[np.ndarray], k: int, exclude_self: bool, names: Sequence[str],
           progress: Optional[Callable[[int, int], None]], search: Callable) -> dict[tuple[int, int], dict]:
    """``{(i, j): {"labels": QueryOutcomes or None, "items": ItemOutcomes or None}}`` of every cell j <= i:
    the label metrics' ranking (with the first relevant place CMC reads) and the label-free one, each
    only when ``names`` holds one of its metrics; ``search`` ranks a cell for the label metrics (as
    :func:`.ranking.retrieval_outcomes`). Row j's diagonal cell is computed before the cells
    (i > j) whose neighbourhoods it is the reference of."""
    t = len(query)
    chosen = [table.metric(n) for n in names]
    label_requires = frozenset().union(*(m.requires for m in chosen if m.labels))
    item_requires = frozenset().union(*(m.requires for m in chosen if not m.labels))
    if label_requires:
        label_requires |= {FIRST_HIT}  # CMC reads the first relevant place
    outcomes: dict[tuple[int, int], dict] = {}
    for i in range(t):
        for j in range(i + 1):
            cell = {"labels": None, "items": None}
            if label_requires:
                cell["labels"] = search(query[i], query_labels, gallery[j], gallery_labels, k=k,
                                        exclude_self=exclude_self, requires=label_requires)
            if item_requires:
                own = outcomes[j, j]["items"].neighbours if i > j else None
                cell["items"] = item_outcomes(query[i], gallery[j], k=k, requires=item_requires, reference=own)
            outcomes[i, j] = cell
            if progress:
                progress(len(outcomes), t * (t + 1) // 2)
    return outcomes


def _cell_values(cell: dict, name: str) -> np.ndarray:
    """Per-query values of metric ``name`` in a cell of :func:`_cells`."""
    return table.per_query(cell["labels" if table.metric(name).labels else "items"], name)


def _self_rank(outcomes: dict[tuple[int, int], dict], t: int) -> dict[str, np.ndarray]:
    """Median and 90th percentile (numpy's linear interpolation) of cross-model self-retrieval places,
    [T, T] each (NaN above the diagonal); {} when self-retrieval was not computed."""
    if outcomes[0, 0]["items"] is None or outcomes[0, 0]["items"].self_place is None:
        return {}
    summary = {"median": np.full((t, t), np.nan), "p90": np.full((t, t), np.nan)}
    for (i, j), cell in outcomes.items():
        summary["median"][i, j], summary["p90"][i, j] = np.percentile(cell["items"].self_place, [50, 90])
    return summary


def _cmc_and_flips(outcomes: dict[tuple[int, int], dict], t: int, depth: int,
                   names: Sequence[str]) -> tuple[np.ndarray, dict]:
    """CMC curves (of the first relevant place; without labels, of the self-retrieval place) and the
    negative flip rates of the flip metrics among ``names``."""
    cmc = np.full((t, t, depth), np.nan)
    flips = {name: np.full((t, t), np.nan) for name in table.flip_names() if name in names}
    for (i, j), cell in outcomes.items():
        labelled = cell["labels"]
        cmc[i, j] = cmc_curve(labelled.first_hit if labelled else cell["items"].self_place, depth)
        if i > j:
            for name in flips:
                old, new = _cell_values(outcomes[j, j], name) > 0, _cell_values(cell, name) > 0
                flips[name][i, j] = float(np.mean(old & ~new))
    return cmc, flips


def _table_order(metrics: Sequence[str]) -> list[str]:
    """``metrics`` in table order (:func:`.table.known`); ValueError naming an unknown one."""
    unknown = sorted(set(metrics) - set(table.known()))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: expected among {table.known()}")
    return [name for name in table.known() if name in metrics]


def compatibility(query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: Optional[np.ndarray],
                  gallery_labels: Optional[np.ndarray], *, k: int = 5, exclude_self: bool = False,
                  progress: Optional[Callable[[int, int], None]] = None, resamples: int = RESAMPLES,
                  seed: int = SEED, metrics: Optional[Sequence[str]] = None,
                  search: Callable[..., QueryOutcomes] = retrieval_outcomes) -> Compatibility:
    """Every metric for every pair (query model i, gallery model j <= i), criteria with intervals, CMC,
    negative flip rates and CKA.

    Parameters
    ----------
    query : T arrays float32 [Nq, D], the query images embedded by models 1..T (L2-normalised).
    gallery : T arrays float32 [Ng, D], the gallery images embedded by the same models, same order.
    query_labels : int [Nq]; gallery_labels : int [Ng]; None for unlabelled data (label-free metrics only).
    k : neighbours of the kNN vote and of the label-free neighbourhood agreement (overlap@k).
    exclude_self : query and gallery are the same images in the same order: leave each query's own
        image out of its gallery (label metrics; the label-free ones have their own convention, :mod:`.labelfree`).
    progress : called with (cells done, cells in all) after each cell.
    resamples, seed : of the bootstrap (:mod:`.significance`).
    metrics : names of :func:`.table.known` to compute (default :func:`.table.chosen`: the label metrics
        but the exact mAP), listed in table order. Label-free ones need query and gallery to be the same items.
    search : ranks one cell for the label metrics, as :func:`.ranking.retrieval_outcomes` (the default)
        does; ``evaluate.search.device.DeviceSearch.retrieval_outcomes`` runs the products on a device.

    Returns
    -------
    :class:`Compatibility`; CKA is between the models' query embeddings.
    """
    names = _table_order(table.chosen() if metrics is None else metrics)
    t, n = len(query), len(query[0])
    if any(table.metric(name).labels for name in names):
        check_depth(len(gallery[0]) - exclude_self, table.ranked_places(k))
    start = time.perf_counter()
    outcomes = _cells(query, gallery, query_labels, gallery_labels, k, exclude_self, names, progress, search)
    seconds = {"cells": time.perf_counter() - start}
    start = time.perf_counter()
    lower = list(outcomes)
    per_query = {name: np.stack([_cell_values(outcomes[c], name) for c in lower], axis=1) for name in names}  # [N, cells]
    resampled = bootstrap_means(np.concatenate([per_query[name] for name in names], axis=1),
                                resamples=resamples, seed=seed)
    seconds["bootstrap"] = time.perf_counter() - start
    start = time.perf_counter()
    matrices, result_criteria = {}, {}
    rows, cols = np.array(lower).T
    for m, name in enumerate(names):
        values, boot = np.full((n, t, t), np.nan), np.full((resamples, t, t), np.nan)
        values[:, rows, cols] = per_query[name]
        boot[:, rows, cols] = resampled[:, m * len(lower):(m + 1) * len(lower)]
        matrices[name] = np.full((t, t), np.nan)
        matrices[name][rows, cols] = [table.metric_mean(per_query[name][:, c]) for c in range(len(lower))]
        result_criteria[name] = _with_significance(criteria(matrices[name]), name, values, boot)
    cmc, flips = _cmc_and_flips(outcomes, t, min(CMC_DEPTH, len(gallery[0]) - exclude_self), names)
    seconds["tests_and_criteria"] = time.perf_counter() - start
    start = time.perf_counter()
    cka = linear_cka_matrix(query)
    seconds["cka"] = time.perf_counter() - start
    return Compatibility(metrics=matrices, criteria=result_criteria, cka=cka, cmc=cmc, negative_flips=flips,
                         queries=n, resamples=resamples, seed=seed, seconds=seconds, per_query=per_query,
                         cells=list(lower), self_rank=_self_rank(outcomes, t), neighbours=_neighbours(outcomes, t))


def _neighbours(outcomes: dict, t: int) -> dict[int, np.ndarray]:
    """Each diagonal cell's label-free neighbourhoods (gallery model j -> its items' k nearest), where computed."""
    items = {j: outcomes[j, j]["items"] for j in range(t)}
    return {j: o.neighbours for j, o in items.items() if o is not None and o.neighbours is not None}
