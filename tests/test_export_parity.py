"""Parity judgement on plain numpy forwards: NaN and Inf never pass, and the report stays valid JSON."""
import json

import numpy as np
import pytest

from dpcompat.common.atomic import write_json
from dpcompat.export.parity import TOLERANCES, compare, format_table

IMAGES = np.random.default_rng(0).random((12, 3, 4, 4), dtype=np.float32)
WEIGHT = np.random.default_rng(1).standard_normal((48, 6)).astype(np.float32)


def forward(poison_rows=(), value=np.nan):
    def run(x):
        emb = x.reshape(len(x), -1) @ WEIGHT
        rows = [i for i in range(len(x)) if _row_id(x[i]) in poison_rows]
        emb[rows, 0] = value
        return emb, np.zeros(len(x), np.int64)
    return run


def _row_id(image):
    return int(np.flatnonzero((IMAGES == image).all(axis=(1, 2, 3)))[0])


def similarity(x):
    return np.tile(np.array([[1.0, 0.0, -1.0]]), (len(x), 1))


def test_equal_forwards_pass():
    report = compare(forward(), forward(), IMAGES, TOLERANCES["fp32"], similarity, batch_sizes=(1, 5))
    assert report.passed and report.rows[0].nonfinite_candidate == 0


@pytest.mark.parametrize("reference_bad, value", [(False, np.nan), (True, np.nan), (False, np.inf), (True, -np.inf)])
def test_nan_or_inf_on_either_side_fails_with_the_count(tmp_path, reference_bad, value):
    bad = forward(poison_rows=(2, 7, 9), value=value)
    reference, candidate = (bad, bad) if reference_bad else (forward(), bad)
    report = compare(reference, candidate, IMAGES, TOLERANCES["fp32"], similarity, batch_sizes=(1, 5))
    assert not report.passed
    for row in report.rows:
        assert row.nonfinite_candidate == 3 and row.nonfinite_reference == (3 if reference_bad else 0)
        assert "NaN or Inf in 3 candidate" in row.failures[0]
        assert row.min_cosine is not None and np.isfinite([row.max_abs, row.max_reference, row.min_cosine]).all()
    text = write_json(tmp_path / "r.json", report.to_dict()).read_text()  # refuses bare NaN
    assert json.loads(text)["passed"] is False and format_table(report).endswith("FAIL")


def test_all_rows_nan_gives_null_figures(tmp_path):
    bad = forward(poison_rows=tuple(range(12)))
    report = compare(bad, bad, IMAGES, TOLERANCES["fp32"], similarity, batch_sizes=(4,))
    row = report.rows[0]
    assert not report.passed and (row.max_abs, row.min_cosine, row.max_reference) == (None, None, None)
    assert json.loads(write_json(tmp_path / "r.json", report.to_dict()).read_text())["batches"][0]["max_abs"] is None
    assert " - " in format_table(report)
