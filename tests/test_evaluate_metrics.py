"""Metric functions against brute-force implementations on small random sets, ties included."""
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from dpcompat.evaluate.metrics import cka
from dpcompat.evaluate.metrics import ranking as metrics
from dpcompat.evaluate.metrics.cka import linear_cka, linear_cka_matrix
from dpcompat.evaluate.metrics.neighbours import cmc_curve, knn_predict, topk_indices
from dpcompat.evaluate.metrics.ranking import average_precision, ranked_outcomes
from dpcompat.evaluate.metrics.table import chosen, retrieval_metrics

EVERY = chosen(full_map=True)  # exact mAP included


def tied_vectors(rng, n, d=3):
    """Integer-valued vectors: many exactly equal similarities."""
    return rng.integers(-2, 3, (n, d)).astype(np.float32)


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_ranking(similarity):
    # decreasing similarity, ties by increasing gallery index
    return np.argsort(-similarity, axis=1, kind="stable")


def brute_ap(similarity, query_labels, gallery_labels):
    out = []
    for q in range(len(similarity)):
        keep = np.isfinite(similarity[q])
        relevant = gallery_labels[keep] == query_labels[q]
        out.append(average_precision_score(relevant, similarity[q][keep]) if relevant.any() else np.nan)
    return np.array(out)


def brute_knn(labels_row):
    counts = Counter(labels_row.tolist())
    best = max(counts.values())
    return next(label for label in labels_row if counts[label] == best)  # first in rank order among the tied


def brute_places(similarity, query_labels, gallery_labels):
    """Per query: the 1-based places of its relevant items in the total order (slow loops)."""
    out = []
    for q, order in enumerate(brute_ranking(similarity)):
        places = []
        for place, g in enumerate(order, 1):
            if np.isfinite(similarity[q, g]) and gallery_labels[g] == query_labels[q]:
                places.append(place)
        out.append(places)
    return out


def brute_at_r(places):
    """(AP@R, R-precision) of one query from its relevant places, as Musgrave et al. define them."""
    r = len(places)
    if r == 0:
        return np.nan, np.nan
    hits = [p for p in places if p <= r]
    return sum((t + 1) / p for t, p in enumerate(hits)) / r, len(hits) / r


def brute_metrics(query, query_labels, gallery, gallery_labels, k, exclude_self):
    similarity = (query @ gallery.T).astype(np.float32)
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    ranked = gallery_labels[brute_ranking(similarity)]
    ap = brute_ap(similarity, query_labels, gallery_labels)
    at_r = np.array([brute_at_r(p) for p in brute_places(similarity, query_labels, gallery_labels)])
    return {"top1": np.mean(ranked[:, 0] == query_labels),
            "top5": np.mean([query_labels[q] in ranked[q, :5] for q in range(len(query))]),
            "knn": np.mean([brute_knn(ranked[q, :k]) == query_labels[q] for q in range(len(query))]),
            "mAP": np.nanmean(ap), "mAP@R": np.nanmean(at_r[:, 0]), "R-precision": np.nanmean(at_r[:, 1])}


@pytest.mark.parametrize("seed", range(5))
def test_topk_breaks_ties_by_gallery_index(seed):
    rng = np.random.default_rng(seed)
    similarity = tied_vectors(rng, 30) @ tied_vectors(rng, 25).T
    for k in (1, 5, 25):
        np.testing.assert_array_equal(topk_indices(similarity, k), brute_ranking(similarity)[:, :k])


def test_topk_never_returns_excluded_items():
    similarity = np.zeros((4, 6), np.float32)  # all tied: the lowest indices win, except the excluded one
    similarity[np.arange(4), np.arange(4)] = -np.inf
    top = topk_indices(similarity, 5)
    assert all(q not in top[q] for q in range(4))
    np.testing.assert_array_equal(top[0], [1, 2, 3, 4, 5])


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_sklearn_with_ties_and_exclusions(seed):
    rng = np.random.default_rng(seed)
    n = 20 + seed
    similarity = tied_vectors(rng, n) @ tied_vectors(rng, n).T
    if seed % 2:
        np.fill_diagonal(similarity, -np.inf)
    query_labels, gallery_labels = rng.integers(0, 4, n), rng.integers(0, 5, n)
    np.testing.assert_allclose(average_precision(similarity, query_labels, gallery_labels),
                               brute_ap(similarity, query_labels, gallery_labels), rtol=1e-12, equal_nan=True)


def test_average_precision_of_a_query_without_relevant_items_is_nan():
    similarity = np.array([[0.9, 0.1, 0.5]], np.float32)
    assert np.isnan(average_precision(similarity, np.array([7]), np.array([0, 1, 2]))[0])
    assert average_precision(similarity, np.array([1]), np.array([0, 1, 2]))[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_places_cmc_and_at_r_match_slow_loops_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 24 + seed
    similarity = tied_vectors(rng, n) @ tied_vectors(rng, n).T  # many ties between relevant and other items
    if seed % 2:
        np.fill_diagonal(similarity, -np.inf)
    query_labels, gallery_labels = rng.integers(0, 4, n), rng.integers(0, 5, n)
    got = ranked_outcomes(similarity, query_labels, gallery_labels, k=3)
    places = brute_places(similarity, query_labels, gallery_labels)
    np.testing.assert_array_equal(got.first_hit, [p[0] if p else 0 for p in places])
    at_r = np.array([brute_at_r(p) for p in places])
    np.testing.assert_allclose(got.ap_at_r, at_r[:, 0], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got.r_precision, at_r[:, 1], rtol=1e-12, equal_nan=True)
    for depth in (1, 4, n):
        want = [np.mean([bool(p) and p[0] <= d for p in places]) for d in range(1, depth + 1)]
        np.testing.assert_allclose(cmc_curve(got.first_hit, depth), want, rtol=1e-12)
    ranked = gallery_labels[brute_ranking(similarity)]
    np.testing.assert_array_equal(got.knn_correct, [brute_knn(r[:3]) == l for r, l in zip(ranked, query_labels)])


def test_at_r_on_a_hand_made_ranking():
    # relevant (label 1) at places 1, 3 and 5 of 6: R = 3, AP@R = (1/1 + 2/3) / 3, R-precision = 2/3
    similarity = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], np.float32)
    got = ranked_outcomes(similarity, np.array([1]), np.array([1, 0, 1, 0, 1, 0]), k=1)
    assert got.ap_at_r[0] == pytest.approx((1 + 2 / 3) / 3) and got.r_precision[0] == pytest.approx(2 / 3)
    assert got.first_hit[0] == 1 and got.ap[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_knn_tie_goes_to_the_label_whose_nearest_member_ranks_first():
    labels = np.array([[3, 1, 1, 3, 2],   # 3 and 1 tied at two votes; 3 ranks first
                       [2, 1, 1, 3, 3],   # 1 and 3 tied; 1 ranks first (position 1)
                       [4, 4, 0, 0, 0],   # plain majority
                       [5, 6, 7, 8, 9]])  # all tied: the nearest
    np.testing.assert_array_equal(knn_predict(labels), [3, 1, 0, 5])
    rng = np.random.default_rng(0)
    many = rng.integers(0, 3, (200, 5))
    np.testing.assert_array_equal(knn_predict(many), [brute_knn(r) for r in many])


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_retrieval_metrics_match_brute_force_across_blocks_and_threads(monkeypatch, seed, exclude_self):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 7 * 40)  # 7 rows per block, split over threads
    rng = np.random.default_rng(seed)
    n = 40
    query = tied_vectors(rng, n)
    gallery = query.copy() if exclude_self else tied_vectors(rng, n)
    query_labels = rng.integers(0, 4, n)
    gallery_labels = query_labels.copy() if exclude_self else rng.integers(0, 4, n)
    for k in (1, 3, 6):
        got = retrieval_metrics(query, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self, threads=3,
                                names=EVERY)
        want = brute_metrics(query, query_labels, gallery, gallery_labels, k, exclude_self)
        assert got == pytest.approx(want, rel=1e-12)


def test_leave_one_out_removes_exactly_the_own_image():
    rng = np.random.default_rng(1)
    x = unit(rng, 30, 8)
    labels = np.arange(30) % 6
    kept = retrieval_metrics(x, labels, x, labels, exclude_self=False)
    assert kept["top1"] == 1.0  # with itself in the gallery each query finds itself first
    left_out = retrieval_metrics(x, labels, x, labels, exclude_self=True, names=EVERY)
    assert left_out == pytest.approx(brute_metrics(x, labels, x, labels, 5, True), rel=1e-12)
    assert left_out["top1"] < 1.0
    duplicated = np.concatenate([x, x])  # a second copy of an image is not "itself": it stays
    dup_labels = np.concatenate([labels, labels])
    assert retrieval_metrics(duplicated, dup_labels, duplicated, dup_labels, exclude_self=True)["top1"] == 1.0


def test_similarity_is_computed_in_bounded_blocks(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 256 * 1024)
    rng = np.random.default_rng(0)
    n = 3000  # a full similarity matrix would be 36 MB
    x = unit(rng, n, 16)
    labels = np.arange(n) % 10
    tracemalloc.start()
    retrieval_metrics(x, labels, x, labels, exclude_self=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 12 * 256 * 1024 * 4 + 4 * n * 64, peak


def test_retrieval_metrics_refuse_a_too_small_gallery():
    x = np.eye(5, dtype=np.float32)
    with pytest.raises(ValueError, match="fewer than the 5 ranked"):
        retrieval_metrics(x, np.arange(5), x, np.arange(5), exclude_self=True)


def brute_cka(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(kx * ky) / np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))


def test_linear_cka_matches_the_kernel_definition_and_its_invariances():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((50, 4)).astype(np.float32)
    assert linear_cka(x, y) == pytest.approx(brute_cka(x, y), rel=1e-5)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(x, (3.0 * x @ rotation + 5).astype(np.float32)) == pytest.approx(1.0, rel=1e-5)
    k = linear_cka_matrix([x, y, x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)])
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(np.diag(k), 1.0)
    assert k[0, 2] > 0.9 > k[0, 1]


def test_cka_centres_block_by_block_without_losing_precision():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((60, 5)) + 50).astype(np.float32)  # a large common offset, as real embeddings have
    y = (x @ rng.standard_normal((5, 3)) + rng.standard_normal((60, 3)) - 20).astype(np.float32)
    mx, my = x.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(cka._centred_grams([x, y], [mx, my], [(1, 0)], rows=7)[1, 0], (y - my).T @ (x - mx),
                               rtol=1e-5, atol=1e-4)
    assert linear_cka(x, y) == pytest.approx(brute_cka(x, y), rel=1e-5)
