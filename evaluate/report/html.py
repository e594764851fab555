"""``report.html``: the one file a review opens, rendered from a report folder's own files.

Self-contained: figures are inlined as base64 PNG data URIs, the stylesheet is inline, the fonts are
the system's; no script, no request of any kind. Printable (a print stylesheet; rows and figures do
not split across pages). The decision table comes first, then the evidence: metric matrices with
intervals, figures with captions, provenance, protocol, production sections when present. Every
string taken from data (model ids, file names, specs) is HTML-escaped.
"""
from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ...common.atomic import atomic_file
from .adapters import adapters_html
from .decision_view import decision_view
from .html_parts import STYLE, fmt, production_sections, table

HTML_FILE = "report.html"
WIDE = 1000  # pixels: a figure wider than this is not put beside another
WORDS = {"keep": "keep the index", "backfill": "backfill", "re-index": "re-index", "collect": "collect more queries"}


def _e(x) -> str:
    return escape(str(x), quote=True)


def image(folder: Path, name: str, text: str) -> str:
    """A figure of ``folder`` inlined as a data URI, with its file name and ``text`` as caption; one
    wider than WIDE pixels takes a whole row of the page's figure grid."""
    raw = (folder / name).read_bytes()
    wide = " wide" if int.from_bytes(raw[16:20], "big") > WIDE else ""  # the PNG header's width
    data = base64.b64encode(raw).decode("ascii")
    return (f'<figure class="fig{wide}"><img src="data:image/png;base64,{data}" alt="{_e(name)}">'
            f"<figcaption><code>{_e(name)}</code>: {_e(text)}</figcaption></figure>")


def _do(pair: dict) -> str:
    """The recommendation as a labelled badge."""
    key = pair["recommendation"]
    word = WORDS.get(key, key)
    if key == "backfill" and pair.get("backfill_fraction") is not None:
        word = f"backfill {pair['backfill_fraction']:.0%} of the gallery"
    if key == "collect" and pair.get("queries_needed") is not None:
        word = f"collect about {pair['queries_needed'] - pair['queries']:,} more queries"
    return f'<span class="badge {_e(key.replace(" ", "-"))}">{_e(word)}</span>'


def _interval(low: Optional[float], high: Optional[float], spec: str = "+.4f") -> str:
    return f"[{fmt(low, spec)}, {fmt(high, spec)}]"


def _tally(pairs: Sequence[dict]) -> str:
    """"6 pairs: 2 keep the index, 1 re-index, ..." in the order of :data:`WORDS`."""
    keys = [p["recommendation"] for p in pairs]
    counts = ", ".join(f"{keys.count(k)} {WORDS[k]}" for k in WORDS if k in keys)
    return f'<p class="tally">{len(pairs)} pair{"s" * (len(pairs) != 1)}: {_e(counts)}.</p>'


def _decision_rows(pairs: Sequence[dict]) -> list[list[str]]:
    rows = []
    for p in pairs:
        words = p.get("words") or (f"{p['query']} on {p['gallery']}'s gallery: {fmt(p['value'])} against "
                                   f"{p['gallery']}'s own {fmt(p['reference'])} ({p['verdict']})")
        rows.append([_e(p["gallery"]), _e(p["query"]), _do(p),
                     f'<span class="num">{fmt(p["difference"], "+.3f")} {_interval(p["low"], p["high"], "+.3f")}'
                     "</span>", _e(p["verdict"]),
                     _e(words)])
    return rows


def _decision(data: dict, folder: Path) -> str:
    rule, pairs = decision_view(data)
    metric = _e(rule["metric"])
    head = ["deployed model (gallery)", "candidate model (queries)", "do",
            f"{metric} C[i][j] \u2212 C[j][j] [{rule['confidence']:.0%} interval]", "verdict", "in words"]
    out = ['<section id="decision"><h2>Keep, backfill or re-index?</h2>']
    out.append(_tally(pairs) + table(head, _decision_rows(pairs), cls="decision") if pairs else
               "<p>One model: there is no pair to decide. What the report can conclude is the model's own retrieval "
               "quality, below.</p>")
    out.append(_own(data))
    out.append(f'<p class="rule"><strong>Rule.</strong> {_e(rule["text"])}</p>')
    if (folder / "decision.png").is_file():
        figures = data.get("figures", {})
        out.append(image(folder, "decision.png", figures.get("decision.png", "the decision per pair")))
    return "\n".join(out + ["</section>"])


def _own(data: dict) -> str:
    """Each model's own C[i][i] of every metric with its interval."""
    level = data["significance"]["level"]
    rows = [[_e(m), *(f"{fmt(d['value'])} {_interval(*d['interval'], '.4f')}"
                      for d in (data["criteria"][name]["diagonal"][i] for name in data["metrics"]))]
            for i, m in enumerate(data["models"])]
    return (f"<h3>Each model on its own gallery ({level:.0%} intervals)</h3>"
            + table(["model", *map(_e, data["metrics"])], rows))


def _matrix(data: dict, name: str) -> str:
    """One metric's matrix; each cell below the diagonal with its difference to the column's
    diagonal and that difference's interval."""
    models, values = data["models"], data["metrics"][name]
    cells = {(c["query"], c["gallery"]): c for c in data["criteria"].get(name, {}).get("cells", [])}
    rows = []
    for i, row in enumerate(values):
        line = [f"<th>{_e(models[i])}</th>"]
        for j, v in enumerate(row):
            c = cells.get((i, j))
            extra = "" if c is None else (f'<br><span class="d">{fmt(c["difference"], "+.4f")} '
                                          f'{_interval(*c["interval"])}</span>')
            line.append("" if v is None else fmt(v) + extra)
        rows.append(line)
    return table(["query \\ gallery", *map(_e, models)], rows, first_is_header=True)


def _evidence(data: dict) -> str:
    level = data["significance"]["level"]
    out = ['<section id="evidence"><h2>Evidence: every metric</h2>',
           f"<p>Rows: query model; columns: gallery model (oldest first). Below the diagonal, each cell's difference "
           f"C[i][j] \u2212 C[j][j] and its {level:.0%} paired bootstrap interval "
           f"({data['significance']['resamples']} resamples of {data['significance']['queries']} queries).</p>"]
    for name in data["metrics"]:
        out += [f"<h3>{_e(name)}</h3>", _matrix(data, name)]
    crit = [[_e(name), fmt(c.get("AC"), ".3f"), fmt(c.get("AM")), fmt(c.get("BC")), fmt(c.get("FC"))]
            for name, c in data["criteria"].items()]
    out += ["<h3>Multi-model criteria (papers' definitions; evidence, not a verdict)</h3>",
            "<p>AC: share of pairs i &gt; j with C[i][j] &gt; C[j][j] (Biondi et al.); AM: mean of C[i][j] over i "
            "\u2265 j; BC / FC: mean backward / forward change (see compatibility.md).</p>",
            table(["metric", "AC", "AM", "BC", "FC"], crit), "</section>"]
    return "\n".join(out)


def _figures(folder: Path, data: dict) -> str:
    listed = dict(data.get("figures", {}))
    if (folder / "projections.png").is_file():
        listed["projections.png"] = "2-D projections of the models' query embeddings"
    shown = [image(folder, name, text) for name, text in listed.items()
             if name != "decision.png" and (folder / name).is_file()]
    return '<section id="figures"><h2>Figures</h2>\n<div class="figs">' + "\n".join(shown) + "</div></section>"


def _provenance(data: dict) -> str:
    rows = [[_e(p.get("model")), _e(p.get("data", "unknown")), _e(p.get("backbone", "unknown"))]
            for p in data.get("provenance", [])]
    q, g, proto = data["query"], data["gallery"], data["protocol"]
    own = "yes" if proto.get("own_image_left_out") else "no"
    facts = [["query data", f"{_e(q.get('spec'))} (N = {_e(q.get('count'))})"],
             ["gallery data", f"{_e(g.get('spec'))} (N = {_e(g.get('count'))})"],
             ["similarity", _e(proto.get("similarity", "cosine"))], ["kNN k", _e(proto.get("k"))],
             ["each query's own image left out", own],
             ["intervals", _e(f"{data['significance']['level']:.0%} paired bootstrap, "
                              f"{data['significance']['resamples']} resamples, seed {data['significance']['seed']}; "
                              "evidence, the verdict is the decision rule's")]]
    return ('<section id="provenance"><h2>Provenance and protocol</h2>'
            + table(["model", "trained on", "backbone"], rows) + table(["", ""], facts, first_is_header=True)
            + "</section>")


def _banners(notes: Iterable[str]) -> str:
    return "".join(f'<p class="banner">{_e(n)}</p>' for n in notes)


def render(folder: str | Path) -> str:
    """The page for the report in ``folder`` (compatibility.json, its figures, production.json when
    present)."""
    folder = Path(folder)
    data = json.loads((folder / "compatibility.json").read_text())
    production = folder / "production.json"
    prod = json.loads(production.read_text()) if production.is_file() else None
    models = ", ".join(data["models"])
    q = data["query"]
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f'<meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>Backward compatibility: {_e(models)}</title><style>{STYLE}</style></head><body>",
             f"<header><h1>Backward compatibility</h1><p class=\"sub\">{len(data['models'])} models: {_e(models)}. "
             f"Queries {_e(q.get('spec'))} (N = {_e(q.get('count'))}).</p>{_banners(data.get('notes', []))}</header>",
             _decision(data, folder), adapters_html(data), _evidence(data), _figures(folder, data), _provenance(data)]
    if prod is not None:
        parts.append(production_sections(prod, folder, image))
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != HTML_FILE
                   and not p.name.startswith("."))
    parts += ['<section id="files"><h2>Files of this report</h2><p>'
              + ", ".join(f"<code>{_e(n)}</code>" for n in files) + "</p></section></body></html>"]
    return "\n".join(parts)


def write_html(folder: str | Path) -> Path:
    """Write ``report.html`` into the report ``folder`` (atomically) and return its path."""
    path = Path(folder) / HTML_FILE
    page = render(folder)  # before the temporary file exists: the page lists the folder's files
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
