"""The declared decision rule: for each pair (deployed gallery model j, candidate query model i > j),
one verdict and one recommendation. This is the only meaning of "compatible" in the reports.

The rule (BCT's comparison, Shen et al. 2020, as non-inferiority at a margin):

* D = C[i][j] - C[j][j] of the primary metric (default top-1): candidate i's queries on deployed j's
  gallery against j on its own gallery, paired over the same queries.
* Interval: the ``level`` (95 %) paired percentile bootstrap interval of D on the evaluation's
  resamples (:mod:`.significance`: every cell and every backfilled gallery uses the same resamples).
* Verdict, with tolerance delta >= 0: *compatible* when low >= -delta (the candidate loses at most
  delta, with confidence; identical models are compatible at any delta); *not compatible* when
  high < -delta; *undecided* otherwise (the interval contains -delta). Bounds are compared with a
  slack of 1e-12 for the rounding of resampled means.
* Undecided: queries needed at ``power`` (80 %): with SE = (high - low) / (2 z) at N queries
  (z = the normal quantile of the interval's level) and d = |D + delta|,
  N_needed = ceil(N ((z + z_power) SE / d)^2). When d is 0 or N_needed > 100 N no feasible number
  of queries decides the pair.
* Recommendation: *keep* the index (compatible); *backfill* f of the gallery (not compatible, and the
  rule holds for the gallery with a fraction f < 1 re-embedded by i: the smallest f on the grid
  0, 1/steps, ..., 1, found by bisection); *re-index* (not compatible and no f < 1 reaches it);
  *collect* more queries (undecided).

Why top-1 by default: it is what a user of the gallery sees first, it is right/wrong per query (so
McNemar's exact test is available as evidence), and its tolerance reads as queries per hundred.

Label-free metrics (:mod:`.labelfree`; the default on unlabelled data is self-top1, top-1's
counterpart) go through the same rule with the same reference C[j][j], the deployed model on its own
gallery, which is 1 for them by construction (each item retrieves itself first, its neighbourhood is
its own; the diagonal cells are computed, not assumed, so exact duplicates show). D = C[i][j] - 1 is
then minus the share of items the candidate loses, and the rule reads: compatible when, with
confidence, the candidate still retrieves at least 1 - delta of the items (keeps 1 - delta of the
neighbours) on the deployed gallery: a stated threshold, set by ``--tolerance``. The other possible
reference, the deployed model re-embedding the same images, is the diagonal itself (inference is
deterministic), so it adds nothing. The default delta (0.01) is strict for a label-free metric: a
model trained for class-level compatibility may move items within their class; choose the share of
items your users may see change.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Callable, Optional, Sequence

import numpy as np

from ...common.errors import InputError
from .compat import Compatibility
from .significance import COMPATIBLE, LEVEL, NOT_COMPATIBLE, UNDECIDED, bootstrap_means, interval
from .table import known, metric

DEFAULT_METRIC = "top1"
DEFAULT_TOLERANCE = 0.01
POWER = 0.80
FEASIBLE_FACTOR = 100  # N_needed above this many times N: no feasible number of queries decides a pair
_SLACK = 1e-12
KEEP, BACKFILL, REINDEX, COLLECT = "keep", "backfill", "re-index", "collect"
VERDICTS = (COMPATIBLE, NOT_COMPATIBLE, UNDECIDED)
RECOMMENDATIONS = (KEEP, BACKFILL, REINDEX, COLLECT)


def _z(probability: float) -> float:
    return NormalDist().inv_cdf(probability)


@dataclass(frozen=True)
class Rule:
    """The declared rule: ``metric`` (a name of :func:`.table.known`), ``tolerance`` delta (in the
    metric's units, 0 <= delta < 1), the interval's ``level`` and the ``power`` of the N estimate."""

    metric: str = DEFAULT_METRIC
    tolerance: float = DEFAULT_TOLERANCE
    level: float = LEVEL
    power: float = POWER

    def __post_init__(self):
        if self.metric not in known():
            raise InputError(f"--primary-metric {self.metric}: expected one of {', '.join(known())}")
        if not (math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            raise InputError(f"--tolerance {self.tolerance}: expected a number from 0 to below 1 (the metric's units)")

    def verdict(self, low: float, high: float) -> str:
        """The verdict of an interval (low, high) of D = C[i][j] - C[j][j]."""
        if low >= -self.tolerance - _SLACK:
            return COMPATIBLE
        if high < -self.tolerance - _SLACK:
            return NOT_COMPATIBLE
        return UNDECIDED

    def queries_needed(self, queries: int, difference: float, low: float, high: float) -> Optional[int]:
        """Total queries that would decide an undecided pair at ``power`` (see the module doc);
        None when no feasible number does."""
        z = _z((1 + self.level) / 2)
        se = (high - low) / (2 * z)
        d = abs(difference + self.tolerance)
        if d < _SLACK:
            return None
        needed = math.ceil(queries * ((z + _z(self.power)) * se / d) ** 2)
        return None if needed > FEASIBLE_FACTOR * queries else max(needed, queries + 1)

    def text(self, *, resamples: int, seed: int, steps: int, order: str) -> str:
        """The rule in words, printed at the top of every report."""
        label, tol = metric(self.metric).label, f"{self.tolerance:g}"
        label_free = "" if metric(self.metric).labels else (
            f" {label} is label-free: j's own value C[j][j] is 1 by construction (each item retrieves itself; its "
            f"neighbourhood is its own), so the rule asks that the candidate reach at least 1 \u2212 {tol} on j's "
            f"gallery: the tolerance is the share of items (of neighbours, for overlap@k) it may lose.")
        return (f"A candidate (newer) model i may query the gallery indexed by a deployed (older) model j when "
                f"it loses at most {tol} {label} against j searching its own gallery. Compatible: the "
                f"{self.level:.0%} paired bootstrap interval ({resamples} resamples of the queries, seed {seed}) of "
                f"{label} C[i][j] \u2212 C[j][j] lies at or above \u2212{tol}; not compatible: it lies below "
                f"\u2212{tol}; undecided: it contains \u2212{tol}, and the number of queries that would decide it "
                f"({self.power:.0%} power) is estimated. Recommendation: keep the index when compatible; when not, "
                f"backfill the smallest fraction f of j's gallery re-embedded by i (f on a grid of 1/{steps}; {order}) "
                f"at which the rule holds, or re-index when no f below 1 does; collect more queries when undecided. "
                f"Other metrics, McNemar's test, AC/BC/FC/AM and update gains are evidence, never a verdict."
                + label_free)

    def as_dict(self, *, resamples: int, seed: int, steps: int, order: str) -> dict:
        """``decision.rule`` of compatibility.json."""
        tol = f"{self.tolerance:g}"
        return {"metric": self.metric, "tolerance": self.tolerance, "confidence": self.level,
                "resamples": resamples, "seed": seed, "power": self.power,
                "comparison": "C[i][j] - C[j][j] (candidate i's queries on deployed j's gallery vs j on its own "
                              "gallery)",
                "compatible": f"lower bound >= -{tol}", "not_compatible": f"upper bound < -{tol}",
                "undecided": f"the interval contains -{tol}: collect more queries ({self.power:.0%} power estimate)",
                "backfill": {"steps": steps, "order": order},
                "text": self.text(resamples=resamples, seed=seed, steps=steps, order=order)}


@dataclass
class Judgement:
    """D = mean(candidate) - mean(reference) and its interval (low, high) under a rule."""

    difference: float
    low: float
    high: float
    verdict: str


def judge(candidate: np.ndarray, reference: np.ndarray, rule: Rule, *, resamples: int, seed: int) -> Judgement:
    """The rule applied to per-query values float [N] of a candidate cell and its reference cell
    (NaN: no value, left out of that cell's mean), on the bootstrap resamples ``resamples``/``seed``
    (the same as the evaluation's: resample b draws the same queries whatever the columns)."""
    values = np.stack([candidate, reference], axis=1).astype(np.float64)
    boot = bootstrap_means(values, resamples=resamples, seed=seed)
    low, high = (float(x) for x in interval(boot[:, 0] - boot[:, 1], level=rule.level))
    difference = float(np.nanmean(candidate) - np.nanmean(reference))
    return Judgement(difference, low, high, rule.verdict(low, high))


def smallest_reaching(steps: int, reaches: Callable[[int], bool]) -> Optional[int]:
    """The smallest grid step s in 1..steps with ``reaches(s)``, by bisection (``reaches`` is taken to
    be monotone, and False at step 0); None when ``reaches(steps)`` is False. Calls ``reaches`` at most
    ceil(log2(steps)) + 1 times."""
    if not reaches(steps):
        return None
    failing, passing = 0, steps
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if reaches(middle):
            passing = middle
        else:
            failing = middle
    return passing


@dataclass
class PairDecision:
    """One pair's decision, as stored in ``decision.pairs`` (see :meth:`Decision.to_dict`)."""

    gallery: str
    query: str
    gallery_sha256: Optional[str]
    query_sha256: Optional[str]
    value: float
    reference: float
    difference: float
    low: float
    high: float
    verdict: str
    recommendation: str
    queries: int
    queries_needed: Optional[int] = None
    backfill_fraction: Optional[float] = None
    backfill_value: Optional[float] = None
    backfill_interval: Optional[list] = None
    reindex_interval: Optional[list] = None
    words: str = ""


@dataclass
class Decision:
    """The rule, the evaluation's bootstrap (``resamples``, ``seed``), the backfill grid and order,
    and every pair's decision (deployed j < candidate i, in task order)."""

    rule: Rule
    resamples: int
    seed: int
    steps: int
    order: str
    pairs: list[PairDecision] = field(default_factory=list)

    def text(self) -> str:
        return self.rule.text(resamples=self.resamples, seed=self.seed, steps=self.steps, order=self.order)

    def to_dict(self) -> dict:
        """``decision`` of compatibility.json: ``rule`` and ``pairs``."""
        return {"rule": self.rule.as_dict(resamples=self.resamples, seed=self.seed, steps=self.steps,
                                          order=self.order),
                "pairs": [asdict(p) for p in self.pairs]}

    def verdicts(self, models: Sequence[str]) -> dict[tuple[int, int], str]:
        """``{(query index, gallery index): verdict}`` over ``models`` (what figures mark cells with)."""
        return {(models.index(p.query), models.index(p.gallery)): p.verdict for p in self.pairs}


def _num(x: float) -> str:
    return f"{x:.4f}"


def _span(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def words(p: PairDecision, rule: Rule) -> str:
    """The recommendation in words, with the metric, the values and the interval."""
    label, tol = metric(rule.metric).label, f"{rule.tolerance:g}"
    seen = (f"{p.query} on {p.gallery}'s gallery {label} {_num(p.value)} vs {p.gallery}'s own {_num(p.reference)}, "
            f"difference {p.difference:+.4f} {_span(p.low, p.high)}")
    if p.recommendation == KEEP:
        return f"keep the index: {seen}, within the {tol} tolerance"
    if p.recommendation == COLLECT:
        if p.queries_needed is None:
            return (f"undecided, collect more queries: {seen} contains \u2212{tol}; the difference is at the "
                    f"tolerance, so no feasible number of queries decides it: treat the pair as not compatible "
                    f"or change --tolerance")
        return (f"collect about {p.queries_needed - p.queries} more queries (about {p.queries_needed} in all for "
                f"{rule.power:.0%} power): {seen} contains \u2212{tol}")
    if p.recommendation == BACKFILL:
        low, high = p.backfill_interval
        return (f"backfill {p.backfill_fraction:.0%} of the gallery (re-embedded by {p.query}): then {p.query} on it "
                f"{label} {_num(p.backfill_value)} vs {p.gallery}'s own {_num(p.reference)}, difference "
                f"{p.backfill_value - p.reference:+.4f} {_span(low, high)}, within the {tol} tolerance; as it stands: "
                f"{seen}")
    line = f"re-index: {seen} is beyond the {tol} tolerance and no backfilled fraction below 100% reaches it"
    if p.reindex_interval is not None and rule.verdict(*p.reindex_interval) != COMPATIBLE:
        line += (f"; note: even re-indexed, {p.query} scores below {p.gallery} by more than the tolerance allows "
                 f"(difference {_span(*p.reindex_interval)})")
    return line


# values(i, j, step): per-query values float [N] of the primary metric, model i's queries against model
# j's gallery with the first round(step / steps * Ng) items of the backfill order re-embedded by model i.
Values = Callable[[int, int, int], np.ndarray]


def _backfill(p: PairDecision, i: int, j: int, values: Values, reference: np.ndarray, decision: Decision) -> None:
    """Fill ``p``'s backfill fields and recommendation for a not-compatible pair (i, j)."""
    judged: dict[int, tuple[float, Judgement]] = {}

    def reaches(step: int) -> bool:
        candidate = values(i, j, step)
        judged[step] = float(np.nanmean(candidate)), judge(candidate, reference, decision.rule,
                                                           resamples=decision.resamples, seed=decision.seed)
        return judged[step][1].verdict == COMPATIBLE

    step = smallest_reaching(decision.steps, reaches)
    full = judged[decision.steps][1]
    p.reindex_interval = [full.low, full.high]
    if step is None or step == decision.steps:
        p.recommendation = REINDEX
        return
    value, found = judged[step]
    p.recommendation, p.backfill_fraction = BACKFILL, step / decision.steps
    p.backfill_value, p.backfill_interval = value, [found.low, found.high]


def decide(result: Compatibility, models: Sequence[str], sha256: Sequence[Optional[str]], rule: Rule, *,
           values: Values, steps: int, order: str) -> Decision:
    """Every pair's decision from an evaluation's ``result`` (the primary metric's cell tests give D's
    interval) and, for not-compatible pairs, the backfill search through ``values`` (see
    :data:`Values`) on the grid of ``steps``; ``order`` describes the re-embedding order (for the
    words). ``sha256``: each model's file digest as the store recorded it (None: unknown).
    InputError when the primary metric has no value on a pair."""
    decision = Decision(rule=rule, resamples=result.resamples, seed=result.seed, steps=steps, order=order)
    matrix, references = result.metrics[rule.metric], {}
    for test in result.criteria[rule.metric].tests:
        i, j = test.query, test.gallery
        if not all(math.isfinite(x) for x in (test.difference, test.low, test.high)):
            raise InputError(f"--primary-metric {rule.metric}: no query has a value on {models[i]}'s queries "
                             f"against {models[j]}'s gallery (no relevant gallery item): choose another metric")
        p = PairDecision(gallery=models[j], query=models[i], gallery_sha256=sha256[j], query_sha256=sha256[i],
                         value=float(matrix[i, j]), reference=float(matrix[j, j]), difference=test.difference,
                         low=test.low, high=test.high, verdict=rule.verdict(test.low, test.high), recommendation=KEEP,
                         queries=result.queries)
        if p.verdict == UNDECIDED:
            p.recommendation = COLLECT
            p.queries_needed = rule.queries_needed(p.queries, p.difference, p.low, p.high)
        elif p.verdict == NOT_COMPATIBLE:
            if j not in references:
                references[j] = values(j, j, 0)
            _backfill(p, i, j, values, references[j], decision)
        p.words = words(p, rule)
        decision.pairs.append(p)
    decision.pairs.sort(key=lambda p: (models.index(p.gallery), models.index(p.query)))
    return decision
