"""The decision rule against constructed cases with known answers: identical models keep the index,
a rotated model re-indexes, a model changed on half the gallery backfills half, a small N asks for
more queries with an N that a simulation confirms, one model decides nothing and says so."""
import math
from statistics import NormalDist

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.metrics.decision import Rule, judge, smallest_reaching
from dpcompat.evaluate.metrics.significance import COMPATIBLE, NOT_COMPATIBLE, UNDECIDED
from dpcompat.evaluate.decide import DecisionOptions, decide_arrays
from dpcompat.evaluate.pipeline import Evaluation
from dpcompat.evaluate.report.writer import report_dict, summary
from dpcompat.evaluate.search.backfill import backfill_order, exact_curve, fractions
from decision_fixtures import pairs_data, rotation


def decided(query, labels, *, options=DecisionOptions(), gallery=None, resamples=1000):
    """(result, decision) of models ``query`` (their galleries the same embeddings unless given),
    each query's own image left out."""
    gallery = gallery or query
    result = compatibility(query, gallery, labels, labels, exclude_self=True, resamples=resamples)
    models = [f"task{t}" for t in range(1, len(query) + 1)]
    return result, decide_arrays(result, models, [None] * len(query), query, gallery, labels, labels,
                                 exclude_self=True, options=options)


def test_rule_verdicts_at_and_around_the_tolerance():
    rule = Rule()  # top1, 0.01
    assert rule.verdict(-0.005, 0.02) == COMPATIBLE
    assert rule.verdict(-0.01, 0.0) == COMPATIBLE  # loses at most the tolerance: compatible
    assert rule.verdict(-0.03, -0.011) == NOT_COMPATIBLE
    assert rule.verdict(-0.02, 0.0) == rule.verdict(-0.02, -0.01) == UNDECIDED  # the interval holds -0.01
    assert Rule(tolerance=0.0).verdict(0.0, 0.0) == COMPATIBLE  # identical models, at any tolerance
    assert Rule(tolerance=0.0).verdict(-1e-3, 0.0) == UNDECIDED
    for bad in (dict(metric="top-1"), dict(tolerance=-0.01), dict(tolerance=1.0), dict(tolerance=float("nan"))):
        with pytest.raises(InputError):
            Rule(**bad)


def test_queries_needed_is_the_power_formula_and_says_when_nothing_decides():
    rule = Rule()
    z, power = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.8)
    se = 0.04 / (2 * z)
    want = math.ceil(500 * ((z + power) * se / 0.02) ** 2)  # d = |-0.03 + 0.01|
    assert rule.queries_needed(500, -0.03, -0.05, -0.01) == want
    assert rule.queries_needed(500, -0.01, -0.03, 0.01) is None  # at the tolerance: no N decides it
    assert rule.queries_needed(500, -0.0101, -0.03, 0.01) is None  # more than 100 N
    assert rule.queries_needed(500, 0.03, -0.02, 0.08) > 500


def test_the_bisection_finds_what_a_linear_scan_finds_in_log_steps():
    for steps in (1, 2, 7, 10, 64):
        for first in range(1, steps + 2):
            calls = []

            def reaches(s):
                calls.append(s)
                return s >= first

            found = smallest_reaching(steps, reaches)
            assert found == (first if first <= steps else None)
            assert len(calls) <= math.ceil(math.log2(steps)) + 1


def paired_sample(rng, n, lose=0.06, gain=0.03, right=0.9):
    """(candidate, reference) right/wrong per query: the reference is right with probability ``right``;
    a query is lost (right before, wrong after) with probability ``lose`` and gained with ``gain``,
    so the true D is gain - lose."""
    old = rng.random(n) < right
    u = rng.random(n)
    new = np.where(old, u >= lose / right, u < gain / (1 - right))
    return new.astype(float), old.astype(float)


def test_the_queries_needed_decide_a_fresh_sample_in_most_runs():
    """80% power: at the estimated N about four fresh samples in five decide; at a quarter of it, few."""
    rule, rng = Rule(), np.random.default_rng(0)
    n = 400  # a first sample holding exactly the true rates: 6% lost, 3% gained (D = -0.03, delta = 0.01)
    old = np.ones(n)
    old[:40] = 0  # 90% right before
    new = old.copy()
    new[40:64] = 0  # 24 lost
    new[:12] = 1  # 12 gained
    first = judge(new, old, rule, resamples=1000, seed=0)
    assert first.verdict == UNDECIDED and first.difference == pytest.approx(-0.03)
    needed = rule.queries_needed(n, first.difference, first.low, first.high)
    sd = math.sqrt(0.09 - 0.03 ** 2)  # of the per-query difference D in {-1, 0, 1}
    theory = ((NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)) * sd / 0.02) ** 2
    assert 0.75 * theory < needed < 1.33 * theory

    def decides(size, runs=200):
        verdicts = [judge(*paired_sample(rng, size), rule, resamples=1000, seed=s).verdict for s in range(runs)]
        assert verdicts.count(COMPATIBLE) <= 0.02 * runs  # wrong the other way: rare
        return 1 - verdicts.count(UNDECIDED) / runs

    assert 0.7 <= decides(needed) <= 0.92
    assert decides(needed // 4) <= 0.5


def test_identical_models_keep_the_index_and_a_rotated_one_re_indexes():
    x, labels = pairs_data()
    _, decision = decided([x, x.copy(), x @ rotation(x.shape[1])], labels)
    keep, rotated, rotated_on_copy = decision.pairs
    assert (keep.gallery, keep.query, keep.verdict, keep.recommendation) == ("task1", "task2", COMPATIBLE, "keep")
    assert keep.difference == keep.low == keep.high == 0 and keep.words.startswith("keep the index: task2 on task1")
    for p in (rotated, rotated_on_copy):
        assert (p.verdict, p.recommendation, p.backfill_fraction) == (NOT_COMPATIBLE, "re-index", None)
        assert p.value == 0 and p.reference == 1 and p.reindex_interval == [0.0, 0.0]  # a rotation keeps cosines
        assert "even re-indexed" not in p.words
    weak = pairs_data(noise=1.0)[0] @ rotation(x.shape[1])  # worse than task1 even on its own gallery
    (worse,) = decided([x, weak], labels)[1].pairs
    assert worse.recommendation == "re-index" and worse.reindex_interval[1] < -0.01
    assert "note: even re-indexed, task2 scores below task1" in worse.words


def test_a_model_changed_on_half_the_gallery_backfills_half(tmp_path):
    """New = old on the classes of A, rotated on those of B: re-embedding B (listed first) is enough."""
    x, labels = pairs_data()
    b = labels % 2 == 1
    new = x.copy()
    new[b] = x[b] @ rotation(x.shape[1])
    order = np.concatenate([np.flatnonzero(b), np.flatnonzero(~b)])
    (tmp_path / "order.txt").write_text("\n".join(map(str, order)))
    options = DecisionOptions(order_file=str(tmp_path / "order.txt"))
    result, decision = decided([x, new], labels, options=options)
    (p,) = decision.pairs
    assert (p.verdict, p.recommendation, p.backfill_fraction) == (NOT_COMPATIBLE, "backfill", 0.5)
    assert p.value == pytest.approx(0.5) and p.words.startswith("backfill 50% of the gallery (re-embedded by task2)")
    curve = exact_curve(new, x, new, labels, labels, order, fractions(10), exclude_self=True)["top1"]
    np.testing.assert_allclose(curve, [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1, 1, 1, 1, 1])
    assert p.backfill_value == curve[5] and p.backfill_interval == [0.0, 0.0]
    _, random_order = decided([x, new], labels)  # a random order completes B only near f = 1
    assert random_order.pairs[0].recommendation == "re-index"


def test_a_better_candidate_backfills_the_first_fraction_a_linear_scan_finds():
    """A weak old model (top-1 about 0.5) and a rotated sharp one: the curve climbs from 0 to 1 and
    reaches the old model's own top-1 near the middle; bisection agrees with judging every step."""
    weak, labels = pairs_data(noise=1.0)
    sharp = pairs_data()[0] @ rotation(32)
    result, decision = decided([weak, sharp], labels)
    (p,) = decision.pairs
    assert p.recommendation == "backfill" and 0.3 <= p.backfill_fraction <= 0.7
    order = backfill_order(len(labels), seed=0)
    reference = argmax_top1(weak, weak, labels)
    assert reference.mean() == pytest.approx(result.metrics["top1"][0, 0])
    first = None
    for step in range(11):
        gallery = weak.copy()
        items = order[:round(step / 10 * len(labels))]
        gallery[items] = sharp[items]
        candidate = argmax_top1(sharp, gallery, labels)
        if judge(candidate, reference, Rule(), resamples=1000, seed=0).verdict == COMPATIBLE:
            first = step
            break
    assert p.backfill_fraction == first / 10 and p.backfill_value == pytest.approx(candidate.mean())


def test_a_small_sample_asks_for_more_queries():
    x, labels = pairs_data(pairs=40)
    new = x.copy()
    new[[0, 2]] = x[[0, 2]] @ rotation(x.shape[1])  # two of 80 queries miss on the old gallery
    result, decision = decided([x, new], labels, gallery=[x, x])
    (p,) = decision.pairs
    assert (p.verdict, p.recommendation) == (UNDECIDED, "collect") and p.difference == pytest.approx(-2 / 80)
    assert p.queries == 80 and p.queries_needed == Rule().queries_needed(80, p.difference, p.low, p.high) > 80
    assert p.words.startswith(f"collect about {p.queries_needed - 80} more queries")


def test_update_gain_is_given_only_where_the_re_index_change_is_significant():
    """Before: a re-index change of one query's worth (1/N) gave gains like 4.0 or -10.0."""
    x, labels = pairs_data(pairs=50)
    new = x.copy()
    new[0] = x[0] @ rotation(x.shape[1])  # item 0 and its partner miss on the new gallery: 0.98; on the old: 0.99
    result = compatibility([x, new], [x, new], labels, labels, exclude_self=True)
    c, m = result.criteria["top1"], result.metrics["top1"]
    assert (m[1, 0], m[1, 1]) == pytest.approx((0.99, 0.98))  # the old cut (1/N) gave a gain of 0.5 here
    assert c.tests[0].reindex_low < 0 <= c.tests[0].reindex_high and math.isnan(c.update_gain[1, 0])
    strong = compatibility([pairs_data(pairs=50, noise=1.0)[0], x], [pairs_data(pairs=50, noise=1.0)[0], x], labels,
                           labels, exclude_self=True).criteria["top1"]
    assert strong.tests[0].reindex_low > 0 and math.isfinite(strong.update_gain[1, 0])


def argmax_top1(query, gallery, labels):
    """Right/wrong top-1 of each query (row q) against the gallery less row q, by an argmax (the first
    of equal maxima: the lower index), float [N]."""
    sims = query.astype(np.float64) @ gallery.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return (labels[np.argmax(sims, axis=1)] == labels).astype(float)


def brute_top1(x, labels):
    """Top-1 of each query against the others, one query at a time (ties: the lower index)."""
    hits = []
    for q in range(len(x)):
        sims = [(-float(np.dot(x[q], x[g])), g) for g in range(len(x)) if g != q]
        hits.append(float(labels[min(sims)[1]] == labels[q]))
    return np.array(hits)


def test_one_model_decides_nothing_and_reports_its_own_quality_with_intervals():
    x, labels = pairs_data(pairs=60, noise=0.8)
    result, decision = decided([x], labels)
    assert decision.pairs == [] and result.criteria["top1"].tests == []
    hits = brute_top1(x, labels)
    c = result.criteria["top1"]
    assert result.metrics["top1"][0, 0] == pytest.approx(hits.mean())
    rng = np.random.default_rng(0)  # the documented resampling, as a slow loop
    means = sorted(hits[rng.integers(0, len(hits), len(hits))].mean() for _ in range(1000))
    want = np.percentile(means, [2.5, 97.5])
    assert [c.diagonal_low[0], c.diagonal_high[0]] == pytest.approx(want)
    ev = Evaluation(result=result, models=["task1"], query={"spec": "cifar10:test", "count": 120},
                    gallery={"spec": "cifar10:test", "count": 120}, decision=decision,
                    protocol={"similarity": "cosine", "k": 5, "own_image_left_out": True}, provenance=[{}])
    text = summary(ev)
    assert "no pair to decide" in text and f"{hits.mean():.4f} [{want[0]:.4f}, {want[1]:.4f}]" in text
    data = report_dict(ev)
    assert data["decision"]["pairs"] == [] and data["criteria"]["top1"]["AC"] is None
    assert data["criteria"]["top1"]["diagonal"][0]["interval"] == pytest.approx(list(want))
