"""Overlap audit: exact duplicates found and not found, near-duplicates against brute force, the CLI."""
import csv
import json
import tracemalloc
from itertools import product

import numpy as np
import pytest
from PIL import Image

from dpcompat.common.cifar import write_cifar
from dpcompat.common.errors import InputError
from dpcompat.common.synthetic import synthetic_images
from dpcompat.evaluate.study import audit as audit_module
from dpcompat.evaluate.study.audit import equal_pairs, run_audit
from dpcompat.evaluate.search.indexes import exact_topk
from dpcompat.evaluate.study.audit_report import sheet_pairs, write_audit
from dpcompat.infer.data.datasets import dataset_key
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import run_cli, write_model
from test_evaluate_cli import BLOCK_TORCH


def write_sets(root, copies=((7, 5), (100, 40))):
    """cifar10:test (60 images) and cifar100:train (50 images) of generated classes, with the test
    images ``i`` copied into train position ``j`` for each (i, j) of ``copies``."""
    test_labels, train_labels = np.arange(60) % 10, np.arange(50) % 20
    test, train = synthetic_images(test_labels, 10, 0), synthetic_images(train_labels + 10, 30, 1)
    for i, j in copies:
        train[j] = test[i % 60]
    write_cifar(root, "cifar10", {"test": (test, test_labels)}, [str(c) for c in range(10)])
    write_cifar(root, "cifar100", {"train": (train, train_labels)}, [str(c) for c in range(20)])
    return test, train


def test_equal_pairs_against_nested_loops():
    rng = np.random.default_rng(0)
    a = [bytes([v]) for v in rng.integers(0, 12, 40)]
    b = [bytes([v]) for v in rng.integers(0, 12, 30)]
    assert equal_pairs(a, b) == {(i, j) for i, j in product(range(40), range(30)) if a[i] == b[j]}
    assert equal_pairs(a, None) == {(i, j) for i, j in product(range(40), repeat=2) if i < j and a[i] == a[j]}


def test_exact_duplicates_found_and_not_found(tmp_path):
    write_sets(tmp_path, copies=((7, 5), (30, 40)))
    audit = run_audit(["cifar10:test", "cifar100:train"], tmp_path)
    pairs = [(p.left_index, p.right_index, p.pixels_equal, p.bytes_equal) for p in audit.comparisons[0].pairs]
    assert pairs == [(7, 5, True, True), (30, 40, True, True)] and audit.found
    clean = tmp_path / "clean"
    write_sets(clean, copies=())
    audit = run_audit(["cifar10:test", "cifar100:train"], clean)
    assert not audit.found and audit.comparisons[0].pairs == []


def test_within_one_set_and_pixels_versus_bytes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
    Image.fromarray(pixels[0]).save(tmp_path / "f" / "a" / "x.png")
    Image.fromarray(pixels[0]).save(tmp_path / "f" / "b" / "x.png", compress_level=1)  # same pixels, other bytes
    Image.fromarray(pixels[1]).save(tmp_path / "f" / "a" / "y.png")
    (tmp_path / "f" / "b" / "z.png").write_bytes((tmp_path / "f" / "a" / "y.png").read_bytes())
    Image.fromarray(pixels[2]).save(tmp_path / "f" / "b" / "w.png")
    audit = run_audit([f"folder:{tmp_path / 'f'}"])
    got = {(audit.datasets[0].item_name(p.left_index), audit.datasets[0].item_name(p.right_index),
            p.pixels_equal, p.bytes_equal) for p in audit.comparisons[0].pairs}
    assert got == {("a/x.png", "b/x.png", True, False), ("a/y.png", "b/z.png", True, True)}


def test_near_duplicates_equal_brute_force(tmp_path):
    test, train = write_sets(tmp_path)
    write_model(tmp_path / "m.onnx", seed=5)
    threshold, k = 0.99, 3
    audit = run_audit(["cifar10:test", "cifar100:train"], tmp_path, model=tmp_path / "m.onnx", threshold=threshold,
                      k=k, store=tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    q = read_set(tmp_path / "store" / "m" / dataset_key("cifar10:test", tmp_path)).embeddings
    g = read_set(tmp_path / "store" / "m" / dataset_key("cifar100:train", tmp_path)).embeddings
    full = q.astype(np.float64) @ g.astype(np.float64).T  # brute force: the whole matrix
    top = np.argsort(-full, axis=1, kind="stable")[:, :k]
    want = {(i, int(j)) for i in range(len(q)) for j in top[i] if full[i, j] >= threshold} | {(7, 5), (100 % 60, 40)}
    comparison = audit.comparisons[0]
    assert {(p.left_index, p.right_index) for p in comparison.pairs} == want
    for p in comparison.pairs:
        assert p.cosine == pytest.approx(full[p.left_index, p.right_index], abs=1e-5)
    assert len(comparison.closest) == len(q) * k
    assert sheet_pairs(audit, 4)[:2] == comparison.pairs[:2]  # the exact copies lead


def test_near_duplicates_do_not_depend_on_the_block_size(tmp_path, monkeypatch):
    write_sets(tmp_path)
    write_model(tmp_path / "m.onnx", seed=5)

    def found():
        audit = run_audit(["cifar10:test", "cifar100:train"], tmp_path, model=tmp_path / "m.onnx", threshold=0.99,
                          k=3, store=tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
        return {p.key: p.cosine for p in audit.comparisons[0].pairs}, [p.key for p in audit.comparisons[0].closest]

    default = found()
    monkeypatch.setattr(audit_module, "QUERY_BLOCK", 7)
    monkeypatch.setattr(audit_module, "GALLERY_BLOCK", 5)
    tiny = found()
    assert tiny[0].keys() == default[0].keys() and sorted(tiny[1]) == sorted(default[1])
    for key, cosine in default[0].items():
        assert tiny[0][key] == pytest.approx(cosine, abs=1e-6)


def test_neighbour_memory_is_bounded_by_the_blocks():
    rng = np.random.default_rng(0)
    left, right = (rng.integers(-2, 3, (n, 4)).astype(np.float32) for n in (300, 12_000))
    full_matrix = 4 * len(left) * len(right)  # 14 MB; the running top-k lists are 300 x 5
    tracemalloc.start()
    try:
        exact_topk(left, right, 5, query_block=32, gallery_block=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full_matrix / 50, peak


def test_bad_options_before_any_work(tmp_path):
    write_sets(tmp_path)
    with pytest.raises(InputError, match="given twice"):
        run_audit(["cifar10:test", "cifar10:test"], tmp_path)
    with pytest.raises(InputError, match="--threshold 1.5"):
        run_audit(["cifar10:test"], tmp_path, threshold=1.5)
    with pytest.raises(InputError, match="no such ONNX file"):
        run_audit(["cifar10:test"], tmp_path, model=tmp_path / "none.onnx")
    write_model(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="no output 'query'"):
        run_audit(["cifar10:test"], tmp_path, model=tmp_path / "m.onnx", feature="query")


def test_cli_end_to_end(tmp_path):
    write_sets(tmp_path / "data")
    write_model(tmp_path / "m.onnx")
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)  # the audit runs where torch cannot be imported
    args = ("audit", "cifar10:test", "cifar100:train", "--data-path", "data", "--quiet", "--provider", "cpu")
    found = run_cli(*args, "--model", "m.onnx", "--out", "found", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert found.returncode == 1, found.stderr
    assert "cifar10:test vs cifar100:train: 2 same pixels, 2 same bytes" in found.stdout
    report = json.loads((tmp_path / "found" / "audit.json").read_text())
    assert report["found"] and report["feature"] == "embedding" and report["comparisons"][0]["pixel_duplicates"] == 2
    rows = list(csv.DictReader(open(tmp_path / "found" / "audit.csv")))
    assert (rows[0]["left_item"], rows[0]["right_item"]) == ("cifar10:test[7]", "cifar100:train[5]")
    with Image.open(tmp_path / "found" / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 300
    write_sets(tmp_path / "clean", copies=())
    clean = run_cli("audit", "cifar10:test", "cifar100:train", "--data-path", "clean", "--quiet", cwd=tmp_path)
    assert clean.returncode == 0 and "0 same pixels, 0 same bytes" in clean.stdout
    bad = run_cli("audit", "cifar10:test", "--data-path", "nowhere", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_reports_without_pairs(tmp_path):
    write_sets(tmp_path, copies=())
    audit = run_audit(["cifar10:test", "cifar100:train"], tmp_path)
    written = write_audit(audit, tmp_path / "out")
    assert [p.name for p in written] == ["audit.json", "audit.csv", "contact_sheet.png"]
    assert json.loads(written[0].read_text())["pairs"] == []
    assert written[1].read_text().splitlines() == [
        "left,left_index,left_item,right,right_index,right_item,pixels_equal,bytes_equal,cosine"]


def test_auto_feature_prefers_a_query_output(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    write_sets(tmp_path)
    path = write_model(tmp_path / "m.onnx", dim=16)
    proto = onnx.load(path)
    weight = np.random.default_rng(9).standard_normal((48, 16)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(weight, "query_weight"))
    proto.graph.node.append(helper.make_node("MatMul", ["flat", "query_weight"], ["query"]))
    proto.graph.output.append(helper.make_tensor_value_info("query", onnx.TensorProto.FLOAT, ["N", 16]))
    onnx.save(proto, path)
    store = tmp_path / "store"
    audit = run_audit(["cifar10:test", "cifar100:train"], tmp_path, model=path, store=store,
                      runtime=RuntimeOptions(provider="cpu"))
    assert audit.feature == "query"
    stored = read_set(store / "m-query" / dataset_key("cifar10:test", tmp_path))
    assert stored.manifest.model.output == "query"
    pair = audit.comparisons[0].pairs[0]
    q, g = stored.embeddings, read_set(store / "m-query" / dataset_key("cifar100:train", tmp_path)).embeddings
    assert pair.cosine == pytest.approx(float(q[pair.left_index] @ g[pair.right_index]), abs=1e-6)
    embedding = run_audit(["cifar10:test", "cifar100:train"], tmp_path, model=path, feature="embedding",
                          store=store, runtime=RuntimeOptions(provider="cpu"))
    assert embedding.feature == "embedding" and (store / "m" / dataset_key("cifar10:test", tmp_path)).is_dir()
    from dpcompat.infer.data.datasets import open_dataset
    from dpcompat.infer.embed import embed_dataset

    warnings = []
    again = embed_dataset(path, open_dataset("cifar10:test", tmp_path), store, model_id="m",
                          runtime=RuntimeOptions(provider="cpu"), warn=warnings.append, output="query")  # the stored 'm' set holds the other output
    assert not again.reused and "output" in warnings[0] and again.set.manifest.model.output == "query"
