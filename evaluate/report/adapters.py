"""The adapted rows in every report (:mod:`..adapt.rows`): compatibility.json's ``adapters`` section,
compatibility.md's and the terminal summary's. report.html renders the JSON section (:mod:`.html`).

``adapters`` of compatibility.json::

    {"comparison": "<what every row compares, in words>",
     "rows": [{"label": "task7 -> task3 via orthogonal query adapter", "file": "...adapter.npz",
               "adapter": {digest, kind, direction, source_id, source_sha256, target_id, target_sha256,
                           dim_in, dim_out, fit_location, fit_fingerprint, fit_rows},
               "query": "task7", "gallery": "task3", "compares": "<this row's comparison>",
               "metric": "top1", "value": 0.91, "reference": 0.92, "difference": -0.01, "low": ..., "high": ...,
               "verdict": "compatible" | "not compatible" | "undecided", "queries": N, "queries_needed": null | N,
               "metrics": {name: {"value", "reference", "difference", "interval": [low, high],
                                  "mcnemar": {"gained", "lost", "p"} | null}},
               "unadapted": {"value", "difference", "low", "high", "verdict", "recommendation",
                             "backfill_fraction"},
               "reindex_value": C[i][i],
               "backfill_equivalent": null | {"fraction": f | null, "value": v | null},
               "learning_curve": {"metric": "top1", "points": [{"size", "ridge", "value", "difference",
                                  "low", "high", "verdict"}], "note": null | "<why there is none>"},
               "words": "<the outcome in words>"}]}

``value``..``high`` are the primary metric's (the rule's); ``backfill_equivalent`` is computed for a
pair that is not compatible unadapted: the smallest backfilled fraction whose value reaches the
adapted value (``fraction`` null: not even a full re-index does).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from html import escape
from pathlib import PurePath
from typing import Optional

from ...common.tables import markdown_table, text_columns
from ..adapt.rows import AdaptedRow, row_words
from ..metrics.decision import Rule
from ..metrics.significance import LEVEL
from ..metrics.table import METRICS
from ..pipeline import Evaluation
from .html_parts import fmt, table

COMPARISON = (
    "Each row is a pair (deployed model j, newer candidate i) searched through an adapter, outside the matrix, "
    "and judged by the decision rule against the deployed model on its own gallery, C[j][j], per query over the "
    "same queries and bootstrap resamples as the matrix. A query adapter (fitted from i's space into j's): i's "
    "queries mapped into j's space on j's gallery as it is stored. A gallery adapter (from j's space into i's): "
    "i's queries on j's gallery transformed into i's space. A model file with a query adapter inside: that file's "
    "own query embeddings on j's gallery. The adapted model keeps its source's task and is not a model of the "
    "matrix. Evidence beside the verdict: the pair unadapted, C[i][i] (a full re-index), the backfilled fraction "
    "of j's gallery that gives the same value, and the learning curve (adapters refitted on 100, 300, 1000, ... "
    "of the fit items).")


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _row_dict(row: AdaptedRow, rule: Rule) -> dict:
    t, u = row.metrics[rule.metric], row.unadapted
    return {"label": row.label, "file": row.file, "adapter": asdict(row.record), "query": row.query,
            "gallery": row.gallery, "compares": row.compares, "metric": rule.metric, "value": _num(t.value),
            "reference": _num(t.reference), "difference": _num(t.difference), "low": _num(t.low), "high": _num(t.high),
            "verdict": row.verdict, "queries": row.queries, "queries_needed": row.queries_needed,
            "metrics": {name: {"value": _num(m.value), "reference": _num(m.reference), "difference": _num(m.difference),
                               "interval": [_num(m.low), _num(m.high)],
                               "mcnemar": None if m.p_value is None else
                               {"gained": m.gained, "lost": m.lost, "p": _num(m.p_value)}}
                        for name, m in row.metrics.items()},
            "unadapted": {"value": u.value, "difference": u.difference, "low": u.low, "high": u.high,
                          "verdict": u.verdict, "recommendation": u.recommendation,
                          "backfill_fraction": u.backfill_fraction},
            "reindex_value": _num(row.reindex),
            "backfill_equivalent": None if row.equivalent is None else asdict(row.equivalent),
            "learning_curve": {"metric": rule.metric, "points": [asdict(p) for p in row.curve], "note": row.curve_note},
            "words": row_words(row, rule)}


def adapters_dict(ev: Evaluation) -> dict:
    """compatibility.json's ``adapters`` (see the module doc)."""
    return {"comparison": COMPARISON, "rows": [_row_dict(r, ev.decision.rule) for r in ev.adapters]}


def _span(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def _equivalent(row: AdaptedRow) -> str:
    e = row.equivalent
    if e is None:
        return "\u2014 (compatible unadapted)" if row.unadapted.verdict == "compatible" else "\u2014"
    return "more than a full re-index" if e.fraction is None else f"backfilling {e.fraction:.0%} ({e.value:.4f})"


def adapter_rows(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the adapters table: one row per adapted pair."""
    label = METRICS[ev.decision.rule.metric].label
    header = ["deployed (gallery)", "candidate (queries)", "adapter", "verdict", f"{label} adapted",
              f"{label} deployed's own", f"difference [{LEVEL:.0%} interval]", "unadapted", "same value as"]
    rows = []
    for r in ev.adapters:
        t, u = r.metrics[ev.decision.rule.metric], r.unadapted
        adapter = f"{r.record.kind} {r.record.direction} ({PurePath(r.file).name})"
        rows.append([r.gallery, r.query, adapter, r.verdict, f"{t.value:.4f}", f"{t.reference:.4f}", f"{t.difference:+.4f} {_span(t.low, t.high)}",
                     f"{u.verdict}, {u.difference:+.4f} {_span(u.low, u.high)}", _equivalent(r)])
    return header, rows


def curve_text(row: AdaptedRow) -> str:
    """The learning curve in one line: size: value (verdict), ..."""
    if not row.curve:
        return row.curve_note or "no learning curve"
    return ", ".join(f"{p.size}: {p.value:.4f} ({p.verdict})" for p in row.curve)


def _row_markdown(row: AdaptedRow, rule: Rule) -> list[str]:
    label = METRICS[rule.metric].label
    lines = [f"### {row.label}", "", f"`{row.file}` (adapter {row.record.digest[:12]}, fitted on {row.record.fit_rows} "
             f"items of {row.record.fit_location}). Compares {row.compares}. **{row_words(row, rule)}.**", ""]
    evidence = [[name, f"{m.value:.4f}", f"{m.reference:.4f}", f"{m.difference:+.4f} {_span(m.low, m.high)}",
                 "\u2014" if m.p_value is None else f"{m.gained}/{m.lost}, p = {m.p_value:.3g}"]
                for name, m in row.metrics.items()]
    lines += markdown_table(["metric", "adapted", "deployed's own", f"difference [{LEVEL:.0%} interval]",
                     "McNemar gained/lost"], evidence)
    if not row.curve:
        return lines + [f"Learning curve: {row.curve_note}.", ""]
    points = [[str(p.size), "\u2014" if p.ridge is None else f"{p.ridge:g}", f"{p.value:.4f}",
               f"{p.difference:+.4f} {_span(p.low, p.high)}", p.verdict] for p in row.curve]
    return lines + [f"Learning curve: {label} with adapters refitted on nested subsets of the fit items (a seeded "
                    "order), each judged by the rule:", "",
                    *markdown_table(["fit items", "ridge", label, f"difference [{LEVEL:.0%} interval]", "verdict"], points)]


def adapters_markdown(ev: Evaluation) -> list[str]:
    """compatibility.md's adapters section (nothing when the report has no adapted row)."""
    if not ev.adapters:
        return []
    header, rows = adapter_rows(ev)
    lines = ["## Adapters", "", COMPARISON, "", *markdown_table(header, rows)]
    for row in ev.adapters:
        lines += _row_markdown(row, ev.decision.rule)
    return lines


def adapters_summary(ev: Evaluation) -> list[str]:
    """The terminal summary's adapters lines (none without an adapted row)."""
    if not ev.adapters:
        return []
    header, rows = adapter_rows(ev)
    lines = ["", "adapters (the candidate's queries through the adapter vs the deployed model's own C[j][j]; "
                 "compatibility.md says what each row compares):", *text_columns([header, *rows])]
    for row in ev.adapters:
        lines += [f"  {row.label}: {row_words(row, ev.decision.rule)}",
                  f"    learning curve (fit items: {METRICS[ev.decision.rule.metric].label}): {curve_text(row)}"]
    return lines


def adapters_html(data: dict) -> str:
    """report.html's adapters section from compatibility.json's content ``data`` ("" without adapted rows)."""
    section = data.get("adapters") or {}
    rows = section.get("rows", [])
    if not rows:
        return ""
    level = data["significance"]["level"]
    head = ["deployed model (gallery)", "candidate model (queries)", "adapter", "verdict",
            f"difference [{level:.0%} interval]", "unadapted", "same value as", "in words"]
    body = []
    for r in rows:
        u, e = r["unadapted"], r["backfill_equivalent"]
        same = "\u2014" if e is None else ("more than a full re-index" if e["fraction"] is None else
                                           f"backfilling {e['fraction']:.0%} ({fmt(e['value'])})")
        body.append([escape(r["gallery"]), escape(r["query"]),
                     f"{escape(r['adapter']['kind'])} {escape(r['adapter']['direction'])}<br><code>"
                     f"{escape(r['file'])}</code>",
                     f'<span class="badge {escape(r["verdict"].replace(" ", "-"))}">{escape(r["verdict"])}</span>',
                     f'<span class="num">{fmt(r["difference"], "+.4f")} [{fmt(r["low"], "+.4f")}, '
                     f'{fmt(r["high"], "+.4f")}]</span>',
                     escape(f"{u['verdict']}, {u['difference']:+.4f}"), escape(same), escape(r["words"])])
    out = ['<section id="adapters"><h2>Adapters: the pairs searched through an adapter</h2>',
           f"<p>{escape(section['comparison'])}</p>", table(head, body, cls="decision")]
    for r in rows:
        curve = r["learning_curve"]
        out.append(f"<h3>{escape(r['label'])}: learning curve</h3>")
        if not curve["points"]:
            out.append(f"<p>{escape(curve['note'] or 'no learning curve')}.</p>")
            continue
        out.append(table(["fit items", "ridge", escape(curve["metric"]), f"difference [{level:.0%} interval]",
                          "verdict"],
                         [[str(p["size"]), "\u2014" if p["ridge"] is None else f"{p['ridge']:g}", fmt(p["value"]),
                           f"{fmt(p['difference'], '+.4f')} [{fmt(p['low'], '+.4f')}, {fmt(p['high'], '+.4f')}]",
                           escape(p["verdict"])] for p in curve["points"]]))
    return "\n".join(out + ["</section>"])
