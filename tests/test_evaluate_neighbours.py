"""Streamed top-k neighbours against a brute-force N x M computation, at any block size."""
import tracemalloc

import numpy as np
import pytest

from dpcompat.evaluate import neighbours


def brute_force(left, right, k, exclude_self=False):
    """The whole N x M matrix, a stable sort per row (equal similarities: lower index first)."""
    s = left.astype(np.float64) @ right.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def integer_rows(n, d=6, seed=0):
    """Small integers: every dot product is exact in float32 whatever the summation order, and many tie."""
    return np.random.default_rng(seed).integers(-2, 3, (n, d)).astype(np.float32)


@pytest.mark.parametrize("rows, columns", [(1, 1), (3, 2), (7, 5), (64, 13), (4096, 4096)])
def test_equals_brute_force_at_any_block_size(monkeypatch, rows, columns):
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", rows)
    monkeypatch.setattr(neighbours, "BLOCK_COLUMNS", columns)
    monkeypatch.setattr(neighbours, "_SEED_COLUMNS", 3)
    left, right = integer_rows(40), integer_rows(30, seed=1)
    right[20] = right[12]  # exact duplicates: equal similarities go to the lower index
    for k in (1, 5, 30):
        sims, index = neighbours.top_k_neighbours(left, right, k=k)
        want_s, want_i = brute_force(left, right, k)
        assert np.array_equal(index, want_i) and np.array_equal(sims, want_s.astype(np.float32))
    sims, index = neighbours.top_k_neighbours(left, left, k=4, exclude_self=True)
    want_s, want_i = brute_force(left, left, 4, exclude_self=True)
    assert np.array_equal(index, want_i) and np.array_equal(sims, want_s.astype(np.float32))


def test_unit_vectors_match_brute_force():
    rng = np.random.default_rng(3)
    left, right = (rng.standard_normal((n, 32)).astype(np.float32) for n in (300, 500))
    left /= np.linalg.norm(left, axis=1, keepdims=True)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    sims, index = neighbours.top_k_neighbours(left, right, k=3)
    want_s, want_i = brute_force(left, right, 3)
    assert np.array_equal(index, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-6)


def test_memory_is_bounded_by_the_blocks(monkeypatch):
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 32)
    monkeypatch.setattr(neighbours, "BLOCK_COLUMNS", 128)
    left, right = integer_rows(1500, d=4), integer_rows(1500, d=4, seed=1)
    full_matrix = 4 * len(left) * len(right)  # 9 MB
    tracemalloc.start()
    try:
        neighbours.top_k_neighbours(left, right, k=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full_matrix / 50, peak


def test_k_out_of_range():
    x = integer_rows(4)
    with pytest.raises(ValueError, match="between 1 and 3"):
        neighbours.top_k_neighbours(x, x, k=4, exclude_self=True)
