"""Projections: deterministic, PCA against numpy's SVD, the joint PCA shared by all models, the figure."""
import numpy as np
import pytest
from PIL import Image
import sklearn.manifold  # noqa: F401  (loaded before threadpool_limits, so its OpenMP pool is limited)
from threadpoolctl import threadpool_limits

from dpcompat.common.errors import InputError
from dpcompat.evaluate.study.projections import JOINT, parse_methods, project, sample_indices, write_projections
from dpcompat.infer.data.datasets import dataset_key
from onnx_fixtures import run_cli, write_random_set


def clustered(models=3, n=60, dim=12, seed=0):
    """Per model: 4 class clusters, drifting a little from model to model."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    centres = rng.standard_normal((4, dim)) * 3
    drift = np.cumsum(rng.standard_normal((models, dim)) * 0.5, axis=0)
    return [centres[labels] + drift[m] + rng.standard_normal((n, dim)) * 0.3 for m in range(models)], labels


def svd_pca(x):
    """Two leading principal components of x by numpy's SVD (sign left free)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def test_deterministic_and_pca_equals_svd():
    xs, _ = clustered()
    with threadpool_limits(1):  # t-SNE's OpenMP threads crawl on an oversubscribed test machine
        first = project(xs, seed=3)
        second = project(xs, seed=3)
    assert list(first) == ["pca", "tsne", JOINT]
    for method in first:
        for a, b in zip(first[method], second[method]):
            assert a.shape == (60, 2) and np.array_equal(a, b)
    for x, got in zip(xs, first["pca"]):
        want = svd_pca(x)
        np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-8)
    stacked = np.concatenate(xs)
    want = svd_pca(stacked)  # the joint basis, applied to each model's rows
    np.testing.assert_allclose(np.abs(np.concatenate(first[JOINT])), np.abs(want), atol=1e-8)


def test_sample_is_seeded_and_bounded():
    a = sample_indices(10_000, size=2000, seed=0)
    assert len(a) == 2000 and len(set(a)) == 2000 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_indices(10_000, size=2000, seed=0))
    assert not np.array_equal(a, sample_indices(10_000, size=2000, seed=1))
    assert np.array_equal(sample_indices(50, size=2000), np.arange(50))


def test_bad_methods():
    assert parse_methods("tsne, PCA") == ("tsne", "pca")
    for bad in ("umap", "", "pca,lda"):
        with pytest.raises(InputError, match="--projections"):
            parse_methods(bad)


def test_figure_written(tmp_path):
    xs, labels = clustered(models=2)
    path = write_projections(xs, labels, ["task1", "task2"], tmp_path, methods=("pca",), sample=40, notes=())
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (522, 558)  # 2 rows (pca, joint) x 2 models at 90 dpi


def test_evaluate_cli_draws_projections(tmp_path):
    for m, seed in (("task1", 0), ("task2", 1)):
        write_random_set(tmp_path / "store" / m / dataset_key("cifar10:test", tmp_path / "data"), m, n=40, seed=seed,
                         data_path=tmp_path / "data")
    r = run_cli("evaluate", "--from-store", "task1,task2", "--store", "store", "--out", "out",
                "--projections", "pca,tsne", "--projection-sample", "30", "--quiet", cwd=tmp_path,
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "projections.png").is_file() and "projections.png" in r.stdout
    bad = run_cli("evaluate", "--from-store", "task1,task2", "--store", "store", "--projections", "umap", cwd=tmp_path)
    assert bad.returncode == 2 and "--projections 'umap'" in bad.stderr
