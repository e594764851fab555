"""FAISS indexes, exact streamed top-K, metrics from neighbour lists: each against a brute-force
computation (full similarity matrix, plain loops) or the exact path of evaluate/metrics.py."""
import sys

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.search.indexes import (IndexParams, average_precision_at, check_kinds, exact_topk,
                                       neighbour_metrics, recall_at)
from dpcompat.evaluate.metrics.ranking import average_precision
from dpcompat.evaluate.metrics.table import chosen, retrieval_metrics
from dpcompat.infer.store.sets import read_set

from onnx_fixtures import write_random_set

faiss = pytest.importorskip("faiss", reason="faiss-cpu (the [faiss] extra) is not installed")


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topk(q, g, depth, exclude_self):
    sim = q @ g.T
    out = []
    for r in range(len(q)):
        cols = [c for c in range(len(g)) if not (exclude_self and c == r)]
        out.append(sorted(cols, key=lambda c: (-sim[r, c], c))[:depth])
    return np.array(out)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_topk_streams_blocks_like_a_full_sort(exclude_self):
    rng = np.random.default_rng(0)
    g = unit(rng, 53, 6)
    g[10] = g[3]  # a tie across blocks: the lower index wins
    g[40] = g[3]
    q = g[:29].copy()
    got = exact_topk(q, g, 7, exclude_self=exclude_self, query_block=4, gallery_block=9)
    np.testing.assert_array_equal(got, brute_topk(q, g, 7, exclude_self))


def test_average_precision_at_full_depth_is_the_exact_average_precision():
    rng = np.random.default_rng(1)
    q, g = unit(rng, 15, 5), unit(rng, 30, 5)
    ql, gl = rng.integers(0, 3, 15), rng.integers(0, 3, 30)
    ranked = brute_topk(q, g, 30, False)
    counts = np.array([(gl == label).sum() for label in ql])
    got = average_precision_at(gl[ranked], ql, counts)
    np.testing.assert_allclose(got, average_precision(q @ g.T, ql, gl), rtol=1e-12)


def test_average_precision_at_a_cut_is_the_plain_loop_definition():
    labels = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [2, 2, 0, 0, 0]])
    ql = np.array([1, 1, 2])
    counts = np.array([10, 4, 2])
    want = []
    for row, label, r in zip(labels, ql, counts):
        hits, total = 0, 0.0
        for rank, x in enumerate(row, 1):
            if x == label:
                hits += 1
                total += hits / rank
        want.append(total / min(r, len(row)))
    np.testing.assert_allclose(average_precision_at(labels, ql, counts), want)
    assert np.isnan(average_precision_at(labels[:1], ql[:1], np.array([0])))[0]


def test_neighbour_metrics_of_the_full_exact_ranking_equal_the_exact_metrics():
    rng = np.random.default_rng(2)
    x, labels = unit(rng, 40, 8), np.arange(40) % 4
    exact = exact_topk(x, x, 39, exclude_self=True)
    got = neighbour_metrics(exact, labels, labels, k=3, exclude_self=True)
    want = retrieval_metrics(x, labels, x, labels, k=3, exclude_self=True, names=chosen(full_map=True))
    assert [got[n] for n in ("top1", "top5", "knn")] == [want[n] for n in ("top1", "top5", "knn")]
    assert got["mAP@K"] == pytest.approx(want["mAP"], rel=1e-12)


def test_empty_slots_count_as_wrong_neighbours():
    gl, ql = np.array([0, 1, 1]), np.array([1, 1])
    got = neighbour_metrics(np.array([[-1, 1, -1, -1, -1], [2, -1, -1, -1, -1]]), ql, gl, k=3)
    assert got["top1"] == 0.5 and got["top5"] == 1.0
    assert got["knn"] == 0.0  # two empty slots outvote one hit
    assert got["mAP@K"] == pytest.approx(np.mean([0.5 / 2, 1.0 / 2]))


def test_recall_is_the_set_overlap():
    found = np.array([[1, 2, 3], [4, -1, -1]])
    exact = np.array([[3, 2, 9], [4, 5, 6]])
    assert recall_at(found, exact, 3) == pytest.approx(np.mean([2 / 3, 1 / 3]))
    assert recall_at(found, exact, 1) == pytest.approx(0.5)


def test_parameters_resolve_to_documented_defaults_and_refuse_nonsense():
    p = IndexParams()
    assert p.resolve("flat", 100, 8) == {}
    assert p.resolve("ivf", 10_000, 768) == {"nlist": 100, "nprobe": 16}
    assert p.resolve("ivfpq", 1_000_000, 768) == {"nlist": 1000, "nprobe": 16, "pq_m": 96, "pq_bits": 8}
    assert p.resolve("ivfpq", 100, 16)["pq_bits"] == 6
    assert p.resolve("hnsw", 100, 8) == {"hnsw_m": 32, "ef_construction": 100, "ef_search": 64}
    with pytest.raises(InputError, match="--pq-m 5: must divide"):
        IndexParams(pq_m=5).resolve("ivfpq", 1000, 768)
    with pytest.raises(InputError, match="--nlist 500"):
        IndexParams(nlist=500).resolve("ivf", 100, 8)
    with pytest.raises(InputError, match="--index 'lsh'"):
        check_kinds(("flat", "lsh"), p)
    with pytest.raises(InputError, match="--nprobe 0"):
        check_kinds(("ivf",), IndexParams(nprobe=0))


def test_missing_faiss_names_the_extra(monkeypatch):
    from dpcompat.evaluate.search.indexes import faiss_module

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match=r"dpcompat\[faiss\]"):
        faiss_module()


def store_sets(tmp_path, t=3, n=120, d=16):
    sets = [write_random_set(tmp_path / "store" / f"m{s}" / "cifar10-test", f"m{s}", n=n, dim=d, seed=s)
            for s in range(t)]
    return [read_set(s.path) for s in sets]


def test_flat_through_faiss_equals_the_exact_matrices(tmp_path):
    from dpcompat.evaluate.search.cells import index_compatibility

    sets = store_sets(tmp_path)
    labels = sets[0].labels
    exact = compatibility([s.embeddings for s in sets], [s.embeddings for s in sets], labels, labels, k=5,
                          exclude_self=True, names=chosen(full_map=True))
    results = index_compatibility(sets, sets, ["flat"], IndexParams(), tmp_path / "store", k=5, exclude_self=True,
                                  depth=1000)
    assert [r.kind for r in results] == ["exact", "flat"]
    for r in results:
        for name in ("top1", "top5", "knn"):
            np.testing.assert_array_equal(r.metrics[name], exact.metrics[name])
        np.testing.assert_allclose(r.metrics["mAP@K"], exact.metrics["mAP"], rtol=1e-6)
        assert set(r.recall) == {"recall@1", "recall@10", "recall@119"}
        assert np.nanmin(r.recall["recall@119"]) == 1.0


def test_ivf_and_ivfpq_recall_against_a_brute_force_search(tmp_path):
    from dpcompat.evaluate.search.cells import index_compatibility

    sets = store_sets(tmp_path, t=2, n=300)
    params = IndexParams(nlist=8, nprobe=2, pq_m=4)
    results = index_compatibility(sets, sets, ["ivf", "ivfpq", "hnsw"], params, tmp_path / "store", k=5,
                                  exclude_self=True, depth=10)
    q, g = sets[1].embeddings, sets[0].embeddings
    truth = brute_topk(q, g, 10, True)
    index = faiss.read_index(str(next((tmp_path / "store" / ".indexes" / "m0").glob("ivfpq-*.faiss"))))
    index.nprobe = 2
    _, found = index.search(np.ascontiguousarray(q), 11)
    found = [[c for c in row if c != r][:10] for r, row in enumerate(found)]
    want = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    by_kind = {r.kind: r for r in results}
    assert by_kind["ivfpq"].recall["recall@10"][1, 0] == pytest.approx(want)
    assert by_kind["ivfpq"].params[0] == {"nlist": 8, "nprobe": 2, "pq_m": 4, "pq_bits": 8}
    assert 0 < by_kind["ivf"].recall["recall@10"][1, 0] < 1  # 2 of 8 lists probed: some neighbours missed
    exhaustive = index_compatibility(sets, sets, ["ivf"], IndexParams(nlist=8, nprobe=8), tmp_path / "store",
                                     exclude_self=True, depth=10)
    assert np.nanmin(exhaustive[1].recall["recall@10"]) == 1.0


def test_indexes_are_cached_by_digest_and_parameters(tmp_path):
    from dpcompat.evaluate.search.cells import cached_index

    sets = store_sets(tmp_path, t=1)
    resolved = IndexParams(nlist=4).resolve("ivf", 120, 16)
    _, cached, _ = cached_index(sets[0], "ivf", resolved, tmp_path / "store")
    again, cached_again, _ = cached_index(sets[0], "ivf", resolved, tmp_path / "store")
    assert (cached, cached_again) == (False, True) and again.ntotal == 120
    other = IndexParams(nlist=5).resolve("ivf", 120, 16)
    assert cached_index(sets[0], "ivf", other, tmp_path / "store")[1] is False
    files = sorted((tmp_path / "store" / ".indexes" / "m0").iterdir())
    assert len(files) == 4 and not [f for f in files if f.name.startswith(".")]  # two indexes and their records
    assert sorted(f.suffix for f in files) == [".faiss", ".faiss", ".json", ".json"]
    files[0].write_bytes(b"garbage")
    warnings = []
    for f in files:
        kind_params = resolved if cache_name_matches(f, resolved) else other
        _, hit, _ = cached_index(sets[0], "ivf", kind_params, tmp_path / "store", warn=warnings.append)
    assert len(warnings) == 1 and "rebuilding" in warnings[0]
    changed = write_random_set(tmp_path / "store" / "m0" / "cifar10-test", "m0", n=120, dim=16, seed=9)
    assert cached_index(read_set(changed.path), "ivf", resolved, tmp_path / "store")[1] is False


def cache_name_matches(path, resolved):
    from dpcompat.evaluate.search.indexes import cache_name

    return path.name.split("-")[1] == cache_name("ivf", resolved, "0" * 16, 0).split("-")[1]


def test_bench_index_on_a_small_generated_gallery(tmp_path):
    from dpcompat.bench.index import bench_index

    result = bench_index(tmp_path, gallery=3000, queries=50, dim=32, classes=20, kinds=("ivf", "ivfpq"),
                         params=IndexParams(nlist=20, nprobe=20), depth=10)
    g, q = np.load(tmp_path / "gallery.npy"), np.load(tmp_path / "queries.npy")
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1, rtol=1e-5)
    exact, ivf, ivfpq = result["methods"]
    want = retrieval_metrics(q, np.arange(50) % 20, g, np.arange(3000) % 20, k=5)
    assert [exact[n] for n in ("top1", "top5", "knn")] == [want[n] for n in ("top1", "top5", "knn")]
    assert ivf["recall@1"] == 1.0 and ivf["recall@10"] == 1.0  # every list probed
    assert 0 < ivfpq["recall@10"] <= 1 and ivfpq["params"]["pq_m"] == 4
    assert result["input_bytes"] == g.nbytes + q.nbytes and exact["peak_extra_mib"] >= 0
    pq = ("PQ trained on 3000 points for 256 centroids per sub-vector: fewer than FAISS recommends (39 per centroid), "
          "recall may suffer")
    assert (ivf["training"], ivfpq["training"]) == ([], [pq])
    from dpcompat.bench.index import format_index
    assert format_index(result).splitlines()[-1] == f"note: {pq}"


def test_faiss_training_warning_is_said_once_per_evaluation(tmp_path, capfd):
    from dpcompat.evaluate.search.indexes import training_shortfalls
    from dpcompat.evaluate.search.production import ProductionOptions, evaluate_production

    x = unit(np.random.default_rng(0), 120, 16)
    raw = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 8, faiss.METRIC_INNER_PRODUCT)
    raw.train(x)  # FAISS left alone: its C++ warning goes to fd 2 on every training
    assert "WARNING clustering 120 points to 8 centroids" in capfd.readouterr().err

    sets = store_sets(tmp_path, t=3, n=120)
    opts = ProductionOptions(indexes=("ivf", "ivfpq"), params=IndexParams(nlist=8, pq_m=4, pq_bits=6), depth=10,
                             backfill=True, backfill_steps=2)
    said = []
    result = evaluate_production(sets, sets, None, ["m0", "m1", "m2"], opts, tmp_path / "store", exclude_self=True,
                                 warn=said.append)
    assert "WARNING" not in capfd.readouterr().err  # 6 ivf + 6 ivfpq cells and the backfill curves: FAISS silent
    lines = ["IVF trained on 120 points for 8 lists: fewer than FAISS recommends (39 per list), recall may suffer",
             "PQ trained on 120 points for 64 centroids per sub-vector: fewer than FAISS recommends (39 per centroid), "
             "recall may suffer"]
    assert said == [f"note: {line}" for line in lines] and result["indexes"]["training"] == lines
    assert training_shortfalls("ivf", IndexParams().resolve("ivf", 120, 16), 120) == []  # the default nlist suffices
    assert training_shortfalls("hnsw", {}, 10) == []
