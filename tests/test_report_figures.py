"""The figures' scales: changes on one symmetric scale with a floor (noise stays pale), no signed zeros,
undecided cells muted, one metric per backfill panel, the provenance banner on production figures."""
import numpy as np
import pytest

from dpcompat.evaluate.metrics.significance import COMPATIBLE, NOT_COMPATIBLE, UNDECIDED
from dpcompat.evaluate.report.figures import (CHANGE_FLOOR, _changes, _figure, _zoom_floor, change_limit,
                                              decision_figure, signed)
from dpcompat.evaluate.report.production import _panels, write_production


def test_signed_numbers_have_no_negative_zero():
    assert [signed(v) for v in (-0.0, -0.0004, 0.0004, 0.0)] == ["0.000"] * 4
    assert signed(-0.062) == "-0.062" and signed(0.25) == "+0.250" and signed(-0.00049, 4) == "-0.0005"


@pytest.mark.parametrize("values, tolerance, want", [
    ([0.001, -0.002], 0.0, CHANGE_FLOOR),  # a few queries' worth: the floor, not a full-scale colour
    ([0.001], 0.02, 0.06),                 # three tolerances
    ([-0.568, 0.1], 0.01, 0.6),            # the largest |value|, rounded up
    ([0.4, np.nan], 0.0, 0.4),
    ([], 0.0, CHANGE_FLOOR),
])
def test_change_limit(values, tolerance, want):
    assert change_limit(np.array(values, dtype=float), tolerance=tolerance) == pytest.approx(want)


def test_zoomed_axis_spans_at_least_ten_points():
    assert _zoom_floor(np.array([0.99, 1.0])) == pytest.approx(0.9)
    assert _zoom_floor(np.array([0.73, 0.95])) == pytest.approx(0.7)


def test_undecided_cells_are_paler_than_decided_ones_of_the_same_value():
    fig, (ax,) = _figure(1, 2)
    values = np.array([[np.nan, np.nan], [-0.05, -0.05]])
    values[0, 0] = 0.0
    muted = np.array([[False, False], [True, False]])
    _, rgba = _changes(ax, values, muted, 0.1)
    assert rgba[1, 0, :3].sum() > rgba[1, 1, :3].sum() + 0.3  # blended towards white
    assert len(ax.patches) == 1  # and hatched
    assert rgba[0, 1, 3] == 0.0  # empty cells stay empty


def test_backfill_panels_hold_one_metric_each():
    pair = {"curves": {"exact": {"top1": [0.5], "mAP": [0.4], "mAP@R": [0.3]}, "hnsw": {"top1": [0.5], "mAP@K": [0.4]}}}
    panels = dict(_panels(pair))
    assert panels["top1"] == ["exact", "hnsw"] and panels["mAP"] == ["exact"] and panels["mAP@K"] == ["hnsw"]


def test_decision_figure_draws_every_kind_of_pair(tmp_path):
    pairs = [{"gallery": "a", "query": "b", "difference": 0.0, "low": -0.004, "high": 0.003, "verdict": COMPATIBLE,
              "recommendation": "keep", "queries": 100},
             {"gallery": "a", "query": "c", "difference": -0.2, "low": -0.25, "high": -0.15, "verdict": NOT_COMPATIBLE,
              "recommendation": "backfill", "backfill_fraction": 0.4, "queries": 100},
             {"gallery": "b", "query": "c", "difference": -0.01, "low": -0.03, "high": 0.01, "verdict": UNDECIDED,
              "recommendation": "collect", "queries": 100, "queries_needed": 850},
             {"gallery": "c", "query": "d", "difference": None, "low": None, "high": None, "verdict": UNDECIDED,
              "queries": 100}]
    for name, shown in (("four.png", pairs), ("one.png", [])):
        decision_figure(tmp_path / name, shown, ["a", "b", "c", "d"] if shown else ["a"], metric="top1",
                        tolerance=0.01, confidence=0.95, caption="Query x (N = 100)", notes=["GENERATED DATA: x"])
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_production_figures_and_files_carry_the_banner(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("dpcompat.evaluate.report.production.frame",
                        lambda fig, caption, notes, title="": seen.append((caption, list(notes), title)))
    pair = {"new": "t2", "old": "t1", "curves": {"exact": {"top1": [0.5, 0.9]}}, "auc": {"exact": {"top1": 0.7}}}
    result = {"models": ["t1", "t2"], "backfill": {"fractions": [0.0, 1.0], "items": 10, "order": "random",
                                                   "pairs": [pair]}}
    write_production(result, tmp_path, notes=["GENERATED DATA: x"], caption="Query q (N = 10)")
    assert seen == [("Query q (N = 10)", ["GENERATED DATA: x"],
                     "backfill: t2 queries, t1's gallery re-embedded by t2 (f = 0: C[t2][t1], f = 1: C[t2][t2])")]
    assert "GENERATED DATA: x" in (tmp_path / "production.md").read_text()
