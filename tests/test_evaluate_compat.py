"""Compatibility matrices, criteria, flips, CMC and the report files (JSON schema, CSV, Markdown, PNG)."""
import csv
import json
import math

import numpy as np
import pytest

from dpcompat.evaluate.decide import decide_arrays
from dpcompat.evaluate.metrics.compat import compatibility, criteria
from dpcompat.evaluate.metrics.neighbours import cmc_curve
from dpcompat.evaluate.metrics.ranking import retrieval_outcomes
from dpcompat.evaluate.metrics.table import chosen, retrieval_metrics
from dpcompat.evaluate.pipeline import Evaluation
from dpcompat.evaluate.report.labels import figure_files
from dpcompat.evaluate.report.writer import report_dict, summary, write_reports

NAN = float("nan")


def test_criteria_on_a_hand_made_matrix():
    c = np.array([[0.50, NAN, NAN],
                  [0.60, 0.55, NAN],
                  [0.40, 0.56, 0.70]])
    got = criteria(c)
    assert got.criterion == [(1, 0, True), (2, 0, False), (2, 1, True)]
    assert got.AC == pytest.approx(2 / 3)
    assert got.AM == pytest.approx(np.mean([0.5, 0.6, 0.55, 0.4, 0.56, 0.7]))
    assert got.margins[1, 0] == pytest.approx(0.10)
    assert got.margins[2, 0] == pytest.approx(-0.10)
    assert got.margins[2, 1] == pytest.approx(0.01)
    assert np.isnan(got.margins[0, 0]) and np.isnan(got.margins[0, 1])
    assert got.BC == pytest.approx(((0.40 - 0.50) + (0.56 - 0.55)) / 2)  # last row against each diagonal
    assert got.FC == pytest.approx(((0.60 - 0.55) + (0.56 - 0.70)) / 2)  # C[i][i-1] - C[i][i]
    np.testing.assert_allclose(got.ac_per_model, [NAN, 1.0, 0.5])
    assert got.update_gain[1, 0] == pytest.approx(0.10 / 0.05)
    assert got.update_gain[2, 0] == pytest.approx(-0.10 / 0.20)
    assert got.update_gain[2, 1] == pytest.approx(0.01 / 0.15)
    assert np.isnan(criteria(c, min_denominator=0.06).update_gain[1, 0])  # |0.55 - 0.50| < 0.06: undefined
    equal = criteria(np.array([[0.5, NAN], [0.5, 0.5]]))  # equal is not "better": not compatible
    assert equal.criterion == [(1, 0, False)] and equal.AC == 0.0 and np.isnan(equal.update_gain[1, 0])
    single = criteria(np.array([[0.5]]))
    assert math.isnan(single.AC) and single.AM == 0.5 and math.isnan(single.BC) and math.isnan(single.FC)


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
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True, resamples=50,
                           progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6)
    assert list(result.metrics) == list(chosen()) and "mAP" not in result.metrics  # exact mAP: opt-in
    for name in chosen():
        m = result.metrics[name]
        assert np.isnan(m[np.triu_indices(3, 1)]).all()
        assert np.isfinite(m[np.tril_indices(3)]).all()
    want = retrieval_metrics(embeddings[2], labels, embeddings[1], labels, k=3, exclude_self=True)
    assert {name: result.metrics[name][2, 1] for name in chosen()} == pytest.approx(want)
    np.testing.assert_allclose(result.cka, result.cka.T)
    np.testing.assert_allclose(np.diag(result.cka), 1.0, rtol=1e-6)


def test_negative_flips_and_cmc_match_per_query_loops():
    embeddings, labels = sets(seed=4)
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True, resamples=50)
    cell = {(i, j): retrieval_outcomes(embeddings[i], labels, embeddings[j], labels, k=3, exclude_self=True)
            for i in range(3) for j in range(i + 1)}
    for i in range(3):
        for j in range(i):
            old, new = cell[j, j], cell[i, j]
            flips_top1 = sum(old.first_hit[q] == 1 and new.first_hit[q] != 1 for q in range(40)) / 40
            flips_knn = sum(old.knn_correct[q] and not new.knn_correct[q] for q in range(40)) / 40
            assert result.negative_flips["top1"][i, j] == pytest.approx(flips_top1)
            assert result.negative_flips["knn"][i, j] == pytest.approx(flips_knn)
        for j in range(i + 1):
            np.testing.assert_allclose(result.cmc[i, j], cmc_curve(cell[i, j].first_hit, 10))
    assert np.isnan(result.negative_flips["top1"][np.triu_indices(3)]).all()


def evaluation(tmp_path, notes=(), provenance=None):
    embeddings, labels = sets()
    result = compatibility(embeddings, embeddings, labels, labels, k=3, exclude_self=True, resamples=200)
    models = ["task1", "task2", "task3"]
    query = {"spec": "cifar10:test", "count": 40}
    protocol = {"similarity": "cosine", "k": 3, "own_image_left_out": True}
    decision = decide_arrays(result, models, ["a" * 64, "b" * 64, "c" * 64], embeddings, embeddings, labels, labels,
                             k=3, exclude_self=True)
    records = [{"id": m, "sha256": s, "file": None, "task": t} for t, (m, s) in enumerate(zip(models, "abc"), 1)]
    return Evaluation(result=result, models=models, query=query, gallery=query, protocol=protocol, decision=decision,
                      provenance=provenance or [{}, {}, {}], notes=list(notes), records=records)


def test_json_schema(tmp_path):
    ev = evaluation(tmp_path)
    write_reports(ev, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "compatibility.json").read_text())
    assert set(data) >= {"models", "query", "gallery", "metrics", "criteria", "cka", "cmc", "negative_flip_rate",
                         "significance", "provenance", "notes", "figures", "decision", "model_records",
                         "evidence_definitions"}
    assert data["decision"]["rule"]["metric"] == "top1" and data["decision"]["rule"]["tolerance"] == 0.01
    assert [(p["gallery"], p["query"]) for p in data["decision"]["pairs"]] == [
        ("task1", "task2"), ("task1", "task3"), ("task2", "task3")]
    assert [p["gallery_sha256"] for p in data["decision"]["pairs"]] == ["a" * 64, "a" * 64, "b" * 64]
    assert data["models"] == ev.models
    assert set(data["metrics"]) == set(chosen()) == set(data["criteria"])
    for name, c in data["metrics"].items():
        assert len(c) == 3 and all(len(row) == 3 for row in c)
        for i in range(3):
            for j in range(3):
                assert (c[i][j] is None) == (j > i)
                if j <= i:
                    assert isinstance(c[i][j], float) and c[i][j] == pytest.approx(ev.result.metrics[name][i, j])
        crit = data["criteria"][name]
        assert [tuple(x[:2]) for x in crit["empirical_criterion"]] == [(1, 0), (2, 0), (2, 1)]
        assert all(x[2] == (c[x[0]][x[1]] > c[x[1]][x[1]]) for x in crit["empirical_criterion"])
        assert crit["AC"] == pytest.approx(np.mean([x[2] for x in crit["empirical_criterion"]]))
        assert crit["AC_interval"][0] <= crit["AC"] <= crit["AC_interval"][1] or crit["AC"] in crit["AC_interval"]
        assert "verdicts" not in crit and "compatible" not in crit  # one meaning of "compatible": the rule's
        for i, own in enumerate(crit["diagonal"]):
            assert own["value"] == c[i][i] and own["interval"][0] <= own["value"] <= own["interval"][1]
        for cell in crit["cells"]:
            i, j = cell["query"], cell["gallery"]
            assert cell["difference"] == pytest.approx(c[i][j] - c[j][j])
            assert cell["interval"][0] <= cell["interval"][1]
            assert "verdict" not in cell and cell["reindex_interval"][0] <= cell["reindex_interval"][1]
            assert (cell["mcnemar"] is None) == (name not in ("top1", "top5", "knn"))
            assert (cell["update_gain"] is None) == (cell["update_gain_undefined"] is not None)
    assert data["cmc"]["depth"] == 10 and len(data["cmc"]["curves"][2][1]) == 10 and data["cmc"]["curves"][0][1] is None
    assert data["significance"]["resamples"] == 200 and data["significance"]["queries"] == 40
    k = np.array(data["cka"], dtype=float)
    assert k.shape == (3, 3) and np.allclose(k, k.T)
    assert data == json.loads(json.dumps(report_dict(ev)))


def test_csv_markdown_and_figures(tmp_path):
    ev = evaluation(tmp_path, notes=["GENERATED DATA: made up"],
                    provenance=[{"data": "generated", "backbone": "random"}] * 3)
    written = write_reports(ev, tmp_path / "out")
    out = tmp_path / "out"
    expected = {"compatibility.json", "compatibility.csv", "compatibility.md", "report.html",
                *figure_files(names=chosen())}
    assert {p.name for p in written} == expected == {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for p in written:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "compatibility.csv")))
    top1 = [r for r in rows if r["metric"] == "top1"]
    assert len(top1) == 6 and len([r for r in rows if r["metric"] == "cka"]) == 9
    cell = next(r for r in top1 if r["query_model"] == "task3" and r["gallery_model"] == "task1")
    assert float(cell["value"]) == pytest.approx(ev.result.metrics["top1"][2, 0], abs=1e-6)
    assert "compatible" not in cell  # the point criterion is evidence, not a second "compatible"
    test = next(t for t in ev.result.criteria["top1"].tests if (t.query, t.gallery) == (2, 0))
    pair = next(p for p in ev.decision.pairs if (p.query, p.gallery) == ("task3", "task1"))
    assert (cell["verdict"], cell["recommendation"]) == (pair.verdict, pair.recommendation)
    assert float(cell["low"]) == pytest.approx(test.low, abs=1e-6)
    assert all(r["verdict"] == "" for r in rows if r["metric"] != "top1")  # other metrics: evidence only
    md = (out / "compatibility.md").read_text()
    assert (md.index("GENERATED DATA") < md.index("## Decision") < md.index("**Rule.**") < md.index("## Figures")
            < md.index("## Evidence") < md.index("## top1"))
    assert all(f"`{name}`" in md.split("## Evidence")[0] for name in figure_files(names=chosen()))
    assert all(p.words in md for p in ev.decision.pairs)
    assert "| task1 | generated | random |" in md
    assert "| query \\ gallery | task1 | task2 | task3 |" in md and "Linear CKA" in md and "Negative flip rate" in md
    text = summary(ev)
    assert "top1" in text and "mAP@R" in text and "own image left out" in text and "GENERATED DATA" in text
    assert text.startswith("DECISION RULE: ") and text.index("decision:") < text.index("evidence, not verdicts")
    assert "compatible / not / undecided" not in text  # AC's line no longer reads as a verdict
