"""Compatibility matrices, criteria and the report files (JSON schema, CSV, Markdown, PNG)."""
import csv
import json
import math

import numpy as np
import pytest

from dpcompat.evaluate.compat import METRICS, compatibility, criteria
from dpcompat.evaluate.metrics import retrieval_metrics
from dpcompat.evaluate.report import report_dict, summary, write_reports

NAN = float("nan")


def test_criteria_on_a_hand_made_matrix():
    c = np.array([[0.50, NAN, NAN],
                  [0.60, 0.55, NAN],
                  [0.40, 0.56, 0.70]])
    got = criteria(c)
    assert got.compatible == [(1, 0, True), (2, 0, False), (2, 1, True)]
    assert got.AC == pytest.approx(2 / 3)
    assert got.AM == pytest.approx(np.mean([0.5, 0.6, 0.55, 0.4, 0.56, 0.7]))
    assert got.margins[1, 0] == pytest.approx(0.10)
    assert got.margins[2, 0] == pytest.approx(-0.10)
    assert got.margins[2, 1] == pytest.approx(0.01)
    assert np.isnan(got.margins[0, 0]) and np.isnan(got.margins[0, 1])
    equal = criteria(np.array([[0.5, NAN], [0.5, 0.5]]))  # equal is not "better": not compatible
    assert equal.compatible == [(1, 0, False)] and equal.AC == 0.0
    single = criteria(np.array([[0.5]]))
    assert math.isnan(single.AC) and single.AM == 0.5


def sets(seed=0, t=3, n=40, d=8):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d)).astype(np.float32)
    out = []
    for _ in range(t):
        x = base + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out, np.arange(n) % 4


def test_compatibility_fills_the_lower_triangle_cell_by_cell():
    embeddings, labels = sets()
    calls = []
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True,
                           progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6)
    for name in METRICS:
        m = result.metrics[name]
        assert np.isnan(m[np.triu_indices(3, 1)]).all()
        assert np.isfinite(m[np.tril_indices(3)]).all()
    want = retrieval_metrics(embeddings[2], labels, embeddings[1], labels, k=3, exclude_self=True)
    assert {name: result.metrics[name][2, 1] for name in METRICS} == pytest.approx(want)
    np.testing.assert_allclose(result.cka, result.cka.T)
    np.testing.assert_allclose(np.diag(result.cka), 1.0, rtol=1e-6)


def write(tmp_path):
    embeddings, labels = sets()
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True)
    models = ["task1", "task2", "task3"]
    query = {"spec": "cifar10:test", "count": 40}
    protocol = {"similarity": "cosine", "k": 3, "own_image_left_out": True}
    return result, models, query, protocol, write_reports(result, models, query, query, protocol, tmp_path / "out")


def test_json_schema(tmp_path):
    result, models, query, protocol, _ = write(tmp_path)
    data = json.loads((tmp_path / "out" / "compatibility.json").read_text())
    assert set(data) >= {"models", "query", "gallery", "metrics", "criteria", "cka"}
    assert data["models"] == models
    assert set(data["metrics"]) == {"top1", "top5", "knn", "mAP"} == set(data["criteria"])
    for name, c in data["metrics"].items():
        assert len(c) == 3 and all(len(row) == 3 for row in c)
        for i in range(3):
            for j in range(3):
                assert (c[i][j] is None) == (j > i)
                if j <= i:
                    assert isinstance(c[i][j], float) and c[i][j] == pytest.approx(result.metrics[name][i, j])
        crit = data["criteria"][name]
        assert set(crit) >= {"AC", "AM", "compatible"}
        assert [tuple(x[:2]) for x in crit["compatible"]] == [(1, 0), (2, 0), (2, 1)]
        assert all(x[2] == (c[x[0]][x[1]] > c[x[1]][x[1]]) for x in crit["compatible"])
        assert crit["AC"] == pytest.approx(np.mean([x[2] for x in crit["compatible"]]))
        assert [m[2] for m in crit["margins"]] == pytest.approx([c[i][j] - c[j][j] for i, j, _ in crit["compatible"]])
    k = np.array(data["cka"], dtype=float)
    assert k.shape == (3, 3) and np.allclose(k, k.T)
    assert data == json.loads(json.dumps(report_dict(result, models, query, query, protocol)))


def test_csv_markdown_and_heatmaps(tmp_path):
    result, models, query, protocol, written = write(tmp_path)
    out = tmp_path / "out"
    assert {p.name for p in written} == {"compatibility.json", "compatibility.csv", "compatibility.md",
                                         "heatmap_top1.png", "heatmap_top5.png", "heatmap_knn.png",
                                         "heatmap_mAP.png", "heatmap_cka.png"}
    for p in written:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "compatibility.csv")))
    top1 = [r for r in rows if r["metric"] == "top1"]
    assert len(top1) == 6 and len([r for r in rows if r["metric"] == "cka"]) == 9
    cell = next(r for r in top1 if r["query_model"] == "task3" and r["gallery_model"] == "task1")
    assert float(cell["value"]) == pytest.approx(result.metrics["top1"][2, 0], abs=1e-6)
    assert cell["compatible"] == str(result.metrics["top1"][2, 0] > result.metrics["top1"][0, 0]).lower()
    md = (out / "compatibility.md").read_text()
    assert "| query \\ gallery | task1 | task2 | task3 |" in md
    assert "## top1: AC" in md and "Linear CKA" in md
    stars = sum(ok for _, _, ok in result.criteria["top1"].compatible)
    top1_section = md.split("## top1")[1].split("## top5")[0]
    assert top1_section.count(" *") == stars
    text = summary(result, models, query, query, protocol)
    assert "top1" in text and "mAP" in text and "own image left out" in text
