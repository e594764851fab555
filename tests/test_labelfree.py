"""Label-free compatibility (issue 24 item 2): cross-model self-retrieval and neighbourhood agreement
against brute force (numpy argsort) with tied similarities, through the metric table and the
decision rule, and agreeing with the labelled verdicts on clear cases."""
import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.metrics import labelfree
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.decision import COMPATIBLE, NOT_COMPATIBLE, Rule
from dpcompat.evaluate.metrics.labelfree import REQUIREMENTS, item_outcomes
from dpcompat.evaluate.metrics.table import LABEL_FREE, METRICS, known
from dpcompat.evaluate.pipeline import DecisionOptions, decide_arrays
from decision_fixtures import pairs_data, rotation, unit


def tied(n=30, d=6, seed=0, normalise=True):
    """Rows with entries in {-1, 0, 1} (many equal similarities), two of them exact duplicates; unit rows,
    or the integer rows themselves (``normalise`` False: every product exact, whatever the order of the sums)."""
    x = np.random.default_rng(seed).integers(-1, 2, (n, d)).astype(np.float32)
    x[np.abs(x).sum(axis=1) == 0, 0] = 1  # no zero row
    x[7] = x[3]
    return unit(x) if normalise else x


def brute(query, gallery, k, reference=None):
    """Places of each item's own gallery entry and its k nearest others, by a full argsort of the total
    order (decreasing similarity, then increasing index)."""
    n = len(query)
    sim = query @ gallery.T
    places, neighbours = np.empty(n, np.int64), np.empty((n, k), np.int64)
    for i in range(n):
        order = np.lexsort((np.arange(n), -sim[i]))
        places[i] = np.flatnonzero(order == i)[0] + 1
        neighbours[i] = order[order != i][:k]
    reference = neighbours if reference is None else reference
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(neighbours, reference)])
    return places, neighbours, overlap


@pytest.mark.parametrize("block", [4096 * 1024, 37])
def test_self_places_and_overlap_match_brute_force_with_ties(monkeypatch, block):
    monkeypatch.setattr(labelfree, "_BLOCK_ELEMENTS", block)  # 37 elements: one row per block
    old, new = tied(normalise=False), tied(seed=1, normalise=False)
    sim = old @ old.T
    assert sum(len(row) - len(np.unique(row)) for row in sim) > 5 * len(old)  # the data does tie, in every row
    _, own, _ = brute(old, old, 4)
    for query in (old, new):
        got = item_outcomes(query, old, k=4, reference=own)
        places, neighbours, overlap = brute(query, old, 4, own)
        np.testing.assert_array_equal(got.self_place, places)
        np.testing.assert_array_equal(got.neighbours, neighbours)
        np.testing.assert_allclose(got.overlap, overlap)
    diagonal = item_outcomes(old, old, k=4)
    assert diagonal.overlap.tolist() == [1.0] * len(old)
    assert diagonal.self_place[7] == 2 and diagonal.self_place[3] == 1  # a duplicate with a lower index comes first
    with pytest.raises(ValueError, match="between 1 and 29"):
        item_outcomes(old, old, k=30, requires=REQUIREMENTS)


def test_label_free_cells_through_the_table_and_matrices():
    models = [tied(seed=s) for s in range(3)]
    result = compatibility(models, models, None, None, k=3, resamples=50, metrics=list(LABEL_FREE))
    assert list(result.metrics) == list(LABEL_FREE) and not result.negative_flips
    for i in range(3):
        for j in range(i + 1):
            places, _, overlap = brute(models[i], models[j], 3, brute(models[j], models[j], 3)[1])
            assert result.metrics["self-top1"][i, j] == pytest.approx(np.mean(places == 1))
            assert result.metrics["self-top5"][i, j] == pytest.approx(np.mean(places <= 5))
            assert result.metrics["overlap@k"][i, j] == pytest.approx(overlap.mean())
            assert result.self_rank["median"][i, j] == np.median(places)
            np.testing.assert_allclose(result.cmc[i, j], [np.mean(places <= d) for d in range(1, 11)])
    assert result.criteria["self-top1"].tests[0].p_value is not None  # right/wrong: McNemar as evidence
    # on labelled data they come beside the label metrics, which do not change
    x, labels = pairs_data(pairs=20)
    both = compatibility([x, x], [x, x], labels, labels, exclude_self=True, resamples=50, metrics=known())
    alone = compatibility([x, x], [x, x], labels, labels, exclude_self=True, resamples=50)
    assert list(both.metrics) == known() and list(alone.metrics) == list(METRICS)
    for name in METRICS:
        np.testing.assert_array_equal(both.per_query[name], alone.per_query[name])


def decisions(metric, models, labels):
    result = compatibility(models, models, labels, labels, exclude_self=True, resamples=200, metrics=known())
    decision = decide_arrays(result, ["old", "same", "rotated"], [None] * 3, models, models, labels, labels,
                             exclude_self=True, options=DecisionOptions(rule=Rule(metric=metric), steps=4))
    return {(p.gallery, p.query): p for p in decision.pairs}


@pytest.mark.parametrize("metric", ["top1", "self-top1", "overlap@k"])
def test_label_free_and_labelled_verdicts_agree_on_clear_cases(metric):
    x, labels = pairs_data(pairs=60)
    pairs = decisions(metric, [x, x.copy(), unit(x @ rotation(x.shape[1]))], labels)
    same = pairs["old", "same"]
    assert same.verdict == COMPATIBLE and same.difference == 0 and same.recommendation == "keep"
    for gallery in ("old", "same"):
        p = pairs[gallery, "rotated"]
        assert p.verdict == NOT_COMPATIBLE and p.high < -0.5, (metric, p)
        assert p.recommendation in ("backfill", "re-index") and p.reindex_interval is not None
    if metric != "top1":
        assert pairs["old", "same"].reference == 1.0  # the deployed model's own label-free value


def test_unlabelled_or_unpaired_data_gets_the_label_free_metrics_or_a_reason():
    options = DecisionOptions()
    assert options.for_data("d", True)[1] == list(METRICS)
    unlabelled, names = options.for_data("d", False)
    assert unlabelled.rule.metric == "self-top1" and names == list(LABEL_FREE)
    assert DecisionOptions(label_free=True).for_data("d", True)[1] == known()
    given = DecisionOptions.of("top1", 0.01, 10, 0, None)
    with pytest.raises(InputError, match=r"^--primary-metric top1: d is unlabelled, and top-1 compares the labels"):
        given.for_data("d", False)
    with pytest.raises(InputError, match="the query set must be the gallery's items"):
        DecisionOptions.of("overlap@k", 0.01, 10, 0, None).check("d", True, False)
    DecisionOptions().check("d", True, False)  # label metrics need no pairing


def test_parts_of_evaluate_that_need_labels_are_refused_before_any_work():
    from dpcompat.evaluate.run import EvaluateOptions

    with pytest.raises(InputError, match=r"^d: unlabelled data; --projections, --adapters measure\(s\) label metrics"):
        EvaluateOptions(projections="pca", adapters="a.npz").check("d", False, True)
    with pytest.raises(InputError, match="^--adapters: adapted rows are judged by a label metric, and --primary-metric "
                                         "self-top1 is label-free"):
        EvaluateOptions(adapters="a.npz", primary_metric="self-top1").check("d", True, True)
    EvaluateOptions(adapters="a.npz", label_free=True).check("d", True, True)  # label-free metrics as evidence
