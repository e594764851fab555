"""The metric table: a new entry reaches every matrix, criterion and report file with no other code
changed, and each entry's declared requirement is all that its calculation reads."""
import csv
import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from dpcompat.evaluate.metrics import table
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.ranking import FIRST_HIT, FIRST_R, REQUIREMENTS, retrieval_outcomes
from dpcompat.evaluate.metrics.table import Metric, calculate_knn, calculate_topk, per_query, retrieval_metrics
from dpcompat.evaluate.metrics.decision import Rule
from dpcompat.evaluate.decide import DecisionOptions, decide_arrays
from dpcompat.evaluate.pipeline import Evaluation
from dpcompat.evaluate.report import figures
from dpcompat.evaluate.report.writer import write_reports
from dpcompat.evaluate.search.backfill import exact_curve
from dpcompat.evaluate.search.cells import index_compatibility
from dpcompat.evaluate.search.indexes import LIST_REQUIREMENTS, IndexParams, exact_topk, list_outcomes
from dpcompat.evaluate.search.precision import storage_matrices

TOP3 = Metric("top3", partial(calculate_topk, k=3), {FIRST_HIT}, "share of queries with a relevant item among the "
              "first three", label="top-3", binary=True, flip=True, index_name="top3@K", places=3)


def sets(seed=0, t=3, n=40, d=8, decimals=None):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d)).astype(np.float32)
    out = []
    for _ in range(t):
        x = base + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
        if decimals is not None:
            x = np.round(x, decimals)  # tied similarities
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out, np.arange(n) % 4


def test_a_new_entry_reaches_matrices_criteria_flips_and_report_files(monkeypatch, tmp_path):
    monkeypatch.setitem(table.METRICS, "top3", TOP3)
    embeddings, labels = sets()
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True, resamples=50)
    for i in range(3):
        for j in range(i + 1):
            first = retrieval_outcomes(embeddings[i], labels, embeddings[j], labels, k=3, exclude_self=True).first_hit
            assert result.metrics["top3"][i, j] == pytest.approx(np.mean((first >= 1) & (first <= 3)))
    assert result.metrics["top1"][2, 1] <= result.metrics["top3"][2, 1] <= result.metrics["top5"][2, 1]
    crit = result.criteria["top3"]
    assert len(crit.tests) == 3 and all(t.p_value is not None for t in crit.tests)  # binary: McNemar
    assert np.isfinite(result.negative_flips["top3"][np.tril_indices(3, -1)]).all()

    drawn = {}  # figure file -> its arguments; drawing the PNGs is left out to keep the test fast
    for name in ("metric_heatmap", "margin_heatmaps", "cmc_curves", "flip_heatmaps", "cka_heatmap"):
        monkeypatch.setattr(figures, name, lambda path, *args, **kw: drawn.setdefault(path.name, args))
    data = {"spec": "generated", "count": 40}
    decision = decide_arrays(result, ["a", "b", "c"], [None] * 3, embeddings, embeddings, labels, labels, k=3,
                             exclude_self=True, options=DecisionOptions(rule=Rule(metric="top3")))  # the rule's metric
    ev = Evaluation(result=result, models=["a", "b", "c"], query=data, gallery=data, decision=decision,
                    protocol={"similarity": "cosine", "k": 3, "own_image_left_out": True}, provenance=[{}] * 3)
    out = tmp_path / "report"
    write_reports(ev, out)
    report = json.loads((out / "compatibility.json").read_text())
    assert list(report["metrics"]) == [*table.chosen()] and list(report["metrics"])[-1] == "top3"
    assert report["metrics"]["top3"][2][1] == pytest.approx(result.metrics["top3"][2, 1])
    assert report["criteria"]["top3"]["cells"][0]["mcnemar"] is not None
    assert list(report["negative_flip_rate"]) == ["top1", "knn", "top3"]
    assert report["decision"]["rule"]["metric"] == "top3" and "top-3 C[i][j]" in report["decision"]["rule"]["text"]
    assert [p["value"] for p in report["decision"]["pairs"]] == pytest.approx(
        [result.metrics["top3"][i, j] for i, j in ((1, 0), (2, 0), (2, 1))])
    rows = list(csv.reader((out / "compatibility.csv").open()))
    assert sum(r[0] == "top3" for r in rows) == 6 and sum(r[0] == "negative_flip_rate_top3" for r in rows) == 3
    markdown = (out / "compatibility.md").read_text()
    assert "## top3" in markdown and "### top3" in markdown and "top-1, kNN, top-3" in markdown
    assert "heatmap_top3.png" in drawn and "heatmap_top3.png" in report["figures"]
    assert "top3" in drawn["margins.png"][0] and "top3" in drawn["negative_flips.png"][0]


def test_a_new_entry_reaches_index_cells_backfill_and_precision(monkeypatch):
    monkeypatch.setitem(table.METRICS, "top3", TOP3)
    embeddings, labels = sets(seed=1)
    stored = [SimpleNamespace(model_id=m, embeddings=e, count=40, dim=8, labels=labels)
              for m, e in zip("abc", embeddings)]
    (exact,) = index_compatibility(stored, stored, (), IndexParams(), "unused", k=3, exclude_self=True, depth=10)
    want = retrieval_metrics(embeddings[2], labels, embeddings[0], labels, k=3, exclude_self=True)["top3"]
    assert list(exact.metrics) == ["top1", "top5", "knn", "mAP@K", "top3@K"]
    assert exact.metrics["top3@K"][2, 0] == pytest.approx(want)  # the exact top 10 hold every top-3 hit
    assert np.isfinite(exact.criteria["top3@K"].AM)
    curve = exact_curve(embeddings[2], embeddings[0], embeddings[2], labels, labels, np.arange(40),
                        np.array([0.0, 1.0]), k=3, exclude_self=True)
    assert curve["top3"][0] == pytest.approx(want)
    matrices = storage_matrices(embeddings, embeddings, labels, labels, "fp16", k=3, exclude_self=True)
    assert np.isfinite(matrices["top3"][np.tril_indices(3)]).all()


@pytest.mark.parametrize("name", list(table.METRICS))
def test_each_entry_needs_only_what_it_declares(name):
    metric = table.METRICS[name]
    embeddings, labels = sets(seed=2, decimals=1)
    labels = labels.copy()
    labels[0] = 9  # a query with no relevant item: NaN or 0 where the metric says so
    args = (embeddings[1], labels, embeddings[0], labels)
    full = retrieval_outcomes(*args, k=3, exclude_self=True, requires=REQUIREMENTS)
    only = retrieval_outcomes(*args, k=3, exclude_self=True, requires=metric.requires)
    np.testing.assert_array_equal(per_query(only, name), per_query(full, name))
    if metric.index_name:
        found = exact_topk(embeddings[1], embeddings[0], 10, exclude_self=True)
        every = list_outcomes(found, labels, labels, k=3, exclude_self=True, requires=LIST_REQUIREMENTS)
        own = list_outcomes(found, labels, labels, k=3, exclude_self=True, requires=metric.requires)
        np.testing.assert_array_equal(per_query(own, name), per_query(every, name))


def test_an_entry_that_reads_what_it_does_not_declare_is_caught(monkeypatch):
    embeddings, labels = sets()
    monkeypatch.setitem(table.METRICS, "wrong", Metric("wrong", calculate_knn, {FIRST_HIT}, "reads the kNN vote"))
    only = retrieval_outcomes(embeddings[1], labels, embeddings[0], labels, k=3, requires={FIRST_HIT})
    with pytest.raises(AttributeError):
        per_query(only, "wrong")
    with pytest.raises(ValueError, match="requires first_r"):
        per_query(only, "mAP@R")
    assert only.knn_correct is None and only.ap is None  # not computed when not required


def test_entries_are_checked_when_declared():
    with pytest.raises(ValueError, match="binary"):
        Metric("x", calculate_knn, {FIRST_R}, "", flip=True)
    with pytest.raises(ValueError, match="unknown ranking requirement"):
        Metric("x", calculate_knn, {"everything"}, "")
    with pytest.raises(ValueError, match="cannot give"):
        list_outcomes(np.zeros((2, 5), np.int64), np.zeros(2, int), np.zeros(6, int), requires={FIRST_R})
