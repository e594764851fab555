"""Compatibility reports: JSON, CSV, Markdown, figures (PNG) and a terminal summary.

In every table and figure, rows are query models and columns gallery models, both in update order
(oldest first); C[i][j] is defined for j <= i. Every report starts with the decision rule in words
and the decision table (one verdict and one recommendation per pair, :mod:`..metrics.decision`);
everything else (other metrics' intervals, McNemar, AC/BC/FC/AM, update gains, CMC, flips, CKA) is
evidence and carries no verdict of its own. The whole folder is written at once: it is built beside
``out`` and swapped in, so it always holds one run's files.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from . import figures
from .adapters import adapters_dict, adapters_summary
from .decision_view import decision_view
from .html import HTML_FILE, write_html
from .labels import EVIDENCE, caption, figure_files, model_label
from .markdown import decision_rows, markdown, own_rows
from ..metrics.compat import Criteria
from ..metrics.table import metric
from ..pipeline import Evaluation
from ..metrics.significance import AC_INTERVAL, LEVEL
from ...common.atomic import atomic_file, replaced_dir, write_json
from ...common.errors import InputError, shown
from ...common.tables import text_columns

JSON_FILE = "compatibility.json"
CSV_FILE = "compatibility.csv"
MARKDOWN_FILE = "compatibility.md"


# What evaluate's options add beside the report: --index/--backfill/precision and --projections files.
_EXTRA_FILES = ("production.json", "production.md", "projections.png")


def _report_name(name: str) -> bool:
    return name in (JSON_FILE, CSV_FILE, MARKDOWN_FILE, HTML_FILE, *_EXTRA_FILES) or name in figure_files() or (
        name.startswith(("heatmap_", "backfill_")) and name.endswith(".png"))


# How a file the report writes begins, by suffix: a previous report's entry must be a plain file that
# begins so, else it is not ours (a folder, a link, someone's notes under a report's name) and --out refuses.
_BEGINNINGS = {".png": (b"\x89PNG\r\n\x1a\n",), ".json": (b"{",), ".md": (b"# ",), ".csv": (b"metric,",),
               ".html": (b"<!DOCTYPE html", b"<!doctype html", b"<html")}


def _foreign_entry(entry: Path) -> Optional[str]:
    """Why ``entry`` (named like a report file) is not one a report wrote, or None when it is."""
    if entry.is_symlink() or not entry.is_file():
        kind = "a link" if entry.is_symlink() else "a folder" if entry.is_dir() else "not a file"
        return f"{shown(entry.name)} is {kind}"
    starts = _BEGINNINGS.get(entry.suffix)
    if starts is None:
        return None
    try:
        with open(entry, "rb") as f:
            head = f.read(max(map(len, starts)))
    except OSError as e:
        return f"{shown(entry.name)} cannot be read ({e.strerror})"
    return None if head.startswith(starts) else f"{shown(entry.name)} is not a report's {entry.suffix[1:]} file"


def check_out_dir(out_dir: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that cannot become a report folder: a file, a folder
    holding anything but a previous report (it is replaced as a whole: every entry must be named like
    a report's file, be a plain file, and begin as that kind of file does), or an unwritable place."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        entries = sorted(out.iterdir())
        foreign = [shown(p.name) for p in entries if not _report_name(p.name)]
        if foreign:
            raise InputError(f"--out {out}: holds files that are not part of a report ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); the folder is replaced as a whole, "
                             "so give an empty or new folder")
        wrong = [why for why in map(_foreign_entry, entries) if why]
        if wrong:
            raise InputError(f"--out {out}: {'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}: not what a "
                             "report writes there, and the folder is replaced as a whole; move it, or give an empty "
                             "or new folder")
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
                      "mcnemar": None if not metric(name).binary else
                      {"gained": test.gained, "lost": test.lost, "p": _num(test.p_value)},
                      "reindex_interval": [_num(test.reindex_low), _num(test.reindex_high)],
                      "update_gain": _num(gain),
                      "update_gain_undefined": None if math.isfinite(gain) else
                      "the re-index's change C[i][i] - C[j][j] is not significant (its interval contains 0)"})
    return {"AC": _num(c.AC), "AC_interval": _interval(c, "AC"), "AM": _num(c.AM),
            "BC": _num(c.BC), "BC_interval": _interval(c, "BC"), "FC": _num(c.FC), "FC_interval": _interval(c, "FC"),
            "AC_per_model": [_num(x) for x in c.ac_per_model],
            "empirical_criterion": [[i, j, ok] for i, j, ok in c.criterion],
            "margins": [[i, j, _num(c.margins[i, j])] for i, j, _ in c.criterion],
            "diagonal": [{"value": _num(matrix[i, i]), "interval": [_num(c.diagonal_low[i]), _num(c.diagonal_high[i])]}
                         for i in range(len(matrix))], "cells": cells}


def report_dict(ev: Evaluation) -> dict:
    """The content of ``compatibility.json``.

    ``decision`` holds the rule (``decision.rule``, with its words in ``text``) and every pair's
    verdict and recommendation (``decision.pairs``; :meth:`..metrics.decision.Decision.to_dict`);
    ``model_records`` each model's id, file sha256 (as the store recorded it), file and task.
    ``metrics[name][i][j]`` is a float for j <= i and null above the diagonal; ``criteria[name]`` holds
    the evidence: AC (point and interval), AM, BC, FC, AC per model, the papers' point criterion
    ``empirical_criterion`` as [i, j, C[i][j] > C[j][j]] and ``margins`` as [i, j, C[i][j] - C[j][j]]
    for every i > j, ``diagonal`` (each model's own value and interval) and ``cells``: each cell's
    difference, interval, McNemar counts and p (right/wrong metrics), the re-index's change interval and
    update gain; ``evidence_definitions`` says what AC, BC, FC, AM and the update gain are.
    ``cmc.curves[i][j]`` is the top-k accuracy for k = 1..depth; ``negative_flip_rate[name]`` a
    matrix; ``cka`` is full and symmetric. Indices refer to ``models``. ``adapters``: the adapted rows
    (:mod:`.adapters` gives the schema; ``rows`` is empty without any).
    """
    r = ev.result
    t = len(ev.models)
    return {
        "notes": list(ev.notes),
        "decision": ev.decision.to_dict(),
        "provenance": [{"model": m, **p} for m, p in zip(ev.models, ev.provenance)],
        "models": list(ev.models),
        "model_records": list(ev.records),
        "query": ev.query,
        "gallery": ev.gallery,
        "protocol": ev.protocol,
        "significance": {"resamples": r.resamples, "seed": r.seed, "level": LEVEL, "queries": r.queries,
                         "ac_interval": AC_INTERVAL,
                         "use": "intervals and McNemar's test of every metric are evidence; the verdict is decision's"},
        "evidence_definitions": dict(EVIDENCE),
        "metrics": {name: _matrix(matrix, True) for name, matrix in r.metrics.items()},
        "criteria": {name: _criteria_dict(c, name, r.metrics[name]) for name, c in r.criteria.items()},
        "cmc": {"depth": int(r.cmc.shape[-1]),
                "curves": [[[_num(v) for v in r.cmc[i, j]] if j <= i else None for j in range(t)] for i in range(t)]},
        "negative_flip_rate": {name: _matrix(flips, True) for name, flips in r.negative_flips.items()},
        "self_rank": {key: _matrix(matrix, True) for key, matrix in r.self_rank.items()},
        "cka": _matrix(r.cka, False),
        "figures": figure_files(primary=ev.decision.rule.metric, names=list(r.metrics)),
        "adapters": adapters_dict(ev),
    }


def _write_csv(path: Path, ev: Evaluation) -> None:
    """One row per metric and cell; ``verdict`` and ``recommendation`` (the decision rule's) only on
    the primary metric's rows of pairs; the other columns are evidence."""
    r, models = ev.result, ev.models
    decided = {(p.query, p.gallery): p for p in ev.decision.pairs}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "query_model", "gallery_model", "value", "margin", "low", "high", "mcnemar_p",
                    "update_gain", "verdict", "recommendation"])
        for name in r.metrics:
            c = r.criteria[name]
            tests = {(x.query, x.gallery): x for x in c.tests}
            for i in range(len(models)):
                for j in range(i + 1):
                    value, test = r.metrics[name][i, j], tests.get((i, j))
                    pair = decided.get((models[i], models[j])) if name == ev.decision.rule.metric else None
                    extra = [""] * 5 if test is None else [
                        f"{c.margins[i, j]:.6f}", f"{test.low:.6f}", f"{test.high:.6f}",
                        "" if test.p_value is None else f"{test.p_value:.6g}",
                        f"{c.update_gain[i, j]:.6f}" if math.isfinite(c.update_gain[i, j]) else "undefined"]
                    w.writerow([name, models[i], models[j], "" if math.isnan(value) else f"{value:.6f}", *extra,
                                pair.verdict if pair else "", pair.recommendation if pair else ""])
        for name in r.negative_flips:
            for test in r.criteria[name].tests:
                w.writerow([f"negative_flip_rate_{name}", models[test.query], models[test.gallery],
                            f"{r.negative_flips[name][test.query, test.gallery]:.6f}", *[""] * 7])
        for i in range(len(models)):
            for j in range(len(models)):
                w.writerow(["cka", models[i], models[j], f"{r.cka[i, j]:.6f}", *[""] * 7])


def _write_figures(folder: Path, ev: Evaluation, data: dict) -> None:
    """The figures, decision.png first; cells carry the pairs' verdicts under the rule on the primary
    metric's heatmap and margin panel only (the other metrics are evidence)."""
    r, text = ev.result, caption(ev)
    rule, pairs = decision_view(data)
    figures.decision_figure(folder / "decision.png", pairs, ev.models, metric=rule["metric"],
                            tolerance=rule["tolerance"], confidence=rule["confidence"], caption=text, notes=ev.notes)
    verdicts = ev.decision.verdicts(ev.models)
    for name in r.metrics:
        marked = name == rule["metric"]
        figures.metric_heatmap(folder / f"heatmap_{name}.png", r.metrics[name], verdicts if marked else {}, ev.models,
                               name=name, title=f"{name} C[i][j]: the query model's queries on the gallery model's "
                                               f"index{'' if marked else ' (evidence)'}", caption=text, notes=ev.notes)
    figures.margin_heatmaps(folder / "margins.png", {n: r.criteria[n].margins for n in r.metrics},
                            {rule["metric"]: verdicts}, ev.models, caption=text, notes=ev.notes)
    figures.cmc_curves(folder / "cmc.png", r.cmc, ev.models, caption=text, notes=ev.notes)
    if r.negative_flips:
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


def rewrite_adapters(ev: Evaluation, out_dir: str | Path) -> list[Path]:
    """Rewrite the files of the report folder ``out_dir`` (written by :func:`write_reports` from the
    same evaluation) that show the adapted rows: compatibility.json, compatibility.md and report.html,
    each atomically; the CSV and the figures hold none and are kept. Returns the files rewritten."""
    out = Path(out_dir)
    write_json(out / JSON_FILE, report_dict(ev))
    with atomic_file(out / MARKDOWN_FILE) as tmp:
        tmp.write_text(markdown(ev))
    return [out / JSON_FILE, out / MARKDOWN_FILE, write_html(out)]


def summary(ev: Evaluation) -> str:
    """The terminal summary: the rule, the decision table, each model's own quality, then the evidence."""
    r, models = ev.result, ev.models
    own = ", own image left out" if ev.protocol["own_image_left_out"] else ""
    lines = [f"DECISION RULE: {ev.decision.text()}", *(f"NOTE: {note}" for note in ev.notes),
             f"{len(models)} model{'s' if len(models) > 1 else ''}: {', '.join(map(model_label(ev), models))}",
             f"query {ev.query['spec']} ({ev.query['count']}), gallery {ev.gallery['spec']} ({ev.gallery['count']}{own}); "
             f"cosine, kNN k={ev.protocol['k']}", ""]
    header, rows = decision_rows(ev)
    lines += ["decision:", *text_columns([header, *rows])] if rows else [
        "decision: no pair to decide (one model); its own retrieval quality is below"]
    lines += adapters_summary(ev)
    header, rows = own_rows(ev)
    lines += ["", f"each model on its own gallery ({LEVEL:.0%} intervals):", *text_columns([header, *rows]), ""]
    if len(models) > 1:
        lines.append("evidence, not verdicts (AC: share of pairs with C[i][j] > C[j][j], Biondi et al.; AM: mean "
                     "of C[i][j] over i >= j; definitions in compatibility.md):")
        evidence = [["metric", "AM", "AC", f"AC {LEVEL:.0%} interval"]]
        for name in r.metrics:
            c = r.criteria[name]
            low, high = c.intervals.get("AC", (math.nan, math.nan))
            evidence.append([name, f"{c.AM:.4f}", f"{c.AC:.3f}", f"[{low:.3f}, {high:.3f}]"])
        lines += text_columns(evidence)
        off = r.cka[~np.eye(len(models), dtype=bool)]
        lines.append(f"CKA between models' query embeddings: min {np.nanmin(off):.4f}, mean {np.nanmean(off):.4f}")
    return "\n".join(lines)
