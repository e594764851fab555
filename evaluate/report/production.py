"""``production.json``, ``production.md`` and one backfill figure per pair, from
:func:`evaluate.search.production.evaluate_production` (plus any query-precision rows)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...common.atomic import atomic_file, write_json
from ..metrics.table import index_metrics
from .figures import frame
from .html import write_html

JSON_FILE = "production.json"
MARKDOWN_FILE = "production.md"


def _fmt(v: Optional[float], spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _index_lines(section: dict, models: Sequence[str]) -> list[str]:
    depth = section["depth"]
    lines = ["## Search through indexes", "",
             f"Each gallery model's index is searched by every newer model's queries; lists of K = {depth}. "
             f"`mAP@K` is the average precision over those K (normalised by min(relevant, K)); recall@k is the "
             "share of the exact top-k the method returns. `exact` is streamed exact search.", ""]
    lines += [f"> {line}\n" for line in section.get("training", [])]
    for m in section["methods"]:
        recall = f"recall@{min(10, depth)}"
        params = ", ".join(f"{k}={v}" for k, v in (m["params"][0] if m["params"] else {}).items()) or "—"
        crit = "; ".join(f"{n} AC {_fmt(c['AC'], '.2f')} AM {_fmt(c['AM'])}" for n, c in m["criteria"].items())
        lines += [f"### {m['kind']} ({params})", "", crit + ".", "",
                  f"top1 ({recall}) — rows: query model, columns: gallery model", "",
                  "| query \\ gallery | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for i, row in enumerate(m["metrics"]["top1"]):
            cells = [f"{_fmt(v)} ({_fmt(m['recall'][recall][i][j], '.3f')})" if v is not None else ""
                     for j, v in enumerate(row)]
            lines.append(f"| {models[i]} | " + " | ".join(cells) + " |")
        if m["kind"] != "exact":
            built = sum(not c for c in m["cached"])
            lines += ["", f"{built} index(es) built, {len(m['cached']) - built} read from the cache; "
                          f"{sum(m['build_seconds']):.1f} s building or loading, {m['search_seconds']:.1f} s searching."]
        lines.append("")
    return lines


def _backfill_lines(section: dict) -> list[str]:
    lines = ["## Backfilling", "",
             f"The old model's gallery ({section['items']} items) re-embedded by the new model a fraction f at a "
             f"time (order: {section['order']}); queries from the new model. f = 0 is C[new][old], f = 1 the "
             "new model's diagonal. AUC: area under the metric over f in [0, 1] (the mean during the backfill).", ""]
    for p in section["pairs"]:
        lines += [f"### {p['new']} queries, {p['old']} gallery backfilled", "",
                  "| method | metric | " + " | ".join(f"f={f:.2g}" for f in section["fractions"]) + " | AUC |",
                  "|---" * (len(section["fractions"]) + 3) + "|"]
        for method, curves in p["curves"].items():
            for name, values in curves.items():
                lines.append(f"| {method} | {name} | " + " | ".join(f"{v:.4f}" for v in values)
                             + f" | {p['auc'][method][name]:.4f} |")
        lines.append("")
    return lines


def _precision_lines(storage: dict, rows: Sequence[dict]) -> list[str]:
    lines = []
    if storage:
        lines += ["## Gallery stored in reduced precision", "",
                  "fp32 queries against each gallery stored as fp16 or int8 scalar-quantised codes (256 levels per "
                  "dimension over its range), searched by inner product with the decoded vectors. Change from "
                  "the fp32 matrix over all cells i >= j:", "", "| storage | metric | max abs change | mean change |",
                  "|---|---|---|---|"]
        for p, s in storage.items():
            lines += [f"| {p} | {n} | {s['max_abs_delta'][n]:.5f} | {s['mean_delta'][n]:+.5f} |" for n in s["delta"]]
        lines.append("")
    if rows:
        lines += ["## Queries from reduced-precision exports", "",
                  "Each model's fp16 / int8 export embeds the queries; the gallery is the same model's fp32 set. "
                  "Δ: change from the fp32 queries; cosine: to the fp32 query embeddings; img/s: `bench embed`'s "
                  "measurement (onnxruntime, same provider and batch size).", "",
                  "| model | precision | top1 | Δtop1 | mAP@R | ΔmAP@R | mean cos | min cos | img/s | fp32 img/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['precision']} | {r['top1']:.4f} | {r['delta_top1']:+.4f} | {r['mAP@R']:.4f} | "
                  f"{r['delta_mAP@R']:+.4f} | {r['mean_cosine']:.6f} | {r['min_cosine']:.6f} | "
                  f"{_fmt(r['images_per_s'], '.1f')} | {_fmt(r['fp32_images_per_s'], '.1f')} |" for r in rows]
        lines.append("")
    return lines


def _panels(pair: dict) -> list[tuple[str, list[str]]]:
    """(metric, methods) per panel: each index metric under its own name (exact search's mAP and an
    index's mAP@K are different metrics, so they get different panels)."""
    panels = []
    for metric in index_metrics():
        for name in dict.fromkeys((metric.name, metric.index_name)):
            methods = [m for m, curves in pair["curves"].items() if name in curves]
            if methods:
                panels.append((name, methods))
    return panels


def _backfill_figure(path: Path, pair: dict, fractions: Sequence[float], *, caption: str,
                     notes: Sequence[str]) -> None:
    """One panel per metric, each on the fixed axis 0 to 1, one line per search method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(pair)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    order = list(pair["curves"])  # a method keeps its colour, dashes and marker in every panel
    for ax, (name, methods) in zip(axes, panels):
        for method in methods:
            # dashes and markers differ so that equal curves (exact and flat) stay visible on top of each other
            n = order.index(method)
            ax.plot(fractions, pair["curves"][method][name], linestyle=("-", "--", ":", "-.")[n % 4],
                    marker="osv^D"[n % 5], markersize=4, color=f"C{n}",
                    label=f"{method} (AUC {pair['auc'][method][name]:.3f})")
        ax.set_xlabel("fraction of the gallery re-embedded (f)")
        ax.set_ylabel(f"{name} (fixed axis 0 to 1)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(panels):]:
        ax.axis("off")
    frame(fig, caption, notes, title=f"backfill: {pair['new']} queries, {pair['old']}'s gallery re-embedded by "
                                     f"{pair['new']} (f = 0: C[{pair['new']}][{pair['old']}], f = 1: "
                                     f"C[{pair['new']}][{pair['new']}])")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_production(result: dict, out_dir: str | Path, *, notes: Sequence[str], caption: str,
                     precision_rows: Sequence[dict] = ()) -> list[Path]:
    """Write production.json, production.md and ``backfill_<new>_<old>.png`` per pair into the report
    folder ``out_dir``, and render its report.html again with them; returns the files written.

    ``notes``: the evaluation's provenance notes (generated data, random backbone), bannered on every
    file; ``caption``: what the figures were computed on (data, N, models)."""
    out = Path(out_dir)
    data = {"notes": list(notes), **result, "query_precision": list(precision_rows)}
    written = [write_json(out / JSON_FILE, data)]
    lines = ["# Compatibility in production settings", ""] + [f"> **{n}**\n" for n in notes]
    if "indexes" in result:
        lines += _index_lines(result["indexes"], result["models"])
    if "backfill" in result:
        lines += _backfill_lines(result["backfill"])
        for pair in result["backfill"]["pairs"]:
            path = out / f"backfill_{pair['new']}_{pair['old']}.png"
            _backfill_figure(path, pair, result["backfill"]["fractions"], caption=caption, notes=notes)
            written.append(path)
    lines += _precision_lines(result.get("gallery_precision", {}), precision_rows)
    with atomic_file(out / MARKDOWN_FILE) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    written.append(out / MARKDOWN_FILE)
    if (out / "compatibility.json").is_file():
        written.append(write_html(out))
    return written
