"""How sure a comparison of cells is: paired bootstrap intervals and McNemar's exact test (the decision
rule that turns them into a verdict is :mod:`.decision`'s).

Every cell C[i][j] of a compatibility matrix is the mean of per-query values (1/0 for a correct
top-1 or kNN answer, the AP of each query, ...) over the same queries. Comparing C[i][j] with
C[j][j] is therefore a paired comparison: each query contributes its difference.

* Bootstrap (Efron's percentile bootstrap): ``RESAMPLES`` resamples of the queries, drawn with
  replacement by ``numpy.random.default_rng(SEED)``; resample b takes the query indices
  ``rng.integers(0, N, N)`` (the b-th such call). Every cell and every metric is evaluated on the same
  resamples, so the interval of a derived number (a difference, AC, BC, FC) accounts for the cells
  being computed on the same queries. The interval is the central ``LEVEL`` of the resampled values
  (``numpy.percentile``, linear interpolation).
* AC, the share of pairs whose margin C[i][j] - C[j][j] is above 0, takes a handful of values: a
  percentile interval of its resampled values jumps with the seed. Its interval is a count instead
  (:func:`count_interval`): from the share of pairs whose margin lies above 0 under a simultaneous
  ``LEVEL`` band over all pairs to the share whose band reaches above 0. The band is each paired
  mean difference +- z * its standard error, z the normal quantile at 1 - (1 - LEVEL) / (2P) for P
  pairs (Bonferroni): no resampling, so the same numbers for every seed.
* McNemar's exact test (McNemar 1947; the exact binomial form) for right/wrong outcomes: of the
  queries on which the two evaluations disagree, ``gained`` are right only with the new model and
  ``lost`` only with the old; p = min(1, 2 P(X <= min(gained, lost))), X ~ Binomial(gained + lost, 1/2).
"""
from __future__ import annotations

import warnings
from fractions import Fraction
from statistics import NormalDist

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
_CHUNK = 50  # resamples drawn at a time: [_CHUNK, N] indices in memory

# The three verdicts of a pair under the decision rule (:mod:`.decision`), the only meaning of "compatible".
COMPATIBLE, NOT_COMPATIBLE, UNDECIDED = "compatible", "not compatible", "undecided"
AC_INTERVAL = (f"AC's interval is a count, not a percentile: from the share of pairs whose margin lies above 0 under a "
               f"simultaneous {LEVEL:.0%} band over all pairs (each paired mean difference +- z standard errors, "
               "Bonferroni) to the share whose band reaches above 0; it does not depend on the bootstrap seed")


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none).

    ``lost``: queries right before and wrong after; ``gained``: wrong before and right after.
    Computed with exact integers: 2 * sum_{x <= min} C(n, x) / 2^n, capped at 1.
    """
    n, low = lost + gained, min(lost, gained)
    term = total = 1
    for x in range(low):
        term = term * (n - x) // (x + 1)
        total += term
    return min(1.0, float(Fraction(2 * total, 2 ** n)))


def bootstrap_means(values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means of every column of ``values`` over bootstrap resamples of its rows.

    Parameters
    ----------
    values : float [N, C]; row = query, column = a per-query quantity. NaN = no value for that query:
        left out of the mean (a resample whose column has no value gives NaN).
    resamples, seed : see the module doc; all columns use the same resamples.

    Returns
    -------
    float64 [resamples, C].
    """
    n = len(values)
    missing = np.isnan(values)
    filled = np.where(missing, 0.0, values)
    partial = np.flatnonzero(missing.any(axis=0))
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        picks = rng.integers(0, n, (b, n))
        # How often each query is drawn: the resample's mean is a weighted mean, one product for all columns.
        counts = np.bincount((picks + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)
        sums = counts @ filled
        weight = np.full(sums.shape, float(n))
        weight[:, partial] = counts @ (~missing[:, partial])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = sums / weight
    return out


def interval(samples: np.ndarray, *, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` percentile interval of ``samples`` [B, ...] along the first axis: (low, high),
    each of shape ``samples.shape[1:]`` (empty when there is nothing to bound, e.g. no pair of models)."""
    if samples.size == 0:
        return np.full(samples.shape[1:], np.nan), np.full(samples.shape[1:], np.nan)
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # a column without any value (one model's AC) has no interval: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def count_interval(differences: np.ndarray, *, level: float = LEVEL) -> tuple[float, float]:
    """Interval of the share of columns of ``differences`` whose mean is above 0 (AC; module doc).

    Parameters
    ----------
    differences : float [N, P]; column p holds the per-query paired differences of pair p (NaN: the
        query has no value, left out).

    Returns
    -------
    (share of pairs whose simultaneous band lies above 0, share whose band reaches above 0); NaN, NaN
    without pairs. A pair with fewer than two values has an unbounded band.
    """
    n, pairs = np.sum(~np.isnan(differences), axis=0), differences.shape[1]
    if not pairs:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * pairs))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(differences, axis=0)
        spread = np.nanstd(differences, axis=0, ddof=1) / np.sqrt(n)
    half = np.where(n > 1, z * spread, np.inf)
    return float(np.mean(mean - half > 0)), float(np.mean(mean + half > 0))

