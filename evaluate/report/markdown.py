"""``compatibility.md``: what a person reads first. Notes, the decision rule and the decision table,
each model's own quality, then provenance, the figures with one line each and the evidence: every
matrix with its per-cell tests (no verdict of their own) and the papers' criteria."""
from __future__ import annotations

import math

import numpy as np

from ...common.tables import markdown_table
from ..metrics.compat import Criteria
from ..metrics.decision import BACKFILL, COLLECT, KEEP, REINDEX
from ..metrics.table import metric
from .adapters import adapters_markdown
from .figures import MARKER_LEGEND, MARKERS
from .labels import EVIDENCE, caption, figure_files, model_label
from ..pipeline import Evaluation
from ..metrics.significance import AC_INTERVAL, LEVEL

_ACTION = {KEEP: "keep the index", BACKFILL: "backfill", REINDEX: "re-index", COLLECT: "collect more queries"}


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _span(c: Criteria, key: str) -> str:
    low, high = c.intervals.get(key, (math.nan, math.nan))
    return f"[{_f(low, 3)}, {_f(high, 3)}]" if math.isfinite(low) else "n/a"


def _mode(modes: dict, key: str) -> str:
    """One cell of the modes table: "unknown" when the store did not record it, "—" when it does not
    apply (a frozen backbone has no prompt selection)."""
    if key not in modes:
        return "unknown"
    return "—" if modes[key] is None else str(modes[key])


def decision_rows(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the decision table: one row per pair, deployed gallery model first."""
    label = metric(ev.decision.rule.metric).label
    header = ["deployed (gallery)", "candidate (queries)", "verdict", f"{label} candidate", f"{label} deployed's own",
              f"difference [{LEVEL:.0%} interval]", "recommendation"]
    rows = []
    for p in ev.decision.pairs:
        action = _ACTION[p.recommendation]
        if p.recommendation == BACKFILL:
            action = f"backfill {p.backfill_fraction:.0%} of the gallery"
        elif p.recommendation == COLLECT:
            action = (f"collect about {p.queries_needed - p.queries} more queries" if p.queries_needed else
                      "undecidable at this tolerance")
        rows.append([p.gallery, p.query, p.verdict, _f(p.value), _f(p.reference),
                     f"{p.difference:+.4f} [{p.low:+.4f}, {p.high:+.4f}]", action])
    return header, rows


def own_rows(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows): each model's own C[i][i] of every metric with its interval."""
    r = ev.result
    rows = [[model_label(ev)(m), *(f"{_f(r.metrics[n][i, i])} [{_f(r.criteria[n].diagonal_low[i])}, "
                                   f"{_f(r.criteria[n].diagonal_high[i])}]" for n in r.metrics)]
            for i, m in enumerate(ev.models)]
    return ["model", *r.metrics], rows


def _decision(ev: Evaluation) -> list[str]:
    lines = ["## Decision", "", f"**Rule.** {ev.decision.text()}", ""]
    header, rows = decision_rows(ev)
    if rows:
        lines += markdown_table(header, rows) + [f"- {p.gallery} \u2190 {p.query}: {p.words}." for p in ev.decision.pairs]
    else:
        lines += ["No pair to decide: the report holds one model. What it can conclude is that model's own "
                  "retrieval quality, below; compatibility needs a second (newer or older) model."]
    header, rows = own_rows(ev)
    return lines + ["", f"## Each model on its own gallery ({LEVEL:.0%} intervals)", "", *markdown_table(header, rows)]


def _head(ev: Evaluation) -> list[str]:
    label = model_label(ev)
    lines = ["## Provenance", ""] + (markdown_table(["model", "data", "backbone"], [
        [m, str(p.get("data", "unknown")), str(p.get("backbone", "unknown"))] for m, p in zip(ev.models, ev.provenance)])
        if any(ev.provenance) else ["Unknown: the exports' metadata does not say what the models were trained on.", ""])
    modes = ev.query.get("modes", {})
    keys = ("output", "pool", "selection", "gather", "query")
    lines += ["## How each model embeds", ""] + markdown_table(["model", *keys], [
        [label(m), *(_mode(modes.get(m, {}), k) for k in keys)] for m in ev.models])
    if ev.protocol.get("frozen_backbone"):
        lines += [f"{', '.join(ev.protocol['frozen_backbone'])}: the bundle's `query` output, the frozen backbone's "
                  "own [CLS] without prompts, evaluated as the oldest model (first row and column; it takes part in "
                  "the decision and the evidence as the update before the first task). `evaluate --no-backbone` "
                  "leaves it out.", ""]
    files = figure_files(primary=ev.decision.rule.metric, names=list(ev.result.metrics))
    lines += [caption(ev), "", "Rows: query model; columns: gallery model (update order, oldest first).", "",
              "## Figures", ""] + [f"- `{name}`: {text}." for name, text in files.items()] + [""]
    return lines


def _evidence(ev: Evaluation) -> list[str]:
    r = ev.result
    if len(ev.models) < 2:
        return ["## Evidence", "", "AC, BC, FC, AM and update gains compare models: not defined for one model.", ""]
    rows = [[name, f"{_f(c.AC, 3)} {_span(c, 'AC')}", _f(c.AM), f"{_f(c.BC)} {_span(c, 'BC')}",
             f"{_f(c.FC)} {_span(c, 'FC')}"] for name, c in r.criteria.items()]
    return ["## Evidence: the papers' criteria (not verdicts)", "",
            f"Intervals of BC and FC: {LEVEL:.0%} percentile intervals over {r.resamples} bootstrap resamples of the "
            f"{r.queries} queries (seed {r.seed}). {AC_INTERVAL}. The verdict of a pair is the decision rule's alone.", "",
            *(f"- {text}." for text in EVIDENCE.values()), "",
            *markdown_table(["metric", f"AC [{LEVEL:.0%} count]", "AM", "BC [interval]", "FC [interval]"], rows)]


def _matrix_section(ev: Evaluation, name: str) -> list[str]:
    r, models = ev.result, ev.models
    c, m = r.criteria[name], r.metrics[name]
    marked = name == ev.decision.rule.metric
    verdicts = ev.decision.verdicts(models) if marked else {}
    grid = [[models[i], *((_f(m[i, j]) + MARKERS.get(verdicts.get((i, j)), "")) if j <= i else ""
                          for j in range(len(models)))] for i in range(len(models))]
    cells = []
    for t in c.tests:
        test = f"{t.gained}/{t.lost}, p = {t.p_value:.3g}" if metric(name).binary else "\u2014"
        gain = c.update_gain[t.query, t.gallery]
        cells.append([models[t.query], models[t.gallery], _f(m[t.query, t.gallery]), _f(m[t.gallery, t.gallery]),
                      f"{t.difference:+.4f}", f"[{t.low:+.4f}, {t.high:+.4f}]", test,
                      f"[{t.reindex_low:+.4f}, {t.reindex_high:+.4f}]",
                      _f(gain, 3) if math.isfinite(gain) else "undefined (re-index change not significant)"])
    per_model = ", ".join(f"{models[i]} {_f(c.ac_per_model[i], 2)}" for i in range(1, len(models)))
    legend = (f"{MARKER_LEGEND}: the pair's verdict under the decision rule" if marked else
              f"Evidence: no verdict (the decision rule judges {ev.decision.rule.metric})")
    return [f"## {name}", "", f"{legend}. {EVIDENCE['AC_per_model']}: {per_model or 'n/a'}.", "",
            *markdown_table(["query \\ gallery", *models], grid),
            *(markdown_table(["query", "gallery", "C[i][j]", "C[j][j]", "difference", f"{LEVEL:.0%} interval",
                      "McNemar gained/lost", "re-index change C[i][i] \u2212 C[j][j]", "update gain"], cells)
              if cells else [])]


def _other_sections(ev: Evaluation) -> list[str]:
    r, models = ev.result, ev.models
    t = len(models)
    lines = ["## Negative flip rate", "", "Fraction of queries the old model answered right on its own gallery "
             "and the new model's query gets wrong on the same gallery (Yan et al. 2021).", ""]
    for name in ev.result.negative_flips:
        f = r.negative_flips[name]
        lines += [f"### {name}", "", *markdown_table(["query \\ gallery", *models], [
            [models[i], *(_f(f[i, j]) if j < i else "" for j in range(t))] for i in range(t)])]
    depth = r.cmc.shape[-1]
    cmc_rows = [[f"{models[i]} / {models[j]}", *(_f(v, 3) for v in r.cmc[i, j])]
                for i, j in dict.fromkeys([*((i, i) for i in range(t)), *((t - 1, j) for j in range(t))])]
    what = "top-k accuracy" if ev.query.get("labelled", True) else "cross-model self-retrieval within the first k"
    lines += [f"## CMC ({what}, k = 1..{depth})", "",
              *markdown_table(["query / gallery model", *(str(k) for k in range(1, depth + 1))], cmc_rows)]
    for key, matrix in r.self_rank.items():
        lines += [f"## Self-retrieval place, {key} (1 = the item's own gallery entry comes first)", "",
                  *markdown_table(["query \\ gallery", *models], [[models[i], *(f"{matrix[i, j]:g}" if j <= i else ""
                                                                         for j in range(t))] for i in range(t)])]
    lines += ["## Linear CKA between query embeddings", "",
              *markdown_table(["", *models], [[models[i], *(_cka(r.cka, i, j) for j in range(t))] for i in range(t)])]
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
    lines = ["# Backward compatibility", ""] + [f"> **{note}**\n" for note in ev.notes]
    lines += _decision(ev) + adapters_markdown(ev) + _head(ev) + _evidence(ev)
    for name in ev.result.metrics:
        lines += _matrix_section(ev, name)
    return "\n".join(lines + _other_sections(ev))
