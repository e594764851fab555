"""Bootstrap and McNemar against independent computations and constructed data (the verdict is the
decision rule's: tests/test_decision.py)."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.significance import bootstrap_means, interval, mcnemar_exact


def direct_mcnemar(lost, gained):
    """Exact two-sided McNemar p from the binomial probabilities, summed with math.comb."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, x) for x in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("lost, gained", [(0, 0), (0, 1), (3, 3), (2, 9), (9, 2), (30, 47), (0, 40), (500, 430)])
def test_mcnemar_matches_a_direct_binomial_sum_and_scipy(lost, gained):
    got = mcnemar_exact(lost, gained)
    assert got == pytest.approx(direct_mcnemar(lost, gained), rel=1e-12)
    if lost + gained:
        assert got == pytest.approx(binomtest(min(lost, gained), lost + gained, 0.5).pvalue, rel=1e-9)


def slow_bootstrap(values, resamples, seed):
    """Resample b = the b-th call rng.integers(0, N, N); NaN values are left out of the mean."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        picked = values[rng.integers(0, len(values), len(values))]
        out.append([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in picked.T])
    return np.array(out)


def test_bootstrap_equals_a_slow_loop_with_the_same_seed():
    rng = np.random.default_rng(3)
    values = rng.random((37, 4))
    values[:, 1] = values[:, 1] > 0.5
    values[rng.random(37) < 0.2, 2] = np.nan  # a column where some queries have no value
    with np.errstate(all="ignore"):
        want = slow_bootstrap(values, 120, seed=7)  # more than one chunk of resamples
    np.testing.assert_allclose(bootstrap_means(values, resamples=120, seed=7), want, rtol=1e-12)


def test_bootstrap_interval_has_the_normal_width_for_a_large_sample():
    rng = np.random.default_rng(0)
    x = rng.random((4000, 1)) < 0.3
    low, high = interval(bootstrap_means(x.astype(float), resamples=2000, seed=1))
    half = 1.96 * math.sqrt(0.3 * 0.7 / 4000)  # the normal approximation's 95% half-width
    assert high[0] - low[0] == pytest.approx(2 * half, rel=0.1)
    assert low[0] < x.mean() < high[0]


def test_an_interval_of_nothing_is_empty_and_of_no_value_is_nan():
    """Issue 21: one model has no pair, and interval() of [B, 0] samples ended in a ValueError."""
    low, high = interval(np.empty((100, 0)))
    assert low.shape == high.shape == (0,)
    low, high = interval(np.full((100, 2), np.nan))
    assert np.isnan(low).all() and np.isnan(high).all()


def clustered(rng, centres, labels, noise):
    x = (centres[labels] + noise * rng.standard_normal((len(labels), centres.shape[1]))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identical_models_differ_by_nothing_and_a_clearly_better_one_by_a_significant_gain():
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 8
    centres = rng.standard_normal((8, 16))
    weak, sharp = clustered(rng, centres, labels, noise=2.0), clustered(rng, centres, labels, noise=0.3)  # one space
    same = compatibility([weak, weak], [weak, weak], labels, labels, exclude_self=True, resamples=300)
    for name, c in same.criteria.items():
        (test,) = c.tests
        assert test.difference == 0 and test.low == test.high == 0, name
        if name in ("top1", "knn"):
            assert test.gained == test.lost == 0 and test.p_value == 1.0
        assert np.isnan(c.update_gain[1, 0])  # 0 / 0: undefined
    better = compatibility([weak, sharp], [weak, sharp], labels, labels, exclude_self=True, resamples=300)
    for name, c in better.criteria.items():
        (test,) = c.tests
        assert test.low > 0 and test.reindex_low > 0, (name, test)
        m = better.metrics[name]  # the re-index's change is significant: the update gain is given
        assert c.update_gain[1, 0] == pytest.approx((m[1, 0] - m[0, 0]) / (m[1, 1] - m[0, 0]))
        assert c.intervals["AC"] == (1.0, 1.0) and c.AC == 1.0
    top1 = better.criteria["top1"].tests[0]
    assert top1.gained > top1.lost and top1.p_value < 1e-6
    assert top1.difference == pytest.approx((top1.gained - top1.lost) / 400)
    assert better.negative_flips["top1"][1, 0] == pytest.approx(top1.lost / 400)
