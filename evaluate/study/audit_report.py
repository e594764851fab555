"""Audit results as files: ``audit.json`` (summary and every pair), ``audit.csv`` (the pairs) and
``contact_sheet.png`` (the closest pairs side by side)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ...common.atomic import atomic_file, write_json
from .audit import Audit, Pair, pair_order

JSON_FILE = "audit.json"
CSV_FILE = "audit.csv"
SHEET_FILE = "contact_sheet.png"
_COLUMNS = ("left", "left_index", "left_item", "right", "right_index", "right_item", "pixels_equal",
            "bytes_equal", "cosine")
_THUMB = 96


def pair_row(audit: Audit, pair: Pair) -> dict:
    """One pair as a JSON/CSV row: both sets' specs, indices and item names, equalities, cosine."""
    a, b = audit.datasets[pair.left], audit.datasets[pair.right]
    return {"left": a.spec, "left_index": pair.left_index, "left_item": a.item_name(pair.left_index),
            "right": b.spec, "right_index": pair.right_index, "right_item": b.item_name(pair.right_index),
            "pixels_equal": pair.pixels_equal, "bytes_equal": pair.bytes_equal, "cosine": pair.cosine}


def audit_dict(audit: Audit) -> dict:
    """The content of ``audit.json``."""
    summary = []
    for c in audit.comparisons:
        near = [p for p in c.pairs if p.cosine is not None and p.cosine >= audit.threshold]
        summary.append({"left": audit.datasets[c.left].spec, "right": audit.datasets[c.right].spec,
                        "within_one_set": c.left == c.right, "pairs": len(c.pairs),
                        "pixel_duplicates": sum(p.pixels_equal for p in c.pairs),
                        "byte_duplicates": sum(p.bytes_equal for p in c.pairs), "near_duplicates": len(near),
                        "max_cosine": max((p.cosine for p in c.closest), default=None)})
    return {"found": audit.found, "threshold": audit.threshold, "k": audit.k, "model": audit.model,
            "feature": audit.feature,
            "datasets": [{"spec": d.spec, "count": len(d), "fingerprint": d.fingerprint} for d in audit.datasets],
            "comparisons": summary,
            "pairs": [pair_row(audit, p) for c in audit.comparisons for p in c.pairs]}


def _thumbnail(image: Image.Image) -> Image.Image:
    small = max(image.size) <= _THUMB
    image = image.copy()
    image.thumbnail((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    if small:  # enlarge tiny images (CIFAR) without blurring them
        scale = _THUMB // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def _side_by_side(audit: Audit, pair: Pair) -> np.ndarray:
    left = _thumbnail(audit.datasets[pair.left].image(pair.left_index))
    right = _thumbnail(audit.datasets[pair.right].image(pair.right_index))
    canvas = Image.new("RGB", (2 * _THUMB + 6, _THUMB), "white")
    canvas.paste(left, ((_THUMB - left.width) // 2, (_THUMB - left.height) // 2))
    canvas.paste(right, (_THUMB + 6 + (_THUMB - right.width) // 2, (_THUMB - right.height) // 2))
    return np.asarray(canvas)


def _caption(audit: Audit, pair: Pair) -> str:
    what = [w for w, ok in (("same pixels", pair.pixels_equal), ("same bytes", pair.bytes_equal)) if ok]
    if pair.cosine is not None:
        what.append(f"cos {pair.cosine:.4f}")
    row = pair_row(audit, pair)
    return ", ".join(what) + f"\n{row['left_item'][-26:]}\n{row['right_item'][-26:]}"


def sheet_pairs(audit: Audit, count: int) -> list[Pair]:
    """The pairs a contact sheet shows: every found pair in order (exact first, then by cosine), then
    the closest of the other neighbour pairs, ``count`` at most."""
    found = [p for c in audit.comparisons for p in c.pairs]
    keys = {p.key for p in found}
    rest = sorted((p for c in audit.comparisons for p in c.closest if p.key not in keys), key=lambda p: -p.cosine)
    return (sorted(found, key=pair_order) + rest)[:count]


def write_contact_sheet(audit: Audit, path: str | Path, *, count: int = 24) -> Path:
    """A PNG of up to ``count`` pairs, left item beside right item, captioned; found pairs in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = sheet_pairs(audit, count)
    columns = min(4, max(1, len(pairs)))
    rows = max(1, math.ceil(len(pairs) / columns))
    fig = Figure(figsize=(3.2 * columns, 2.3 * rows + 0.8))
    FigureCanvasAgg(fig)
    found = {p.key for c in audit.comparisons for p in c.pairs}
    for n, pair in enumerate(pairs):
        ax = fig.add_subplot(rows, columns, n + 1)
        ax.imshow(_side_by_side(audit, pair))
        ax.set_title(_caption(audit, pair), fontsize=7, color="red" if pair.key in found else "black")
        ax.set_axis_off()
    by = f"cosine of '{audit.feature}' from {Path(audit.model).name}" if audit.model else "content hashes only"
    head = (f"{len(found)} pair(s) found ({by}; threshold {audit.threshold})" if audit.model
            else f"{len(found)} exact duplicate pair(s) ({by}; give --model for near-duplicates)")
    fig.suptitle(head + ("" if pairs else ": nothing to show"), fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def write_audit(audit: Audit, out_dir: str | Path, *, sheet_count: int = 24) -> list[Path]:
    """Write ``audit.json``, ``audit.csv`` and ``contact_sheet.png`` into ``out_dir``; returns them."""
    out = Path(out_dir)
    written = [write_json(out / JSON_FILE, audit_dict(audit))]
    with atomic_file(out / CSV_FILE) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_COLUMNS)
            w.writeheader()
            w.writerows(pair_row(audit, p) for c in audit.comparisons for p in c.pairs)
    written.append(out / CSV_FILE)
    written.append(write_contact_sheet(audit, out / SHEET_FILE, count=sheet_count))
    return written


def format_audit(audit: Audit) -> str:
    """One line per compared pair of sets (what ``audit`` prints)."""
    lines = []
    for c in audit_dict(audit)["comparisons"]:
        near = f", {c['near_duplicates']} near (cosine >= {audit.threshold})" if audit.model else ""
        top = f", closest cosine {c['max_cosine']:.4f}" if c["max_cosine"] is not None else ""
        lines.append(f"{c['left']} vs {c['right']}: {c['pixel_duplicates']} same pixels, "
                     f"{c['byte_duplicates']} same bytes{near}{top}")
    return "\n".join(lines)
