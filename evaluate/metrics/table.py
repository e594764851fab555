"""Every retrieval metric, declared once: :data:`METRICS`, one :class:`Metric` entry per metric.

An entry says how the metric's per-query values come from the ranking's outcomes
(:class:`.ranking.QueryOutcomes`), what the ranking must compute for it (``requires``, a subset of
:data:`.ranking.REQUIREMENTS`, as pytorch-metric-learning's ``AccuracyCalculator.requires_knn()``
declares what its k-NN step computes), and how statistics and reports treat it. Everything that
lists metrics reads this table, in its order: the compatibility matrices, their criteria and
per-cell tests, negative flips, the index cells, backfilling curves, precision rows, the report
files' keys and the figures. Adding a metric is adding one entry and its ``calculate_*`` function.

An ``opt_in`` entry is computed only when asked for (:func:`chosen`; ``evaluate --full-map``): exact
mAP over the whole gallery needs every similarity row sorted (:data:`.ranking.FULL_RANKING`), where
the others need only each row's first R places.

:data:`LABEL_FREE` declares the label-free metrics the same way (:mod:`.labelfree`: cross-model
self-retrieval, neighbourhood agreement; ``Metric.labels`` False): an evaluation computes them on
unlabelled data, and beside the label metrics when asked for (``evaluate --label-free``); what lists an
evaluation's metrics reads the keys of its result (``Compatibility.metrics``), in this table order.

Conventions: ``calculate(outcomes)`` returns float64 [Nq], NaN where a query has no value (left out
of the metric's mean); it reads only the outcome fields its ``requires`` fill. A binary metric's
values are 1.0 (right) or 0.0 (wrong).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import AbstractSet, Callable, Optional, Sequence

import numpy as np

from . import labelfree
from .labelfree import NEIGHBOURHOOD, SELF_PLACE, ItemOutcomes
from .neighbours import topk_hits
from .ranking import (FIRST_HIT, FIRST_R, FULL_RANKING, KNN_VOTE, OUTCOME_FIELDS, QueryOutcomes, check_depth,
                      check_requirements, retrieval_outcomes)


@dataclass(frozen=True)
class Metric:
    """One retrieval metric.

    Attributes
    ----------
    name : its key in every matrix, criterion, report file and figure name (``heatmap_<name>.png``).
    calculate : outcomes -> per-query values, float64 [Nq] (NaN: no value); the metric is their mean.
    requires : what the ranking step must compute for ``calculate`` (see :data:`.ranking.REQUIREMENTS`).
    description : one line saying what it measures, for readers of reports and documentation.
    label : how prose names it (default: ``name``).
    binary : right/wrong per query: McNemar's exact test decides a cell together with the interval.
    flip : its negative flip rate is reported (a binary metric only).
    index_name : its name when measured on an index's ranked top-K lists, None when not reported
        through indexes; there ``calculate`` sees the outcomes of the lists
        (:func:`evaluate.search.indexes.list_outcomes`).
    places : the deepest place of a ranking it looks at (top-k: k; 1 when it reads no fixed depth);
        each query's gallery, and an index's lists, must hold at least as many items.
    opt_in : computed only when asked for (:func:`chosen`), for its cost; through an index it is
        always reported (``index_name``: its ranked lists are short).
    labels : whether it compares labels (``requires`` among :data:`.ranking.REQUIREMENTS`); False: a
        label-free metric, ``requires`` among :data:`.labelfree.REQUIREMENTS`, ``calculate`` reading
        :class:`.labelfree.ItemOutcomes`.
    """

    name: str
    calculate: Callable[[QueryOutcomes], np.ndarray]
    requires: AbstractSet[str]
    description: str
    label: Optional[str] = None
    binary: bool = False
    flip: bool = False
    index_name: Optional[str] = None
    places: int = 1
    opt_in: bool = False
    labels: bool = True

    def __post_init__(self):
        check = check_requirements if self.labels else labelfree.check_requirements
        object.__setattr__(self, "requires", check(self.requires))
        object.__setattr__(self, "label", self.label or self.name)
        if self.flip and not self.binary:
            raise ValueError(f"metric {self.name}: a negative flip rate needs a right/wrong (binary) metric")


def calculate_topk(outcomes: QueryOutcomes, *, k: int) -> np.ndarray:
    """1.0 where a relevant item is among the first ``k`` places, else 0.0 (float64 [Nq])."""
    return topk_hits(outcomes.first_hit, k).astype(np.float64)


def calculate_knn(outcomes: QueryOutcomes) -> np.ndarray:
    """1.0 where the majority label of the k nearest items is the query's own, else 0.0."""
    return outcomes.knn_correct.astype(np.float64)


def calculate_ap(outcomes: QueryOutcomes) -> np.ndarray:
    """Average precision over the ranking (NaN: no relevant item)."""
    return outcomes.ap


def calculate_ap_at_r(outcomes: QueryOutcomes) -> np.ndarray:
    """AP over the first R places (NaN: no relevant item)."""
    return outcomes.ap_at_r


def calculate_r_precision(outcomes: QueryOutcomes) -> np.ndarray:
    """Share of the first R places that are relevant (NaN: no relevant item)."""
    return outcomes.r_precision


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("top1", partial(calculate_topk, k=1), {FIRST_HIT}, "share of queries whose first-ranked item is "
           "relevant", label="top-1", binary=True, flip=True, index_name="top1"),
    Metric("top5", partial(calculate_topk, k=5), {FIRST_HIT}, "share of queries with a relevant item among the "
           "first five", label="top-5", binary=True, index_name="top5", places=5),
    Metric("knn", calculate_knn, {KNN_VOTE}, "share of queries whose k nearest items' majority label is their "
           "own", label="kNN", binary=True, flip=True, index_name="knn"),
    Metric("mAP", calculate_ap, {FULL_RANKING}, "mean average precision over the whole ranked gallery "
           "(sklearn's ties; evaluate --full-map: every similarity row sorted); through an index, over its top K "
           "(normalised by min(R, K))", index_name="mAP@K", opt_in=True),
    Metric("mAP@R", calculate_ap_at_r, {FIRST_R}, "mean AP over the first R places, R = the query's relevant "
           "items (Musgrave et al. 2020)"),
    Metric("R-precision", calculate_r_precision, {FIRST_R}, "mean share of relevant items among the first R "
           "places"),
)}


def calculate_self_topk(outcomes: ItemOutcomes, *, k: int) -> np.ndarray:
    """1.0 where the item's own gallery entry is among the first ``k`` places, else 0.0 (float64 [N])."""
    return (outcomes.self_place <= k).astype(np.float64)


def calculate_overlap(outcomes: ItemOutcomes) -> np.ndarray:
    """overlap@k of the item's neighbourhood with the deployed model's own (float64 [N])."""
    return outcomes.overlap


LABEL_FREE: dict[str, Metric] = {m.name: m for m in (
    Metric("self-top1", partial(calculate_self_topk, k=1), {SELF_PLACE}, "share of items whose query embedded by "
           "the candidate retrieves the item's own gallery entry first (cross-model self-retrieval)",
           label="self-top-1", binary=True, labels=False),
    Metric("self-top5", partial(calculate_self_topk, k=5), {SELF_PLACE}, "share of items whose query embedded by "
           "the candidate retrieves the item's own gallery entry among the first five", label="self-top-5",
           binary=True, places=5, labels=False),
    Metric("overlap@k", calculate_overlap, {NEIGHBOURHOOD}, "mean share of an item's k nearest gallery items (the "
           "item left out) that the candidate's query shares with the deployed model's own query (k = --k)",
           labels=False),
)}


def metric(name: str) -> Metric:
    """The entry of ``name`` in :data:`METRICS` or :data:`LABEL_FREE`; KeyError when neither holds it."""
    return METRICS[name] if name in METRICS else LABEL_FREE[name]


def known() -> list[str]:
    """Every metric's name, label metrics first, each table in its order."""
    return [*METRICS, *LABEL_FREE]


def chosen(*, full_map: bool = False) -> tuple[str, ...]:
    """The metrics computed, in table order: every entry but the opt-in ones, and those too with
    ``full_map`` (``evaluate --full-map``)."""
    return tuple(m.name for m in METRICS.values() if full_map or not m.opt_in)


def requirements(names: Optional[Sequence[str]] = None) -> frozenset:
    """What the ranking must compute for the metrics ``names`` (default: :func:`chosen`)."""
    return frozenset().union(*(METRICS[n].requires for n in (chosen() if names is None else names)))


def index_requirements() -> frozenset:
    """What an index's ranked lists must give for the metrics reported through indexes."""
    return frozenset().union(*(m.requires for m in METRICS.values() if m.index_name))


def flip_names() -> list[str]:
    """The metrics whose negative flip rate is reported, in table order."""
    return [m.name for m in METRICS.values() if m.flip]


def binary_names() -> list[str]:
    """The right/wrong metrics (McNemar applies), in table order."""
    return [m.name for m in METRICS.values() if m.binary]


def index_metrics() -> list[Metric]:
    """The metrics reported through indexes, in table order."""
    return [m for m in METRICS.values() if m.index_name]


def deepest(*, indexed: bool = False) -> tuple[str, int]:
    """(name, places) of the metric that looks deepest into a ranking: every query's gallery must
    hold that many items. ``indexed``: among the metrics reported through indexes, by their index
    name (an index's lists must be that long)."""
    chosen = index_metrics() if indexed else list(METRICS.values())
    metric = max(chosen, key=lambda m: m.places)
    return (metric.index_name if indexed else metric.name), metric.places


def ranked_places(k: int) -> int:
    """Items each query's gallery must hold: the deepest place a metric reads, and ``k`` for a kNN vote."""
    return max(deepest()[1], k if KNN_VOTE in requirements() else 1)


def per_query(outcomes: QueryOutcomes | ItemOutcomes, name: str) -> np.ndarray:
    """The per-query values of metric ``name`` (float64 [Nq], NaN = no value) from the ranking's
    outcomes (:class:`.labelfree.ItemOutcomes` for a label-free metric); ValueError when the outcomes
    lack what the metric requires."""
    entry = metric(name)
    fields = OUTCOME_FIELDS if entry.labels else labelfree.FIELDS
    missing = sorted(r for r in entry.requires if any(getattr(outcomes, f, None) is None for f in fields[r]))
    if missing:
        raise ValueError(f"metric {name} requires {', '.join(missing)}, which the ranking did not compute")
    return entry.calculate(outcomes)


def metric_mean(values: np.ndarray) -> float:
    """A metric's value from its per-query values: their mean, NaN (no value) left out; NaN when none has one."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summary(outcomes: QueryOutcomes, names: Optional[Sequence[str]] = None) -> dict[str, float]:
    """``{name: mean of its per-query values}`` for the label metrics ``names`` (default: :func:`chosen`),
    in table order; NaN when no query has one."""
    return {name: metric_mean(per_query(outcomes, name)) for name in (chosen() if names is None else names)}


def index_summary(outcomes: QueryOutcomes) -> dict[str, float]:
    """``{index name: mean}`` of the metrics reported through indexes, from a ranked list's outcomes."""
    return {m.index_name: metric_mean(per_query(outcomes, m.name)) for m in index_metrics()}


def retrieval_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                      *, k: int = 5, exclude_self: bool = False, threads: Optional[int] = None,
                      names: Optional[Sequence[str]] = None) -> dict[str, float]:
    """``{name: value}`` of the metrics ``names`` (default: :func:`chosen`, in table order) of queries
    against a gallery, ranked once for what they require; see :func:`.ranking.retrieval_outcomes` for
    the parameters (shapes [Nq, D], [Nq], [Ng, D], [Ng]). ValueError when a query's gallery holds
    fewer items than :func:`ranked_places`."""
    names = chosen() if names is None else tuple(names)
    check_depth(len(gallery) - exclude_self, ranked_places(k))
    return summary(retrieval_outcomes(query, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self,
                                      threads=threads, requires=requirements(names)), names)
