"""Pieces of ``report.html`` (:mod:`.html`): its stylesheet, tables, numbers, and the production
sections rendered from ``production.json``. Every string from data is HTML-escaped."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable, Optional, Sequence

# System fonts only; no @import, url() or font file: the page makes no request.
STYLE = """
:root { --ink: #1b1f24; --muted: #5b6570; --line: #d5dae0; --keep: #1a7f37; --backfill: #9a6700;
        --reindex: #b42318; --collect: #57606a; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 0 auto; padding: 1rem 1.5rem 3rem; max-width: 1200px; line-height: 1.4;
       font-size: 15px; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; }
h2 { font-size: 1.2rem; margin: 1.6rem 0 0.5rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
h3 { font-size: 1rem; margin: 1.1rem 0 0.4rem; }
.sub { color: var(--muted); margin: 0 0 0.4rem; }
.banner { background: #c40000; color: #fff; font-weight: 700; padding: 0.35rem 0.6rem; margin: 0.25rem 0;
          border-radius: 3px; font-size: 0.85rem; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.4rem 0.6rem; }
.rule { color: var(--muted); font-size: 0.85rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4rem 0 0.8rem; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #f3f5f7; }
tbody th { background: #fafbfc; font-weight: 600; }
table.decision { font-size: 0.95rem; }
.d { color: var(--muted); font-size: 0.78rem; white-space: nowrap; }
.num { white-space: nowrap; }
.tally { font-size: 1.05rem; font-weight: 600; margin: 0.3rem 0; }
.badge { display: inline-block; padding: 0.1rem 0.5rem; border-radius: 1rem; color: #fff; font-weight: 700;
         white-space: nowrap; background: var(--collect); }
.badge.keep, .badge.compatible { background: var(--keep); }
.badge.backfill { background: var(--backfill); }
.badge.re-index, .badge.not-compatible { background: var(--reindex); }
figure { margin: 0.8rem 0 1.2rem; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 0 1.2rem; }
.figs figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 0.82rem; color: var(--muted); }
code { font-size: 0.9em; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .banner, .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, h3 { break-after: avoid; page-break-after: avoid; }
  tr, figure, .banner { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; }
  .scroll { overflow: visible; }
  .figs { display: block; }
  table { font-size: 8pt; }
  figure img { max-height: 24cm; }
}
"""


def fmt(x: Optional[float], spec: str = ".4f") -> str:
    """A number as text ("n/a" for null); what rounds to zero loses its sign (no -0.0000)."""
    if x is None:
        return "n/a"
    text = format(x, spec)
    return text.replace("-", "").replace("+", "") if float(text) == 0 else text


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "", first_is_header: bool = False) -> str:
    """A table of already-escaped cells (a row's first cell may be a ready ``<th>``)."""
    def cell(i: int, c: str) -> str:
        if c.startswith("<th>"):
            return c
        return f"<th>{c}</th>" if first_is_header and i == 0 else f"<td>{c}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table></div>")


def _indexes(section: dict, models: Sequence[str]) -> list[str]:
    depth = section["depth"]
    recall = f"recall@{min(10, depth)}"
    out = [f"<h3>Search through indexes (lists of K = {depth})</h3>",
           f"<p>top1 per cell, and in brackets the share of the exact top-{min(10, depth)} the method returns "
           f"({escape(recall)}).</p>"]
    for m in section["methods"]:
        params = ", ".join(f"{k}={v}" for k, v in (m["params"][0] if m["params"] else {}).items()) or "exhaustive"
        rows = [[escape(models[i]), *("" if v is None else f"{fmt(v)} ({fmt(m['recall'][recall][i][j], '.3f')})"
                                      for j, v in enumerate(row))] for i, row in enumerate(m["metrics"]["top1"])]
        out += [f"<p><strong>{escape(m['kind'])}</strong> ({escape(params)})</p>",
                table(["query \\ gallery", *map(escape, models)], rows, first_is_header=True)]
    return out


def _backfill(section: dict, folder: Path, image: Callable[[Path, str, str], str]) -> list[str]:
    out = [f"<h3>Backfilling</h3><p>The old model's gallery ({section['items']} items) re-embedded by the new model "
           f"a fraction f at a time (order: {escape(str(section['order']))}); queries from the new model. "
           "f = 0 is C[new][old], f = 1 the new model's diagonal; through an index, the gallery at each f is "
           "indexed as the matrix's cells index a gallery. AUC: the mean over f in [0, 1].</p>"]
    head = ["method", "metric", *(f"f={f:.2g}" for f in section["fractions"]), "AUC"]
    for p in section["pairs"]:
        rows = [[escape(method), escape(name), *(fmt(v) for v in values), fmt(p["auc"][method][name])]
                for method, curves in p["curves"].items() for name, values in curves.items()]
        name = f"backfill_{p['new']}_{p['old']}.png"
        out += [f"<p><strong>{escape(p['new'])}</strong> queries, <strong>{escape(p['old'])}</strong> gallery "
                "backfilled</p>", table(head, rows)]
        if (folder / name).is_file():
            out.append(image(folder, name, f"backfilling {p['old']}'s gallery with {p['new']}: one metric per "
                                           "panel, fixed axis 0 to 1"))
    return out


def _precision(storage: dict, rows: Sequence[dict]) -> list[str]:
    out = []
    if storage:
        out += ["<h3>Gallery stored in reduced precision</h3>",
                table(["storage", "metric", "max abs change", "mean change"],
                      [[escape(p), escape(n), fmt(s["max_abs_delta"][n], ".5f"), fmt(s["mean_delta"][n], "+.5f")]
                       for p, s in storage.items() for n in s["delta"]])]
    if rows:
        out += ["<h3>Queries from reduced-precision exports</h3>",
                table(["model", "precision", "top1", "\u0394top1", "mAP@R", "\u0394mAP@R", "mean cos", "img/s"],
                      [[escape(r["model"]), escape(r["precision"]), fmt(r["top1"]), fmt(r["delta_top1"], "+.4f"),
                        fmt(r["mAP@R"]), fmt(r["delta_mAP@R"], "+.4f"), fmt(r["mean_cosine"], ".6f"),
                        fmt(r["images_per_s"], ".1f")] for r in rows])]
    return out


def production_sections(prod: dict, folder: Path, image: Callable[[Path, str, str], str]) -> str:
    """The production section of the page (indexes, backfilling, reduced precision) from
    production.json's content ``prod``; ``image`` inlines a figure of ``folder``."""
    out = ['<section id="production"><h2>Production settings</h2>']
    out += [f'<p class="banner">{escape(n)}</p>' for n in prod.get("notes", [])]
    if "indexes" in prod:
        out += _indexes(prod["indexes"], prod["models"])
    if "backfill" in prod:
        out += _backfill(prod["backfill"], folder, image)
    out += _precision(prod.get("gallery_precision", {}), prod.get("query_precision", []))
    return "\n".join(out + ["</section>"])
