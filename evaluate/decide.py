"""The decision over an evaluation's arrays: the rule and backfill grid ``evaluate`` was given
(:class:`DecisionOptions`), and the backfill search that finds the smallest fraction of a gallery to
re-embed (:func:`backfill_values`, :func:`decide_arrays`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from .metrics.compat import Compatibility
from .metrics.decision import DEFAULT_METRIC, Decision, Rule, Values, decide
from .metrics.table import metric as table_metric
from .metrics.unlabelled import metric_names, primary_metric, require_same_items
from .search.backfill import backfill_order, backfilled_counts, backfilled_values, fractions


@dataclass(frozen=True)
class DecisionOptions:
    """The decision ``rule`` and the backfill grid it searches for not-compatible pairs: f = 0,
    1/``steps``, ..., 1, items re-embedded in a random order of seed ``seed`` or the one in ``order_file``
    (as ``evaluate --backfill-steps/--backfill-seed/--backfill-order``); ``label_free``: compute the
    label-free metrics on labelled data too (``--label-free``); ``metric_given``: the rule's metric was
    asked for by name (``--primary-metric``): on unlabelled data a label metric is then refused, where
    otherwise it gives way to self-top1 (:mod:`.metrics.unlabelled`); ``full_map``: compute the exact mAP
    over the whole gallery too (``--full-map``; it sorts every similarity row)."""

    rule: Rule = field(default_factory=Rule)
    steps: int = 10
    seed: int = 0
    order_file: Optional[str] = None
    label_free: bool = False
    metric_given: bool = False
    full_map: bool = False

    @classmethod
    def of(cls, metric: Optional[str], tolerance: float, steps: int, seed: int, order_file: Optional[str], *,
           label_free: bool = False, full_map: bool = False) -> "DecisionOptions":
        """The options of ``evaluate``'s values (--primary-metric, None: the data's default; --tolerance,
        --backfill-*, --label-free, --full-map); InputError for a metric or tolerance the rule refuses, before any work."""
        return cls(Rule(metric=metric or DEFAULT_METRIC, tolerance=tolerance), steps, seed, order_file,
                   label_free=label_free, metric_given=metric is not None, full_map=full_map)

    def for_data(self, what: str, labelled: bool) -> tuple["DecisionOptions", list[str]]:
        """These options with the primary metric for data ``what``, and the metrics to compute (see
        :mod:`.metrics.unlabelled`); InputError when a metric asked for needs labels the data lacks."""
        keep = self.metric_given or labelled or not table_metric(self.rule.metric).labels
        primary = primary_metric(what, labelled=labelled, primary=self.rule.metric if keep else None)
        names = metric_names(labelled=labelled, label_free=self.label_free, primary=primary, full_map=self.full_map)
        return replace(self, rule=replace(self.rule, metric=primary)), names

    def check(self, what: str, labelled: bool, same_items: bool = True) -> None:
        """Refuse data ``what`` before any work when the metrics it would get cannot be computed on it:
        a label metric asked for on unlabelled data, label-free ones on queries that are not the gallery's items."""
        _, names = self.for_data(what, labelled)
        if not all(table_metric(n).labels for n in names):
            require_same_items(what, same_items)


# check(what, labelled, same_items): refuse data (a spec or a stored set, named by ``what``) that the
# evaluation cannot use, before any work; InputError.
DataCheck = Callable[[str, bool, bool], None]


def backfill_values(result: Compatibility, query: Sequence[np.ndarray], gallery: Sequence[np.ndarray],
                    query_labels: np.ndarray, gallery_labels: np.ndarray, *, k: int = 5, exclude_self: bool = False,
                    options: DecisionOptions = DecisionOptions()) -> Values:
    """``values(i, j, step)`` (:data:`.metrics.decision.Values`) of an evaluation of the arrays
    ``query``/``gallery`` (T arrays [Nq, D] / [Ng, D], as :func:`.metrics.compat.compatibility` took
    them): exact search on galleries mixed in the options' order; the ends are the evaluation's own
    cells (f = 0: C[i][j], f = 1: C[i][i], by definition)."""
    n = len(gallery[0])
    steps = options.steps
    counts = backfilled_counts(n, fractions(steps))
    order = backfill_order(n, seed=options.seed, order_file=options.order_file)

    def values(i: int, j: int, step: int) -> np.ndarray:
        if step in (0, steps):
            return result.values(options.rule.metric, i, j if step == 0 else i)
        return backfilled_values(query[i], gallery[j], gallery[i], query_labels, gallery_labels,
                                 order[:counts[step]], metric=options.rule.metric, k=k, exclude_self=exclude_self,
                                 reference=result.neighbours.get(j))
    return values


def decide_arrays(result: Compatibility, models: Sequence[str], sha256: Sequence[Optional[str]],
                  query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: np.ndarray,
                  gallery_labels: np.ndarray, *, k: int = 5, exclude_self: bool = False,
                  options: DecisionOptions = DecisionOptions()) -> Decision:
    """:func:`.metrics.decision.decide` for an evaluation of the arrays ``query``/``gallery``, the
    backfill search through :func:`backfill_values`."""
    values = backfill_values(result, query, gallery, query_labels, gallery_labels, k=k, exclude_self=exclude_self,
                             options=options)
    return decide(result, models, sha256, options.rule, values=values, steps=options.steps,
                  order=backfill_described(options))


def backfill_described(options: DecisionOptions) -> str:
    """The re-embedding order in words."""
    return f"the order in {options.order_file}" if options.order_file else f"a random order, seed {options.seed}"
