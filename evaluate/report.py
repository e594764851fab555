"""Compatibility reports: JSON, CSV, Markdown, heatmaps (PNG) and a terminal summary.

In every table and figure, rows are query models and columns gallery models, both in model order
(oldest first); C[i][j] is defined for j <= i. A compatible cell (C[i][j] > C[j][j], i > j) is
marked with a star.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compat import METRICS, Compatibility
from ..common.atomic import atomic_file, write_json
from ..common.heatmap import heatmap as _heatmap

JSON_FILE = "compatibility.json"
CSV_FILE = "compatibility.csv"
MARKDOWN_FILE = "compatibility.md"


def _num(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def _matrix(m: np.ndarray, lower_only: bool) -> list[list[Optional[float]]]:
    return [[_num(m[i, j]) if (j <= i or not lower_only) else None for j in range(len(m))] for i in range(len(m))]


def report_dict(result: Compatibility, models: Sequence[str], query: dict, gallery: dict, protocol: dict,
                notes: Sequence[str] = ()) -> dict:
    """The content of ``compatibility.json``.

    ``notes``: caveats every reader must see (generated data, a random backbone), also put at the top
    of the Markdown report and under every figure's title.

    ``metrics[name][i][j]`` is a float for j <= i and null above the diagonal; ``criteria[name]``
    holds AC, AM, ``compatible`` as [i, j, bool] for every i > j and ``margins`` as
    [i, j, C[i][j] - C[j][j]]; ``cka`` is full and symmetric. Indices refer to ``models``.
    """
    return {
        "notes": list(notes),
        "models": list(models),
        "query": query,
        "gallery": gallery,
        "protocol": protocol,
        "metrics": {name: _matrix(result.metrics[name], True) for name in METRICS},
        "criteria": {name: {"AC": _num(c.AC), "AM": _num(c.AM),
                            "compatible": [[i, j, ok] for i, j, ok in c.compatible],
                            "margins": [[i, j, _num(c.margins[i, j])] for i, j, _ in c.compatible]}
                     for name, c in result.criteria.items()},
        "cka": _matrix(result.cka, False),
    }


def _cell(result: Compatibility, name: str, i: int, j: int) -> str:
    if j > i:
        return ""
    value = result.metrics[name][i, j]
    star = " *" if i > j and result.criteria[name].margins[i, j] > 0 else ""
    return ("n/a" if math.isnan(value) else f"{value:.4f}") + star


def _markdown(result: Compatibility, models: Sequence[str], query: dict, gallery: dict, protocol: dict,
              notes: Sequence[str]) -> str:
    own = ", each query's own image left out" if protocol["own_image_left_out"] else ""
    lines = ["# Backward compatibility", ""] + [f"> **{note}**\n" for note in notes] + [
             f"Query: `{query['spec']}` ({query['count']} images); gallery: `{gallery['spec']}` "
             f"({gallery['count']} images{own}). Cosine similarity; kNN with k = {protocol['k']}.",
             "Rows: query model; columns: gallery model. `*` marks a compatible cell: C[i][j] > C[j][j].",
             "Models (pool, selection, gather, query): " + "; ".join(
                 f"{m} ({', '.join(str(v) for v in query.get('modes', {}).get(m, {}).values())})" for m in models), ""]
    header = "| query \\ gallery | " + " | ".join(models) + " |"
    rule = "|---" * (len(models) + 1) + "|"
    for name in METRICS:
        c = result.criteria[name]
        ac = "n/a" if math.isnan(c.AC) else f"{c.AC:.3f}"
        lines += [f"## {name}: AC {ac}, AM {c.AM:.4f}", "", header, rule]
        lines += [f"| {models[i]} | " + " | ".join(_cell(result, name, i, j) for j in range(len(models))) + " |"
                  for i in range(len(models))]
        lines.append("")
    lines += ["## Linear CKA between query embeddings", "", "| | " + " | ".join(models) + " |", rule]
    lines += [f"| {models[i]} | " + " | ".join(f"{result.cka[i, j]:.4f}" for j in range(len(models))) + " |"
              for i in range(len(models))]
    return "\n".join(lines) + "\n"


def write_reports(result: Compatibility, models: Sequence[str], query: dict, gallery: dict, protocol: dict,
                  out_dir: str | Path, notes: Sequence[str] = ()) -> list[Path]:
    """Write compatibility.json/.csv/.md and one heatmap PNG per metric and for CKA into ``out_dir``.

    ``query`` and ``gallery`` describe the data (``spec``, ``count``, ...); ``protocol`` holds ``k``
    and ``own_image_left_out``. Returns the files written.
    """
    out = Path(out_dir)
    written = []
    written.append(write_json(out / JSON_FILE, report_dict(result, models, query, gallery, protocol, notes)))
    with atomic_file(out / CSV_FILE) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["metric", "query_model", "gallery_model", "value", "margin", "compatible"])
            for name in METRICS:
                c = result.criteria[name]
                for i in range(len(models)):
                    for j in range(i + 1):
                        value = result.metrics[name][i, j]
                        w.writerow([name, models[i], models[j], "" if math.isnan(value) else f"{value:.6f}",
                                    f"{c.margins[i, j]:.6f}" if i > j else "",
                                    str(c.margins[i, j] > 0).lower() if i > j else ""])
            for i in range(len(models)):
                for j in range(len(models)):
                    w.writerow(["cka", models[i], models[j], f"{result.cka[i, j]:.6f}", "", ""])
    written.append(out / CSV_FILE)
    with atomic_file(out / MARKDOWN_FILE) as tmp:
        tmp.write_text(_markdown(result, models, query, gallery, protocol, notes))
    written.append(out / MARKDOWN_FILE)
    for name in METRICS:
        c = result.criteria[name]
        ac = "n/a" if math.isnan(c.AC) else f"{c.AC:.2f}"
        path = out / f"heatmap_{name}.png"
        _heatmap(path, result.metrics[name], models, f"{name} (AC {ac}, AM {c.AM:.3f}; * compatible)",
                 np.nan_to_num(c.margins) > 0, "gallery model", "query model", notes)
        written.append(path)
    path = out / "heatmap_cka.png"
    _heatmap(path, result.cka, models, "linear CKA of query embeddings", None, "model", "model", notes)
    written.append(path)
    return written


def summary(result: Compatibility, models: Sequence[str], query: dict, gallery: dict, protocol: dict) -> str:
    """A few lines for the terminal."""
    own = ", own image left out" if protocol["own_image_left_out"] else ""
    lines = [f"{len(models)} models: {', '.join(models)}",
             f"query {query['spec']} ({query['count']}), gallery {gallery['spec']} ({gallery['count']}{own}); "
             f"cosine, kNN k={protocol['k']}",
             f"{'metric':<7}{'diagonal':>10}{'AM':>9}{'AC':>8}  compatible pairs"]
    for name in METRICS:
        c = result.criteria[name]
        ok = sum(flag for _, _, flag in c.compatible)
        ac = "n/a" if math.isnan(c.AC) else f"{c.AC:.3f}"
        diagonal = np.nanmean(np.diag(result.metrics[name])) if len(models) else float("nan")
        lines.append(f"{name:<7}{diagonal:>10.4f}{c.AM:>9.4f}{ac:>8}  {ok}/{len(c.compatible)}")
    if len(models) > 1:
        off = result.cka[~np.eye(len(models), dtype=bool)]
        lines.append(f"CKA between models' query embeddings: min {np.nanmin(off):.4f}, mean {np.nanmean(off):.4f}")
    return "\n".join(lines)
