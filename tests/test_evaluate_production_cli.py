"""`evaluate --index/--backfill/--gallery-precision/--precision-exports` end to end from the CLI,
checked against the exact report of the same run."""
import json
from dataclasses import replace

import numpy as np
import pytest

from dpcompat.infer.data.datasets import dataset_key
from onnx_fixtures import model_info, run_cli, write_data, write_model

pytest.importorskip("faiss", reason="faiss-cpu (the [faiss] extra) is not installed")


@pytest.fixture
def workdir(tmp_path):
    write_data(tmp_path / "data", test_per_class=8)
    for task in (1, 2, 3):
        write_model(tmp_path / "exports" / f"task{task}.onnx", task=task, dim=8)
    return tmp_path


def evaluate(workdir, *extra):
    return run_cli("evaluate", "--exports-dir", "exports", "--query", "cifar10:test", "--provider", "cpu",
                   "--quiet", *extra, cwd=workdir)


def test_indexes_backfill_and_storage_precision(workdir):
    r = evaluate(workdir, "--index", "flat,ivfpq", "--index", "hnsw", "--index-depth", "79", "--backfill",
                 "--backfill-steps", "4", "--gallery-precision", "fp16,int8", "--full-map")
    assert r.returncode == 0, r.stderr
    exact = json.loads((workdir / "reports" / "compatibility.json").read_text())
    prod = json.loads((workdir / "reports" / "production.json").read_text())
    methods = {m["kind"]: m for m in prod["indexes"]["methods"]}
    assert list(methods) == ["exact", "flat", "ivfpq", "hnsw"]
    for name in ("top1", "top5", "knn"):
        assert methods["flat"]["metrics"][name] == exact["metrics"][name]
    flat_map = np.array(methods["flat"]["metrics"]["mAP@K"], dtype=float)
    np.testing.assert_allclose(flat_map, np.array(exact["metrics"]["mAP"], dtype=float), rtol=1e-6)
    assert methods["ivfpq"]["params"][0] == {"nlist": 2, "nprobe": 2, "pq_m": 1, "pq_bits": 6}
    assert methods["ivfpq"]["cached"] == [False, False, False]
    c = exact["metrics"]
    pairs = {(p["new"], p["old"]): p for p in prod["backfill"]["pairs"]}
    assert list(pairs) == [("task2", "task1"), ("task3", "task1"), ("task3", "task2")]
    for (new, old), p in pairs.items():
        i, j = exact["models"].index(new), exact["models"].index(old)
        for name in ("top1", "top5", "knn", "mAP"):
            curve = p["curves"]["exact"][name]
            assert curve[0] == pytest.approx(c[name][i][j], abs=1e-12)
            assert curve[-1] == pytest.approx(c[name][i][i], abs=1e-12)
        assert set(p["curves"]) == {"exact", "flat", "ivfpq", "hnsw"}
        assert p["curves"]["flat"]["top1"] == p["curves"]["exact"]["top1"]
        png = workdir / "reports" / f"backfill_{new}_{old}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fp16 = prod["gallery_precision"]["fp16"]
    assert fp16["max_abs_delta"]["top1"] <= 0.05
    assert set(prod["gallery_precision"]) == {"fp16", "int8"}
    md = (workdir / "reports" / "production.md").read_text()
    assert "### ivfpq (nlist=2, nprobe=2, pq_m=1, pq_bits=6)" in md and "## Backfilling" in md
    page = (workdir / "reports" / "report.html").read_text()  # rendered again with the production files
    assert 'id="production"' in page and 'alt="backfill_task3_task2.png"' in page
    again = evaluate(workdir, "--index", "ivfpq", "--index-depth", "79")
    assert again.returncode == 0, again.stderr
    prod2 = json.loads((workdir / "reports" / "production.json").read_text())
    second = prod2["indexes"]["methods"][1]
    assert second["cached"] == [True, True, True]
    assert second["metrics"] == methods["ivfpq"]["metrics"]


def test_query_precision_rows(workdir):
    for task in (1, 2, 3):  # the same weights, labelled fp16: every difference must be zero
        write_model(workdir / "exports-fp16" / f"task{task}.onnx", task=task, dim=8,
                    info=replace(model_info(task, 8), precision="fp16"))
    r = evaluate(workdir, "--precision-exports", "exports-fp16")
    assert r.returncode == 0, r.stderr
    exact = json.loads((workdir / "reports" / "compatibility.json").read_text())
    rows = json.loads((workdir / "reports" / "production.json").read_text())["query_precision"]
    assert [(row["model"], row["precision"]) for row in rows] == [("task1", "fp16"), ("task2", "fp16"),
                                                                  ("task3", "fp16")]
    for i, row in enumerate(rows):
        assert row["top1"] == exact["metrics"]["top1"][i][i] and row["delta_mAP@R"] == 0
        assert row["min_cosine"] == pytest.approx(1.0) and row["images_per_s"] > 0
    assert (workdir / "embeddings" / "task2-fp16" / dataset_key("cifar10:test", workdir / "data")).is_dir()


@pytest.mark.parametrize("args, message", [
    (("--index", "lsh"), "--index 'lsh': expected one of flat, hnsw, ivf, ivfpq"),
    (("--backfill-order", "order.txt"), "--backfill-pairs and --backfill-order need --backfill"),
    (("--backfill", "--backfill-pairs", "task1:task3"), "task3 must be older than task1"),
    (("--gallery-precision", "int4"), "--gallery-precision 'int4'"),
    (("--index", "ivf", "--nprobe", "0"), "--nprobe 0: expected an integer 1 to"),
    (("--precision-exports", "missing"), "--precision-exports missing: no task1.onnx there"),
])
def test_refusals_are_one_line(workdir, args, message):
    r = evaluate(workdir, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr
