"""The search graph (products and the ranking's inputs in onnxruntime): built without the onnx package,
equal on the CPU provider to the numpy path, ties included; a device that does not work is an error."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.ranking import REQUIREMENTS, retrieval_outcomes
from dpcompat.evaluate.metrics.table import chosen
from dpcompat.evaluate.search import device
from dpcompat.evaluate.search.device import DeviceSearch, open_search, search_graph
from dpcompat.infer.runtime.session import gpu_problem
from onnx_fixtures import run_cli, write_random_set
from ranking_reference import assert_same_outcomes

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = [REQUIREMENTS, {"first_hit"}, {"first_r"}, {"knn_vote"}, {"full_ranking"}, {"first_r", "knn_vote"}]


def integer_sets(seed, n=240, d=4):
    """Integer-valued rows (exact products whatever the kernel: equal similarities everywhere), duplicated
    rows, a label no gallery item has."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, d)).astype(np.float32)
    x[rng.integers(0, n, 20)] = x[:20]
    labels = rng.integers(0, 6, n)
    query_labels = labels.copy()
    query_labels[:4] = 9
    return x, query_labels, labels


def test_the_graph_is_a_valid_model_built_without_the_onnx_package():
    onnx = pytest.importorskip("onnx")
    for precision in ("fp32", "fp16"):
        onnx.checker.check_model(onnx.load_from_string(search_graph(precision)), full_check=True)
    code = ("import sys; sys.modules['onnx'] = None; import runpy; "
            f"runpy.run_path({str(ROOT / 'checkout.py')!r})['import_checkout'](); "
            "from dpcompat.evaluate.search.device import search_graph; print(len(search_graph('fp16')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and int(run.stdout) > 0, run.stderr


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_cpu_provider_equals_the_numpy_path_ties_included(monkeypatch, precision, exclude_self):
    runs = []
    real = DeviceSearch._run
    monkeypatch.setattr(DeviceSearch, "_run", lambda self, f, g, keep, depth: runs.append(keep) or real(self, f, g, keep, depth))
    monkeypatch.setattr(device, "MARGIN", 1)  # ties at the depth then reach past TopK: rows run again, deeper
    search = DeviceSearch("cpu", precision, block_elements=70 * 240)  # several blocks
    x, query_labels, labels = integer_sets(1)
    gallery = x if exclude_self else integer_sets(2)[0]
    for requires in SUBSETS:
        assert_same_outcomes(search.retrieval_outcomes(x, query_labels, gallery, labels, k=3, exclude_self=exclude_self,
                                              requires=requires),
                    retrieval_outcomes(x, query_labels, gallery, labels, k=3, exclude_self=exclude_self,
                                       requires=requires))
    assert len(runs) > 4 * 6  # four blocks a call, and deeper reruns


def test_a_matrix_through_the_graph_equals_the_numpy_matrix():
    xs = [integer_sets(s)[0] for s in (3, 4, 5)]
    labels = integer_sets(3)[2]
    names = chosen(full_map=True)
    want = compatibility(xs, xs, labels, labels, exclude_self=True, resamples=20, metrics=names)
    got = compatibility(xs, xs, labels, labels, exclude_self=True, resamples=20, metrics=names,
                        search=DeviceSearch("cpu").retrieval_outcomes)
    for name in names:
        np.testing.assert_array_equal(got.metrics[name], want.metrics[name], err_msg=name)
    np.testing.assert_array_equal(got.cmc, want.cmc)


def test_unit_vectors_through_the_graph_rank_as_numpy_does():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(500) % 7
    got = DeviceSearch("cpu").retrieval_outcomes(x, labels, x, labels, exclude_self=True)
    want = retrieval_outcomes(x, labels, x, labels, exclude_self=True)
    # the CPU provider's products may differ from BLAS's in the last bit: ranks then differ only where
    # two similarities are that close, which random unit vectors almost never are
    assert np.mean(got.first_hit == want.first_hit) > 0.99 and np.mean(got.knn_correct == want.knn_correct) > 0.99
    np.testing.assert_allclose(np.nanmean(got.ap), np.nanmean(want.ap), atol=1e-3)


def test_which_search_and_refusals():
    assert open_search(None, "cpu") is None and open_search("numpy") is None
    assert open_search("cpu").used == "cpu" and open_search(None, "cpu", precision="fp32") is None
    with pytest.raises(InputError, match="--search-provider gpu: expected numpy, cpu, cuda or cuda:N"):
        open_search("gpu")
    with pytest.raises(InputError, match="--search-provider cpu:1"):
        open_search("cpu:1")
    with pytest.raises(InputError, match="--search-precision fp16: the numpy search is fp32"):
        open_search("numpy", precision="fp16")
    if gpu_problem("cuda") is not None:  # no GPU here: asked for, CUDA is an error, never the CPU
        assert open_search(None, "auto") is None
        with pytest.raises(InputError, match="^--search-provider cuda: "):
            open_search("cuda")
        with pytest.raises(InputError, match="^--search-provider cuda: "):
            open_search(None, "cuda")


def test_evaluate_and_bench_take_the_search_provider(tmp_path):
    from dpcompat.infer.data.datasets import dataset_key
    from dpcompat.infer.store.sets import set_path

    key = dataset_key("cifar10:test", tmp_path / "data")
    for s in range(2):
        write_random_set(set_path(tmp_path / "store", f"task{s + 1}", key), f"task{s + 1}", n=60, seed=s + 1,
                         data_path=str(tmp_path / "data"))
    r = run_cli("evaluate", "--from-store", "task1,task2", "--store", "store", "--data-path", "data",
                "--search-provider", "cpu", "--full-map", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "reports" / "compatibility.json").read_text())
    assert report["protocol"]["search"] == "onnxruntime cpu fp32" and "mAP" in report["metrics"]
    if gpu_problem("cuda") is not None:
        for args in (("evaluate", "--from-store", "task1,task2", "--store", "store", "--data-path", "data", "--out", "r2"),
                     ("bench", "evaluate", "--models", "2", "--queries", "20", "--dim", "4", "--workdir", "b")):
            bad = run_cli(*args, "--search-provider", "cuda", cwd=tmp_path)
            assert bad.returncode == 2 and bad.stderr.startswith("error: --search-provider cuda: "), bad.stderr
            assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "r2").exists()
