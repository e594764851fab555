"""The top-R selection against the full sort it replaced (tests/ranking_reference.py), number for number;
results that depend on values only (x @ x.T); exact mAP as an opt-in; AC's interval across seeds."""

import numpy as np
import pytest

from dpcompat.evaluate.metrics import prefix, ranking, selection
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.ranking import FULL_RANKING, REQUIREMENTS, ranked_outcomes, retrieval_outcomes
from dpcompat.evaluate.metrics.significance import count_interval
from dpcompat.evaluate.metrics.table import chosen, requirements, retrieval_metrics

from ranking_reference import assert_same_outcomes, ranked_outcomes as reference_outcomes

SUBSETS = [REQUIREMENTS, {"first_hit"}, {"first_r"}, {"knn_vote"}, {"full_ranking"}, {"first_hit", "knn_vote"}]


def hard_similarities(rng, kind, n, m):
    """Similarity blocks the selection must get exactly right: tied integer products, rounded values
    with -0.0 beside 0.0, duplicated columns, continuous values; some items masked (-inf)."""
    if kind == "integer":
        s = rng.integers(-2, 3, (n, 3)) @ rng.integers(-2, 3, (m, 3)).T
    elif kind == "rounded":
        s = np.round(rng.standard_normal((n, m)), 1)
        s[rng.random((n, m)) < 0.05] = -0.0
    else:
        s = rng.standard_normal((n, m))
        if kind == "duplicates":
            s[:, rng.integers(0, m, 4)] = s[:, :1]
    s = s.astype(np.float32)
    s[rng.random((n, m)) < 0.1] = -np.inf
    return s


@pytest.mark.parametrize("kind", ["integer", "rounded", "continuous", "duplicates"])
@pytest.mark.parametrize("seed", range(12))
def test_selection_equals_the_full_sort_bit_for_bit(kind, seed):
    rng = np.random.default_rng(seed)
    n, m, classes = int(rng.integers(1, 30)), int(rng.integers(12, 400)), int(rng.integers(1, 9))
    similarity = hard_similarities(rng, kind, n, m)
    query_labels = rng.integers(0, classes + 1, n)  # label ``classes``: no item in the gallery
    gallery_labels = rng.integers(0, classes, m)
    if seed % 3 == 0:
        gallery_labels[rng.random(m) < 0.6] = 0  # one label holds most of the gallery
    k = int(rng.integers(1, 4))
    if np.isfinite(similarity).sum(axis=1).min() < k:
        similarity[:, :k] = 0.5
    for requires in SUBSETS:
        assert_same_outcomes(ranked_outcomes(similarity, query_labels, gallery_labels, k=k, requires=requires),
                    reference_outcomes(similarity, query_labels, gallery_labels, k=k, requires=requires))


@pytest.mark.parametrize("exclude_self", [False, True])
def test_blocks_and_threads_equal_the_full_sort(monkeypatch, exclude_self):
    monkeypatch.setattr(ranking, "_BLOCK_ELEMENTS", 37 * 300)  # several blocks, split over threads
    rng = np.random.default_rng(5)
    n, d = 300, 4
    x = rng.integers(-2, 3, (n, d)).astype(np.float32)  # integer products: exact, whatever the BLAS blocking
    x[rng.integers(0, n, 30)] = x[:30]  # duplicate rows
    labels = rng.integers(0, 12, n)
    labels[labels == 11] = 10  # label 11: none
    query_labels = labels.copy()
    query_labels[:5] = 11  # queries without any relevant item
    similarity = x @ x.copy().T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    got = retrieval_outcomes(x, query_labels, x, labels, k=3, exclude_self=exclude_self, threads=3)
    assert_same_outcomes(got, reference_outcomes(similarity, query_labels, labels, k=3))


def test_the_default_metrics_select_and_do_not_sort_rows(monkeypatch):
    widths = []
    real = prefix._in_order
    monkeypatch.setattr(prefix, "_in_order", lambda s, f, n: widths.append(s.shape[1]) or real(s, f, n))
    monkeypatch.setattr(np, "sort", lambda *a, **k: pytest.fail("a row was sorted"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(600) % 20
    got = retrieval_outcomes(x, labels, x, labels, exclude_self=True, requires=requirements())
    assert widths and got.ap_at_r is not None


def brute_prefix(similarity):
    """Every row's gallery indices in the total order (finite entries only), by a lexsort."""
    out = []
    for row in similarity:
        finite = np.flatnonzero(row > -np.inf)
        out.append(finite[np.lexsort((finite, -row[finite].astype(np.float64)))])
    return out


@pytest.mark.parametrize("spread", [3.0, -2.0])  # -2: the sample misjudges rows, the exact partition corrects them
@pytest.mark.parametrize("kind", ["integer", "rounded", "continuous", "duplicates"])
@pytest.mark.parametrize("seed", range(4))
def test_sampled_thresholds_give_the_first_places_exactly(monkeypatch, spread, kind, seed):
    monkeypatch.setattr(prefix, "_SAMPLE", 8)
    monkeypatch.setattr(prefix, "_SPREAD", spread)
    prefix._sample.cache_clear()
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 30)), int(rng.integers(40, 500))
    similarity = hard_similarities(rng, kind, n, m)
    similarity[0, :3] = np.inf
    finite = (similarity > -np.inf).sum(axis=1)
    for need in {1, 3, m // 5, m // 4 - 1}:
        need = max(need, 1)
        ranked, length = prefix.ordered_prefix(similarity, need, finite)
        assert (length >= np.minimum(need, finite)).all()
        for r, want in enumerate(brute_prefix(similarity)):
            np.testing.assert_array_equal(ranked[r, :length[r]], want[:length[r]])
        for dtype in (np.float64,):  # the lexsort path
            other, other_length = prefix.ordered_prefix(similarity.astype(dtype), need, finite)
            for r, want in enumerate(brute_prefix(similarity)):
                np.testing.assert_array_equal(other[r, :other_length[r]], want[:other_length[r]])
    query_labels, gallery_labels = rng.integers(0, 4, n), rng.integers(0, 3, m)
    for requires in SUBSETS:
        assert_same_outcomes(ranked_outcomes(similarity, query_labels, gallery_labels, k=2, requires=requires),
                             reference_outcomes(similarity, query_labels, gallery_labels, k=2, requires=requires))
    prefix._sample.cache_clear()


def test_nan_similarities_are_refused():
    similarity = np.zeros((2, 5), np.float32)
    similarity[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ranked_outcomes(similarity, np.zeros(2, int), np.zeros(5, int), k=1)
    x = np.eye(4, dtype=np.float32)
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        retrieval_outcomes(x, np.zeros(4, int), x, np.zeros(4, int), k=1)


@pytest.mark.parametrize("seed", range(4))
def test_named_exclusions_equal_a_scan_for_them(seed):
    rng = np.random.default_rng(seed)
    n, m = 40, 300
    similarity = hard_similarities(rng, "rounded", n, m)
    similarity[similarity == -np.inf] = 0.5
    excluded = rng.integers(-1, m, n)  # -1: none left out of that row
    similarity[np.flatnonzero(excluded >= 0), excluded[excluded >= 0]] = -np.inf
    query_labels, gallery_labels = rng.integers(0, 4, n), rng.integers(0, 4, m)
    for requires in SUBSETS:
        assert_same_outcomes(ranked_outcomes(similarity, query_labels, gallery_labels, k=3, requires=requires,
                                             excluded=excluded),
                             reference_outcomes(similarity, query_labels, gallery_labels, k=3, requires=requires))


def test_rows_outside_every_gallery_rank_as_the_full_sort():
    similarity = np.full((3, 6), -np.inf, np.float32)
    labels = np.array([0, 1, 0, 1, 0, 1])
    for rows in ([], [1], [0, 2]):
        similarity[rows] = np.linspace(0, 1, 6, dtype=np.float32)
        for requires in [s - {"knn_vote"} for s in SUBSETS if s - {"knn_vote"}]:
            assert_same_outcomes(ranked_outcomes(similarity, np.array([0, 1, 2]), labels, requires=requires),
                                 reference_outcomes(similarity, np.array([0, 1, 2]), labels, requires=requires))


@pytest.mark.parametrize("total", [1, 7, 8, 100, 128, 129, 200, 1000, 4097])
def test_a_sum_over_a_prefix_is_the_sum_of_the_row_with_zeros(total):
    rng = np.random.default_rng(total)
    for used in sorted({0, 1, total // 9, total // 4, total // 2, total - 1, total}):
        row = np.zeros(total)
        row[:used] = rng.random(used) / rng.integers(1, 1000, used)
        length = int(selection.pairwise_lengths(np.array([total]), np.array([used]))[0])
        assert used <= length <= total and row[:length].sum() == row.sum()
        assert row[None, :length].sum(axis=1)[0] == row[None].sum(axis=1)[0]
    assert selection.pairwise_lengths(np.array([1000, 1000, 100]), np.array([100, 500, 3])).tolist() == [120, 1000, 100]


def duplicated_unit_rows(seed, n=200, d=32):
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.repeat(rng.standard_normal((n // 2, d)).astype(np.float32), 2, axis=0))
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, 5, n)


def test_a_query_set_that_is_the_gallery_array_ranks_as_a_copy_of_it():
    x, labels = duplicated_unit_rows(1)
    # numpy's x @ x.T (one array: a symmetric product) rounds otherwise than x @ copy.T, enough to reorder
    # the duplicates: the hazard this guards against
    a, b = x @ x.T, x @ x.copy().T
    np.fill_diagonal(a, -np.inf)
    np.fill_diagonal(b, -np.inf)
    assert not np.array_equal(ranked_outcomes(a, labels, labels).first_hit, ranked_outcomes(b, labels, labels).first_hit)
    for exclude_self in (True, False):
        assert_same_outcomes(retrieval_outcomes(x, labels, x, labels, exclude_self=exclude_self),
                    retrieval_outcomes(x, labels, x.copy(), labels, exclude_self=exclude_self))
    xs = [x, duplicated_unit_rows(3)[0]]
    names = chosen(full_map=True)
    same = compatibility(xs, xs, labels, labels, exclude_self=True, resamples=20, metrics=names)
    copied = compatibility(xs, [y.copy() for y in xs], labels, labels, exclude_self=True, resamples=20, metrics=names)
    for name in names:
        np.testing.assert_array_equal(same.metrics[name], copied.metrics[name], err_msg=name)
    np.testing.assert_array_equal(same.cmc, copied.cmc)


def test_exact_map_is_opt_in_and_equals_the_full_sort():
    x, labels = duplicated_unit_rows(7)
    assert "mAP" not in chosen() and "mAP" in chosen(full_map=True)
    assert FULL_RANKING not in requirements() and "mAP" not in retrieval_metrics(x, labels, x, labels)
    got = retrieval_metrics(x, labels, x, labels, exclude_self=True, names=chosen(full_map=True))
    similarity = x @ x.copy().T
    np.fill_diagonal(similarity, -np.inf)
    want = reference_outcomes(similarity, labels, labels)
    assert got["mAP"] == np.nanmean(want.ap) and got["mAP@R"] == np.nanmean(want.ap_at_r)
    result = compatibility([x, x], [x, x], labels, labels, exclude_self=True, resamples=20,
                           metrics=chosen(full_map=True))
    assert list(result.metrics) == list(chosen(full_map=True)) and result.metrics["mAP"][1, 0] == got["mAP"]


def family(seed, t=5, n=500, trend=0.0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    centres = rng.standard_normal((10, 24))
    base = centres[labels] + 1.5 * rng.standard_normal((n, 24))
    out = []
    for i in range(t):
        x = (base * (1 + trend * i) + rng.standard_normal((n, 24))).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out, labels


@pytest.mark.parametrize("trend", [0.0, 0.3])
def test_ac_interval_does_not_move_with_the_seed(trend):
    xs, labels = family(2, trend=trend)
    runs = [compatibility(xs, xs, labels, labels, exclude_self=True, resamples=200, seed=s) for s in range(4)]
    lows = []
    for name in runs[0].criteria:
        intervals = {r.criteria[name].intervals["AC"] for r in runs}
        assert len(intervals) == 1, (name, intervals)
        (low, high), ac = intervals.pop(), runs[0].criteria[name].AC
        assert 0 <= low <= high <= 1 and np.allclose(np.round([low * 10, high * 10]), [low * 10, high * 10])  # of 10 pairs
        assert low <= ac <= high if trend else low == 0, name  # exchangeable models: no pair shown compatible
        lows.append(low)
    if trend:
        assert max(lows) > 0  # better and better models: some pairs shown compatible


def test_count_interval_on_constructed_differences():
    rng = np.random.default_rng(0)
    clear = rng.normal(0.2, 0.1, (1000, 1))  # mean 0.2, standard error 0.003
    zero = np.zeros((1000, 1))
    noisy = rng.normal(0.0, 1.0, (1000, 1))
    assert count_interval(np.hstack([clear, clear])) == (1.0, 1.0)
    assert count_interval(np.hstack([clear, zero])) == (0.5, 0.5)  # a zero margin is not above 0
    assert count_interval(np.hstack([clear, -clear, noisy])) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    with_gaps = np.hstack([clear, noisy])
    with_gaps[::2, 1] = np.nan  # queries without a value are left out
    assert count_interval(with_gaps)[0] == 0.5


def test_count_below_counts_as_a_comparison_does():
    rng = np.random.default_rng(4)
    top = np.sort(np.round(rng.standard_normal((6, 90)), 1).astype(np.float32), axis=1)
    top[:, :5] = -np.inf
    top[1] = -np.inf  # a row masked whole
    values = np.sort(np.concatenate([top[:, ::7], np.full((6, 2), -0.0, np.float32), np.full((6, 1), np.inf, np.float32),
                                     np.full((6, 1), -np.inf, np.float32)], axis=1), axis=1)
    for t, v in ((top, values), (top[:, :40], values[:, :12]), (top.astype(np.float64), values.astype(np.float64))):
        want = [[np.sum(row < x) for x in vals] for row, vals in zip(t, v)]
        np.testing.assert_array_equal(selection.count_below(t, v), want)