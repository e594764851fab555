"""Adapted rows of a compatibility report: a pair searched through an adapter, judged by the decision
rule (:mod:`..metrics.decision`) like the pair itself.

A row is a pair (deployed model j, candidate model i, j older than i in task order) outside the T x T
matrix: the adapted "model" keeps its source's task and is not a model of the matrix. What it searches:

* a query adapter (source i, target j): model i's queries mapped into j's space, on j's gallery as stored;
* a gallery adapter (source j, target i): model i's queries on j's gallery transformed into i's space;
* a model file with a query adapter inside (``adapt --export``): that file's own query embeddings (its
  ONNX graph, float32) on j's gallery as stored.

Each is compared with C[j][j], the deployed model on its own gallery, as the rule compares C[i][j]:
per-query paired differences over the same queries, on the evaluation's bootstrap resamples (same
count and seed, so resample b draws the same queries as every cell's). Every metric gets its value,
difference, interval and, for right/wrong metrics, McNemar's exact test against C[j][j]; the primary
metric's interval gives the verdict. Evidence beside it: the unadapted pair's decision, C[i][i] (the
full re-index), the backfilled fraction f of j's gallery at which the pair's backfill curve (the
decision's grid and order) first reaches the adapted value (a point comparison of means), and the
learning curve: the adapted primary metric with its interval and verdict for adapters refitted on
100, 300, 1000, ... of the fit items (:func:`.curve.curve_adapters`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ...infer.store.manifest import AdapterRecord
from ..metrics import table
from ..metrics.decision import PairDecision, Rule, Values, smallest_reaching
from ..metrics.ranking import retrieval_outcomes
from ..metrics.significance import NOT_COMPATIBLE, UNDECIDED, bootstrap_means, interval, mcnemar_exact

_SLACK = 1e-12


@dataclass
class MetricTest:
    """One metric of an adapted row: the adapted ``value``, the deployed model's own ``reference``
    C[j][j], their ``difference`` and its interval ``low``/``high``; McNemar's ``gained``/``lost``/
    ``p_value`` for right/wrong metrics (None otherwise)."""

    value: float
    reference: float
    difference: float
    low: float
    high: float
    gained: Optional[int] = None
    lost: Optional[int] = None
    p_value: Optional[float] = None


@dataclass
class CurveJudgement:
    """A learning-curve point: the primary metric of the pair through an adapter fitted on ``size``
    items (``ridge`` used), its difference to C[j][j] with the interval, and the rule's verdict."""

    size: int
    ridge: Optional[float]
    value: float
    difference: float
    low: float
    high: float
    verdict: str


@dataclass
class Equivalent:
    """The backfilled fraction of the deployed gallery whose primary metric (a point value of the
    pair's backfill curve) first reaches the adapted value: ``fraction`` (None: not even a full
    re-index reaches it) and the curve's ``value`` there."""

    fraction: Optional[float]
    value: Optional[float]


@dataclass
class AdaptedRow:
    """One adapted pair (see the module doc). ``file``: the adapter file or the model file with the
    adapter inside; ``record``: the adapter's record; ``query``/``gallery``: the candidate's and the
    deployed model's ids in the evaluation; ``compares``: what is compared, in words; ``metrics``:
    every metric's :class:`MetricTest`; ``verdict`` and ``queries_needed`` (undecided) under the rule;
    ``unadapted``: the pair's own decision; ``reindex``: C[i][i] of the primary metric;
    ``equivalent``: computed for a pair that is not compatible unadapted; ``curve`` and, when there is
    none, ``curve_note`` saying why."""

    file: str
    record: AdapterRecord
    query: str
    gallery: str
    compares: str
    metrics: dict[str, MetricTest]
    verdict: str
    queries: int
    unadapted: PairDecision
    reindex: float
    queries_needed: Optional[int] = None
    equivalent: Optional[Equivalent] = None
    curve: list[CurveJudgement] = field(default_factory=list)
    curve_note: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.query} \u2192 {self.gallery} via {self.record.kind} {self.record.direction} adapter"


def compares(record: AdapterRecord, query: str, gallery: str, adapted_model: Optional[str] = None) -> str:
    """What an adapted row compares, in words (``adapted_model``: the id of a model file with the adapter inside)."""
    if adapted_model is not None:
        searched = f"{adapted_model}'s queries (the model file with the adapter inside) on {gallery}'s gallery"
    elif record.direction == "query":
        searched = f"{query}'s queries mapped into {gallery}'s space on {gallery}'s gallery"
    else:
        searched = f"{query}'s queries on {gallery}'s gallery transformed into {query}'s space"
    return f"{searched} vs {gallery}'s queries on its own gallery (C[j][j])"


def judge_cell(query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
               references: dict[str, np.ndarray], *, resamples: int, seed: int, level: float, k: int = 5,
               exclude_self: bool = False) -> dict[str, MetricTest]:
    """Each metric named in ``references`` (its per-query values float [Nq] of the reference cell) of
    ``query`` [Nq, D] against ``gallery`` [Ng, D]: the value as :func:`..metrics.table.retrieval_metrics`
    computes it, and the paired difference's interval on the resamples ``resamples``/``seed``."""
    names = list(references)
    requires = frozenset().union(*(table.METRICS[n].requires for n in names))
    outcomes = retrieval_outcomes(query, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self,
                                  requires=requires)
    adapted = {n: table.per_query(outcomes, n) for n in names}
    boot = bootstrap_means(np.stack([*adapted.values(), *references.values()], axis=1), resamples=resamples, seed=seed)
    lows, highs = interval(boot[:, :len(names)] - boot[:, len(names):], level=level)
    tests = {}
    for m, n in enumerate(names):
        value, reference = table.metric_mean(adapted[n]), table.metric_mean(references[n])
        test = MetricTest(value, reference, value - reference, float(lows[m]), float(highs[m]))
        if table.METRICS[n].binary:
            old, new = references[n] > 0, adapted[n] > 0
            test.gained, test.lost = int(np.sum(new & ~old)), int(np.sum(old & ~new))
            test.p_value = mcnemar_exact(test.lost, test.gained)
        tests[n] = test
    return tests


def equivalent(values: Values, i: int, j: int, steps: int, target: float) -> Equivalent:
    """The smallest backfilled fraction f = step / steps at which the pair's curve ``values(i, j, step)``
    (mean of the per-query values) reaches ``target``; bisection on the grid, the curve taken to be
    monotone as the decision's search takes it."""
    means: dict[int, float] = {}

    def reaches(step: int) -> bool:
        if step not in means:
            means[step] = float(np.nanmean(values(i, j, step)))
        return means[step] >= target - _SLACK

    if reaches(0):
        return Equivalent(0.0, means[0])
    step = smallest_reaching(steps, reaches)
    return Equivalent(None, None) if step is None else Equivalent(step / steps, means[step])


def curve_judgements(points: Iterable[tuple[int, Optional[float], np.ndarray, np.ndarray]], query_labels: np.ndarray,
                     gallery_labels: np.ndarray, reference: np.ndarray, rule: Rule, *, resamples: int, seed: int,
                     k: int = 5, exclude_self: bool = False) -> list[CurveJudgement]:
    """The rule at each learning-curve point ``(size, ridge, adapted queries, adapted gallery)`` against
    the per-query values ``reference`` of C[j][j] (primary metric)."""
    out = []
    for size, ridge, query, gallery in points:
        t = judge_cell(query, gallery, query_labels, gallery_labels, {rule.metric: reference}, resamples=resamples,
                       seed=seed, level=rule.level, k=k, exclude_self=exclude_self)[rule.metric]
        out.append(CurveJudgement(size, ridge, t.value, t.difference, t.low, t.high, rule.verdict(t.low, t.high)))
    return out


@dataclass(frozen=True)
class RowInput:
    """What one adapted row is computed from: ``file``, the adapter's ``record``, the candidate ``i``
    and deployed ``j`` (indices of the evaluation's models), the adapted ``query`` [Nq, D] and
    ``gallery`` [Ng, D] arrays, what it ``compares`` in words, and the learning curve's points
    (``curve``: a callable giving (size, ridge, query, gallery) per point, or None with ``curve_note``)."""

    file: str
    record: AdapterRecord
    i: int
    j: int
    query: np.ndarray
    gallery: np.ndarray
    compares: str
    curve: Optional[Callable[[], Iterable[tuple[int, Optional[float], np.ndarray, np.ndarray]]]] = None
    curve_note: Optional[str] = None


def adapted_row(row: RowInput, models: Sequence[str], pairs: dict[tuple[str, str], PairDecision],
                references: dict[str, np.ndarray], reindex: float, query_labels: np.ndarray,
                gallery_labels: np.ndarray, rule: Rule, *, resamples: int, seed: int, values: Values, steps: int,
                k: int = 5, exclude_self: bool = False) -> AdaptedRow:
    """The :class:`AdaptedRow` of ``row``: ``pairs`` the decision's pairs by (candidate, deployed) id,
    ``references`` the per-query values of every metric in C[j][j], ``reindex`` C[i][i] of the primary
    metric, ``values``/``steps`` the pair's backfill curve (:data:`..metrics.decision.Values`)."""
    options = dict(resamples=resamples, seed=seed, k=k, exclude_self=exclude_self)
    tests = judge_cell(row.query, row.gallery, query_labels, gallery_labels, references, level=rule.level, **options)
    primary = tests[rule.metric]
    unadapted = pairs[models[row.i], models[row.j]]
    out = AdaptedRow(file=row.file, record=row.record, query=models[row.i], gallery=models[row.j], compares=row.compares,
                     metrics=tests, verdict=rule.verdict(primary.low, primary.high), queries=len(query_labels),
                     unadapted=unadapted, reindex=reindex, curve_note=row.curve_note)
    if out.verdict == UNDECIDED:
        out.queries_needed = rule.queries_needed(out.queries, primary.difference, primary.low, primary.high)
    if unadapted.verdict == NOT_COMPATIBLE:
        out.equivalent = equivalent(values, row.i, row.j, steps, primary.value)
    if row.curve is not None:
        out.curve = curve_judgements(row.curve(), query_labels, gallery_labels, references[rule.metric], rule,
                                     **options)
    return out


def row_words(row: AdaptedRow, rule: Rule) -> str:
    """The row's outcome in words: verdict, values, interval, what it means, the backfill equivalent."""
    t = row.metrics[rule.metric]
    label, tol = table.METRICS[rule.metric].label, f"{rule.tolerance:g}"
    seen = (f"{label} {t.value:.4f} vs {row.gallery}'s own {t.reference:.4f}, difference {t.difference:+.4f} "
            f"[{t.low:+.4f}, {t.high:+.4f}]")
    if row.verdict == NOT_COMPATIBLE:
        text = f"not compatible through the adapter: {seen}, beyond the {tol} tolerance"
    elif row.verdict == UNDECIDED:
        more = ("no feasible number of queries decides it" if row.queries_needed is None else
                f"collect about {row.queries_needed - row.queries} more queries")
        text = f"undecided through the adapter: {seen} contains \u2212{tol}; {more}"
    else:
        ship = ("keep the index and ship the query model with the adapter inside (adapt --export)"
                if row.record.direction == "query" else
                "transform the stored gallery (adapt --apply) instead of re-embedding it")
        text = f"compatible through the adapter: {seen}, within the {tol} tolerance; {ship}"
    if row.equivalent is not None:
        e = row.equivalent
        text += ("; more than a full re-index gives (" f"{label} {row.reindex:.4f})" if e.fraction is None else
                 f"; as much as backfilling {e.fraction:.0%} of the gallery ({label} {e.value:.4f})")
    return text

