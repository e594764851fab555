"""``compatibility.md``: what a person reads first. Notes and provenance, the figures with one line
each, the decision table, then every matrix with its per-cell tests."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..metrics.compat import Criteria
from ..metrics.table import METRICS, binary_names, flip_names
from .figures import MARKER_LEGEND, MARKERS
from .labels import caption, figure_files, model_label
from ..pipeline import Evaluation
from ..metrics.significance import AC_INTERVAL, COMPATIBLE, LEVEL, NOT_COMPATIBLE, UNDECIDED, rule


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _span(c: Criteria, key: str) -> str:
    low, high = c.intervals.get(key, (math.nan, math.nan))
    return f"[{_f(low, 3)}, {_f(high, 3)}]" if math.isfinite(low) else "n/a"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows), ""]


def _mode(modes: dict, key: str) -> str:
    """One cell of the modes table: "unknown" when the store did not record it, "—" when it does not
    apply (a frozen backbone has no prompt selection)."""
    if key not in modes:
        return "unknown"
    return "—" if modes[key] is None else str(modes[key])


def _head(ev: Evaluation) -> list[str]:
    label = model_label(ev)

    lines = ["# Backward compatibility", ""] + [f"> **{note}**\n" for note in ev.notes]
    known = [p for p in ev.provenance if p]
    lines += ["## Provenance", ""] + (_table(["model", "data", "backbone"], [
        [m, str(p.get("data", "unknown")), str(p.get("backbone", "unknown"))] for m, p in zip(ev.models, ev.provenance)])
        if known else ["Unknown: the exports' metadata does not say what the models were trained on.", ""])
    modes = ev.query.get("modes", {})
    keys = ("output", "pool", "selection", "gather", "query")
    lines += ["## How each model embeds", ""] + _table(["model", *keys], [
        [label(m), *(_mode(modes.get(m, {}), k) for k in keys)] for m in ev.models])
    if ev.protocol.get("frozen_backbone"):
        lines += [f"{', '.join(ev.protocol['frozen_backbone'])}: the bundle's `query` output, the frozen backbone's "
                  "own [CLS] without prompts, evaluated as the oldest model (first row and column; it takes part in "
                  "AC, AM and the other summaries as the update before the first task). `evaluate --no-backbone` "
                  "leaves it out.", ""]
    lines += [caption(ev), "", "Rows: query model; columns: gallery model (update order, oldest first).", "",
              "## Figures", ""]
    lines += [f"- `{name}`: {text}." for name, text in figure_files(list(ev.result.metrics)).items()] + [""]
    return lines


def _decisions(ev: Evaluation) -> list[str]:
    r = ev.result
    rows = []
    for name in r.metrics:
        c = r.criteria[name]
        counts = [str(sum(t.verdict == v for t in c.tests)) for v in (COMPATIBLE, NOT_COMPATIBLE, UNDECIDED)]
        rows.append([name, f"{_f(c.AC, 3)} {_span(c, 'AC')}", _f(c.AM), f"{_f(c.BC)} {_span(c, 'BC')}",
                     f"{_f(c.FC)} {_span(c, 'FC')}", *counts])
    return ["## Decision summary", "",
            f"Verdict rule: {rule(binary_names())}. Bootstrap: {r.resamples} resamples of the {r.queries} queries, "
            f"seed {r.seed}; cell, BC and FC intervals are {LEVEL:.0%} percentile intervals. {AC_INTERVAL}.", "",
            *_table(["metric", f"AC [{LEVEL:.0%} count]", "AM", "BC [interval]", "FC [interval]", "compatible",
                     "not compatible", "undecided"], rows)]


def _matrix_section(ev: Evaluation, name: str) -> list[str]:
    r, models = ev.result, ev.models
    c, m = r.criteria[name], r.metrics[name]
    verdicts = c.verdicts()
    grid = [[models[i], *((_f(m[i, j]) + MARKERS.get(verdicts.get((i, j)), "")) if j <= i else ""
                          for j in range(len(models)))] for i in range(len(models))]
    cells = []
    for t in c.tests:
        test = f"{t.gained}/{t.lost}, p = {t.p_value:.3g}" if METRICS[name].binary else "\u2014"
        gain = c.update_gain[t.query, t.gallery]
        cells.append([models[t.query], models[t.gallery], _f(m[t.query, t.gallery]), _f(m[t.gallery, t.gallery]),
                      f"{t.difference:+.4f}", f"[{t.low:+.4f}, {t.high:+.4f}]", test, t.verdict,
                      _f(gain, 3) if math.isfinite(gain) else "undefined (no re-index gain)"])
    per_model = ", ".join(f"{models[i]} {_f(c.ac_per_model[i], 2)}" for i in range(1, len(models)))
    return [f"## {name}", "", f"{MARKER_LEGEND}. AC per model (fraction of older models it is compatible with): "
            f"{per_model or 'n/a'}.", "", *_table(["query \\ gallery", *models], grid),
            *(_table(["query", "gallery", "C[i][j]", "C[j][j]", "difference", f"{LEVEL:.0%} interval",
                      "McNemar gained/lost", "verdict", "update gain"], cells) if cells else [])]


def _other_sections(ev: Evaluation) -> list[str]:
    r, models = ev.result, ev.models
    t = len(models)
    lines = ["## Negative flip rate", "", "Fraction of queries the old model answered right on its own gallery "
             "and the new model's query gets wrong on the same gallery (Yan et al. 2021).", ""]
    for name in flip_names():
        f = r.negative_flips[name]
        lines += [f"### {name}", "", *_table(["query \\ gallery", *models], [
            [models[i], *(_f(f[i, j]) if j < i else "" for j in range(t))] for i in range(t)])]
    depth = r.cmc.shape[-1]
    cmc_rows = [[f"{models[i]} / {models[j]}", *(_f(v, 3) for v in r.cmc[i, j])]
                for i, j in dict.fromkeys([*((i, i) for i in range(t)), *((t - 1, j) for j in range(t))])]
    lines += [f"## CMC (top-k accuracy, k = 1..{depth})", "",
              *_table(["query / gallery model", *(str(k) for k in range(1, depth + 1))], cmc_rows)]
    lines += ["## Linear CKA between query embeddings", "",
              *_table(["", *models], [[models[i], *(_cka(r.cka, i, j) for j in range(t))] for i in range(t)])]
    return lines


def _cka(cka: np.ndarray, i: int, j: int) -> str:
    value = cka[i, j]
    if not math.isfinite(value):
        return "n/a"
    gap = 1 - value
    digits = 4 if i == j or gap <= 0 else min(8, max(4, 1 - math.floor(math.log10(gap))))
    return f"{value:.{digits}f}"


def markdown(ev: Evaluation) -> str:
    """The whole ``compatibility.md``."""
    lines = _head(ev) + _decisions(ev)
    for name in ev.result.metrics:
        lines += _matrix_section(ev, name)
    return "\n".join(lines + _other_sections(ev))
