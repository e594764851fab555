"""Compatibility reports: JSON, CSV, Markdown, figures (PNG) and a terminal summary.

In every table and figure, rows are query models and columns gallery models, both in update order
(oldest first); C[i][j] is defined for j <= i. Each cell i > j carries its verdict (compatible / not
compatible / undecided at this N, see :mod:`.significance`). The whole folder is written at once:
it is built beside ``out`` and swapped in, so it always holds one run's files.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from . import figures
from .decision_view import decision_view
from .html import HTML_FILE, write_html
from .labels import caption, figure_files, model_label
from .markdown import markdown
from ..metrics.compat import Criteria
from ..metrics.table import METRICS, binary_names, flip_names
from ..pipeline import Evaluation
from ..metrics.significance import AC_INTERVAL, COMPATIBLE, LEVEL, NOT_COMPATIBLE, UNDECIDED, rule
from ...common.atomic import replaced_dir, write_json
from ...common.errors import InputError

JSON_FILE = "compatibility.json"
CSV_FILE = "compatibility.csv"
MARKDOWN_FILE = "compatibility.md"
_VERDICTS = (COMPATIBLE, NOT_COMPATIBLE, UNDECIDED)


# What evaluate's options add beside the report: --index/--backfill/precision and --projections files.
_EXTRA_FILES = ("production.json", "production.md", "projections.png")


def _report_name(name: str) -> bool:
    return name in (JSON_FILE, CSV_FILE, MARKDOWN_FILE, HTML_FILE, *_EXTRA_FILES) or (
        name in figure_files(list(METRICS))) or (
        name.startswith(("heatmap_", "backfill_")) and name.endswith(".png"))


def check_out_dir(out_dir: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that cannot become a report folder: a file, a folder
    holding anything but a previous report (it is replaced as a whole), or an unwritable place."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not _report_name(p.name))
        if foreign:
            raise InputError(f"--out {out}: holds files that are not part of a report ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); the folder is replaced as a whole, "
                             "so give an empty or new folder")
    anchor = next(p for p in out.absolute().parents if p.exists())  # the temporary folder is made beside out
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot write in {anchor}")
    return out


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _matrix(m: np.ndarray, lower_only: bool) -> list[list[Optional[float]]]:
    return [[_num(m[i, j]) if (j <= i or not lower_only) else None for j in range(len(m))] for i in range(len(m))]


def _interval(c: Criteria, key: str) -> Optional[list[Optional[float]]]:
    return [_num(x) for x in c.intervals[key]] if key in c.intervals else None


def _criteria_dict(c: Criteria, name: str, matrix: np.ndarray) -> dict:
    cells = []
    for test in c.tests:
        i, j = test.query, test.gallery
        gain = c.update_gain[i, j]
        cells.append({"query": i, "gallery": j, "value": _num(matrix[i, j]), "old": _num(matrix[j, j]),
                      "difference": _num(test.difference), "interval": [_num(test.low), _num(test.high)],
                      "mcnemar": None if not METRICS[name].binary else
                      {"gained": test.gained, "lost": test.lost, "p": _num(test.p_value)},
                      "verdict": test.verdict, "update_gain": _num(gain),
                      "update_gain_undefined": None if math.isfinite(gain) else
                      "|C[i][i] - C[j][j]| is below one query's worth (1/N): no re-index improvement to share"})
    counts = {v: sum(t.verdict == v for t in c.tests) for v in _VERDICTS}
    return {"AC": _num(c.AC), "AC_interval": _interval(c, "AC"), "AM": _num(c.AM),
            "BC": _num(c.BC), "BC_interval": _interval(c, "BC"), "FC": _num(c.FC), "FC_interval": _interval(c, "FC"),
            "AC_per_model": [_num(x) for x in c.ac_per_model], "verdicts": counts,
            "compatible": [[i, j, ok] for i, j, ok in c.compatible],
            "margins": [[i, j, _num(c.margins[i, j])] for i, j, _ in c.compatible], "cells": cells}


def report_dict(ev: Evaluation) -> dict:
    """The content of ``compatibility.json``.

    ``metrics[name][i][j]`` is a float for j <= i and null above the diagonal; ``criteria[name]`` holds
    AC (point and interval), AM, BC, FC, AC per model, the point criterion ``compatible`` as
    [i, j, bool] and ``margins`` as [i, j, C[i][j] - C[j][j]] for every i > j, and ``cells``: each cell's
    difference, interval, McNemar counts and p (right/wrong metrics), verdict and update gain;
    ``cmc.curves[i][j]`` is the top-k accuracy for k = 1..depth; ``negative_flip_rate[name]`` a
    matrix; ``cka`` is full and symmetric. Indices refer to ``models``.
    """
    r = ev.result
    t = len(ev.models)
    return {
        "notes": list(ev.notes),
        "provenance": [{"model": m, **p} for m, p in zip(ev.models, ev.provenance)],
        "models": list(ev.models),
        "query": ev.query,
        "gallery": ev.gallery,
        "protocol": ev.protocol,
        "significance": {"resamples": r.resamples, "seed": r.seed, "level": LEVEL,
                         "rule": rule(binary_names()), "queries": r.queries, "ac_interval": AC_INTERVAL},
        "metrics": {name: _matrix(m, True) for name, m in r.metrics.items()},
        "criteria": {name: _criteria_dict(c, name, r.metrics[name]) for name, c in r.criteria.items()},
        "cmc": {"depth": int(r.cmc.shape[-1]),
                "curves": [[[_num(v) for v in r.cmc[i, j]] if j <= i else None for j in range(t)] for i in range(t)]},
        "negative_flip_rate": {name: _matrix(r.negative_flips[name], True) for name in flip_names()},
        "cka": _matrix(r.cka, False),
        "figures": figure_files(list(r.metrics)),
    }


def _write_csv(path: Path, ev: Evaluation) -> None:
    r, models = ev.result, ev.models
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "query_model", "gallery_model", "value", "margin", "compatible", "low", "high",
                    "mcnemar_p", "verdict", "update_gain"])
        for name in r.metrics:
            c = r.criteria[name]
            tests = {(x.query, x.gallery): x for x in c.tests}
            for i in range(len(models)):
                for j in range(i + 1):
                    value, test = r.metrics[name][i, j], tests.get((i, j))
                    extra = ["", "", "", "", "", "", ""] if test is None else [
                        f"{c.margins[i, j]:.6f}", str(c.margins[i, j] > 0).lower(), f"{test.low:.6f}",
                        f"{test.high:.6f}", "" if test.p_value is None else f"{test.p_value:.6g}", test.verdict,
                        f"{c.update_gain[i, j]:.6f}" if math.isfinite(c.update_gain[i, j]) else "undefined"]
                    w.writerow([name, models[i], models[j], "" if math.isnan(value) else f"{value:.6f}", *extra])
        for name in flip_names():
            for test in r.criteria[name].tests:
                w.writerow([f"negative_flip_rate_{name}", models[test.query], models[test.gallery],
                            f"{r.negative_flips[name][test.query, test.gallery]:.6f}", *[""] * 7])
        for i in range(len(models)):
            for j in range(len(models)):
                w.writerow(["cka", models[i], models[j], f"{r.cka[i, j]:.6f}", *[""] * 7])


def _write_figures(folder: Path, ev: Evaluation, data: dict) -> None:
    r, text = ev.result, caption(ev)
    rule, pairs = decision_view(data)
    figures.decision_figure(folder / "decision.png", pairs, ev.models, metric=rule["metric"],
                            tolerance=rule["tolerance"], confidence=rule["confidence"], caption=text, notes=ev.notes)
    for name in r.metrics:
        c = r.criteria[name]
        figures.metric_heatmap(folder / f"heatmap_{name}.png", r.metrics[name], c.verdicts(), ev.models, name=name,
                               title=f"{name} C[i][j]: the query model's queries on the gallery model's index",
                               caption=text, notes=ev.notes)
    figures.margin_heatmaps(folder / "margins.png", {n: r.criteria[n].margins for n in r.metrics},
                            {n: r.criteria[n].verdicts() for n in r.metrics}, ev.models, caption=text, notes=ev.notes)
    figures.cmc_curves(folder / "cmc.png", r.cmc, ev.models, caption=text, notes=ev.notes)
    figures.flip_heatmaps(folder / "negative_flips.png", r.negative_flips, ev.models, caption=text, notes=ev.notes)
    figures.cka_heatmap(folder / "heatmap_cka.png", r.cka, ev.models, caption=text, notes=ev.notes)


def write_reports(ev: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write compatibility.json/.csv/.md, the figures (:func:`figure_files`) and report.html as one
    folder ``out_dir``.

    The files are built in a temporary folder beside ``out_dir`` that then replaces it in one step:
    ``out_dir`` holds the previous complete report or the new one, whatever moment a run is killed.
    Returns the files written (under their final names).
    """
    out = check_out_dir(out_dir)
    with replaced_dir(out) as tmp:
        data = report_dict(ev)
        write_json(tmp / JSON_FILE, data)
        _write_csv(tmp / CSV_FILE, ev)
        (tmp / MARKDOWN_FILE).write_text(markdown(ev))
        _write_figures(tmp, ev, data)
        write_html(tmp)
        names = sorted(p.name for p in tmp.iterdir())
    return [out / name for name in names]


def summary(ev: Evaluation) -> str:
    """A few lines for the terminal."""
    r, models = ev.result, ev.models
    own = ", own image left out" if ev.protocol["own_image_left_out"] else ""
    lines = [f"{len(models)} models: {', '.join(map(model_label(ev), models))}",
             f"query {ev.query['spec']} ({ev.query['count']}), gallery {ev.gallery['spec']} ({ev.gallery['count']}{own}); "
             f"cosine, kNN k={ev.protocol['k']}",
             f"{'metric':<12}{'diagonal':>9}{'AM':>8}{'AC':>7}  {'AC ' + format(LEVEL, '.0%') + ' interval':<19}"
             "compatible / not / undecided"]
    for name in r.metrics:
        c = r.criteria[name]
        ac = "n/a" if math.isnan(c.AC) else f"{c.AC:.3f}"
        low, high = c.intervals.get("AC", (math.nan, math.nan))
        span = f"[{low:.3f}, {high:.3f}]" if math.isfinite(low) else "n/a"
        counts = " / ".join(str(sum(t.verdict == v for t in c.tests)) for v in _VERDICTS)
        diagonal = np.nanmean(np.diag(r.metrics[name])) if len(models) else float("nan")
        lines.append(f"{name:<12}{diagonal:>9.4f}{c.AM:>8.4f}{ac:>7}  {span:<19}{counts}")
    if len(models) > 1:
        off = r.cka[~np.eye(len(models), dtype=bool)]
        lines.append(f"CKA between models' query embeddings: min {np.nanmin(off):.4f}, mean {np.nanmean(off):.4f}")
    lines += [f"NOTE: {note}" for note in ev.notes]
    return "\n".join(lines)
