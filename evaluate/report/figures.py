"""The report's figures (PNG), drawn with matplotlib's object API (the global backend is left alone).

Every figure states what it was computed on (a caption with the data, N queries / N gallery and the
models) and, when any model was trained on generated data or from a random backbone, a red banner.
Rows are query models and columns gallery models, oldest first; cells above the diagonal are empty.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..metrics.significance import COMPATIBLE, NOT_COMPATIBLE, UNDECIDED

MARKERS = {COMPATIBLE: "+", NOT_COMPATIBLE: "\u2212", UNDECIDED: "?"}
MARKER_LEGEND = "+ compatible, \u2212 not compatible, ? undecided at this N"
MUTED_LEGEND = "hatched and pale: undecided at this N"
CHANGE_FLOOR = 0.03  # the least half-range of a change scale: three points of a 0-1 metric
VERDICT_COLOURS = {COMPATIBLE: "#2166ac", NOT_COMPATIBLE: "#b2182b", UNDECIDED: "#8c8c8c"}


def _figure(panels: int, t: int, *, size: Optional[tuple[float, float]] = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    side = max(4.6, 0.62 * t + 2.4)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=size or ((side + 1.3) * cols, side * rows + 1.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, p + 1) for p in range(panels)]


def frame(fig, caption: str, notes: Sequence[str], title: str = "") -> None:
    """The caption under the panels and, above them, the ``title`` under the provenance banner (one red
    box) when ``notes`` call for one; all kept clear by the constrained layout, wrapped to the width."""
    width = fig.get_figwidth()
    fig.supxlabel("\n".join(textwrap.wrap(caption, int(width * 14))), fontsize=8)
    lines = textwrap.wrap(title, int(width * 9)) if title else []
    if notes:
        banner = " + ".join(dict.fromkeys(n.split(":")[0] for n in notes)) + ": NOT A MEASUREMENT OF REAL MODELS"
        # A box padded by 0: constrained layout keeps the text's own extent clear, not a padded box's.
        fig.suptitle("\n".join(textwrap.wrap(banner, int(width * 8)) + lines), color="white", fontsize=11,
                     fontweight="bold", bbox=dict(facecolor="red", edgecolor="red", pad=0))
    elif lines:
        fig.suptitle("\n".join(lines), fontsize=11)


def signed(value: float, digits: int = 3) -> str:
    """``value`` with its sign, except that what rounds to zero is written 0.000 (no -0.000)."""
    shown = round(float(value), digits)
    return f"{0.0:.{digits}f}" if shown == 0 else f"{shown:+.{digits}f}"


def change_limit(values: np.ndarray, *, tolerance: float = 0.0) -> float:
    """Half-range of a symmetric scale of changes: the largest finite |value|, at least CHANGE_FLOOR
    and three tolerances (so that differences of a few queries stay pale), rounded up to 1, 1.5, 2,
    2.5, 3, 4, 5, 6 or 8 times a power of ten."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    need = max(float(finite.max()) if finite.size else 0.0, CHANGE_FLOOR, 3 * tolerance)
    power = 10.0 ** math.floor(math.log10(need))
    return next(m * power for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= need * (1 - 1e-9))


def _colourbar(fig, image, ax, label: str, formatter: Optional[Callable[[float], str]] = None) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(label)
    if formatter is not None:  # explicit labels: no offset or multiplier text above the bar
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: formatter(v)))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())


def _grid(ax, models: Sequence[str], title: str) -> None:
    t = len(models)
    ax.set_xticks(range(t), labels=models, rotation=45, ha="right")
    ax.set_yticks(range(t), labels=models)
    ax.set_xlabel("gallery model (old index)")
    ax.set_ylabel("query model")
    ax.set_title(title, fontsize=10)


def _annotate(ax, texts: np.ndarray, colours: np.ndarray, size: Optional[float] = None) -> None:
    """Each non-empty ``texts[i, j]`` centred on its cell, black on light ``colours[i, j]`` (RGBA) and
    white on dark ones."""
    t = len(texts)
    for i in range(t):
        for j in range(t):
            if texts[i, j]:
                r, g, b = colours[i, j][:3]
                ax.text(j, i, texts[i, j], ha="center", va="center", fontsize=size or max(5, 10 - t // 3),
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")


def _changes(ax, values: np.ndarray, muted: np.ndarray, limit: float, grey: Optional[np.ndarray] = None):
    """``values`` [T, T] (NaN: empty) on the diverging scale [-limit, limit]; ``muted`` cells blended
    towards white and hatched, ``grey`` cells light grey. Returns (a mappable for the colour bar, the
    cells' RGBA colours)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    cmap, norm = colormaps["RdBu"], Normalize(-limit, limit)
    rgba = cmap(norm(np.nan_to_num(values)))
    rgba[muted] = 0.35 * rgba[muted] + 0.65
    rgba[~np.isfinite(values)] = (1.0, 1.0, 1.0, 0.0)
    if grey is not None:
        rgba[grey] = (0.92, 0.92, 0.92, 1.0)
    ax.imshow(rgba)
    for i, j in zip(*np.nonzero(muted & np.isfinite(values))):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
    return ScalarMappable(norm, cmap), rgba


def _marked(matrix: np.ndarray, verdicts: dict, digits: int = 3) -> np.ndarray:
    t = len(matrix)
    texts = np.full((t, t), "", dtype=object)
    for i in range(t):
        for j in range(i + 1):
            if np.isfinite(matrix[i, j]):
                texts[i, j] = f"{matrix[i, j]:.{digits}f}" + MARKERS.get(verdicts.get((i, j)), "")
    return texts


def _save(fig, path: Path, dpi: int = 100) -> None:
    fig.savefig(path, format="png", dpi=dpi)


def _measured(pair: dict) -> bool:
    return all(isinstance(pair.get(k), (int, float)) for k in ("difference", "low", "high"))


def _pair_word(pair: dict) -> str:
    """What to do with a pair, in two or three words (its verdict where no recommendation is given)."""
    rec = pair.get("recommendation")
    if rec == "backfill" and pair.get("backfill_fraction") is not None:
        return f"backfill {pair['backfill_fraction']:.0%}"
    if rec == "collect":
        needed = pair.get("queries_needed")
        return "collect more queries" if needed is None else f"collect {needed - pair['queries']:,} more"
    return rec or pair["verdict"]


def _decision_cells(ax, pairs: Sequence[dict], models: Sequence[str], limit: float):
    t = len(models)
    values = np.full((t, t), np.nan)
    muted = np.zeros((t, t), bool)
    texts = np.full((t, t), "", dtype=object)
    for p in pairs:
        i, j = models.index(p["query"]), models.index(p["gallery"])
        if _measured(p):
            values[i, j], muted[i, j] = p["difference"], p["verdict"] == UNDECIDED
            texts[i, j] = f"{signed(p['difference'])}\n[{signed(p['low'])}, {signed(p['high'])}]\n{_pair_word(p)}"
        else:
            texts[i, j] = f"no value\n{_pair_word(p)}"
    for i in range(t):
        values[i, i], texts[i, i] = 0.0, "own\ngallery"
    mappable, rgba = _changes(ax, values, muted, limit, grey=np.eye(t, dtype=bool))
    _annotate(ax, texts, rgba, size=max(5, 9 - t // 2))
    return mappable


def _forest(ax, pairs: Sequence[dict], metric: str, tolerance: float, limit: float) -> None:
    """One row per pair: the difference and its interval, coloured by verdict, against -tolerance."""
    pairs = [p for p in pairs if _measured(p)]
    ys = np.arange(len(pairs))[::-1]
    ax.axvspan(-tolerance, limit, color=VERDICT_COLOURS[COMPATIBLE], alpha=0.07, linewidth=0)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.axvline(-tolerance, color="black", linestyle="--", linewidth=1.0,
               label=f"\u2212tolerance ({signed(-tolerance, 3)}): compatible when the whole interval is right of it")
    for y, p in zip(ys, pairs):
        colour = VERDICT_COLOURS[p["verdict"]]
        ax.hlines(y, max(p["low"], -limit), min(p["high"], limit), color=colour, linewidth=3,
                  alpha=0.45 if p["verdict"] == UNDECIDED else 1.0)
        ax.plot([p["difference"]], [y], "o", color=colour, markerfacecolor="white" if p["verdict"] == UNDECIDED
                else colour, markersize=6)
    ax.set_yticks(ys, labels=[f"{p['query']} on {p['gallery']}: {_pair_word(p)}" for p in pairs], fontsize=8)
    ax.set_ylim(-0.7, len(pairs) - 0.3)
    ax.set_xlim(-limit, limit)
    ax.set_xlabel(f"{metric} C[i][j] \u2212 C[j][j] (axis \u00b1{limit:g})")
    ax.set_title("difference and its interval per pair\n(candidate on the deployed gallery vs the deployed model)",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def decision_figure(path: Path, pairs: Sequence[dict], models: Sequence[str], *, metric: str, tolerance: float,
                    confidence: float, caption: str, notes: Sequence[str]) -> None:
    """The headline: for each pair (deployed gallery model j, candidate query model i), the primary
    metric's D = C[i][j] - C[j][j] with its ``confidence`` interval and what to do.

    ``pairs``: dicts of compatibility.json's ``decision.pairs`` (``gallery``, ``query`` model ids,
    ``difference``, ``low``, ``high``, ``verdict``, optionally ``recommendation``, ``backfill_fraction``,
    ``queries``, ``queries_needed``). Left, the pairs as a matrix on a symmetric scale (undecided cells
    pale and hatched); right, each interval against -``tolerance``, on the same scale.
    """
    t = len(models)
    side = max(4.6, 0.62 * t + 2.4)
    fig, axes = _figure(2, t, size=(2 * side + 5.5, max(side, 0.32 * len(pairs) + 2.5) + 1.6))
    limit = change_limit([v for p in pairs if _measured(p) for v in (p["low"], p["high"], p["difference"])],
                         tolerance=tolerance)
    mappable = _decision_cells(axes[0], pairs, models, limit)
    _colourbar(fig, mappable, axes[0], f"{metric}: C[i][j] \u2212 C[j][j]", signed)
    _grid(axes[0], models, f"Keep, backfill or re-index? ({metric}, tolerance {tolerance:g})\ncells: C[i][j] "
                           f"\u2212 C[j][j], its {confidence:.0%} interval, what to do\n{MUTED_LEGEND}")
    axes[0].set_xlabel("deployed model (its gallery index)")
    axes[0].set_ylabel("candidate model (queries)")
    if pairs:
        _forest(axes[1], pairs, metric, tolerance, limit)
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "one model: no pair to decide", ha="center", va="center")
    frame(fig, caption, notes)
    _save(fig, path, dpi=100)


def metric_heatmap(path: Path, matrix: np.ndarray, verdicts: dict, models: Sequence[str], *, name: str, title: str,
                   caption: str, notes: Sequence[str]) -> None:
    """C[i][j] of one metric on the fixed scale [0, 1], every cell printed (three decimals) and marked
    with the verdict ``verdicts`` gives it, if any."""
    from matplotlib import colormaps

    fig, (ax,) = _figure(1, len(models))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=1.0)
    _colourbar(fig, image, ax, f"{name} (fixed scale 0 to 1)")
    _grid(ax, models, f"{title}\n{MARKER_LEGEND}" if verdicts else title)
    _annotate(ax, _marked(matrix, verdicts), colormaps["viridis"](np.nan_to_num(matrix)))
    frame(fig, caption, notes)
    _save(fig, path, dpi=110)


def margin_heatmaps(path: Path, margins: dict[str, np.ndarray], verdicts: dict[str, dict], models: Sequence[str], *,
                    caption: str, notes: Sequence[str]) -> None:
    """C[i][j] - C[j][j] of every metric, one panel each, on one symmetric scale shared by all panels
    (:func:`change_limit`); cells a verdict calls undecided are pale and hatched."""
    fig, axes = _figure(len(margins), len(models))
    limit = change_limit(np.concatenate([np.ravel(m) for m in margins.values()]) if margins else np.zeros(0))
    for ax, (name, m) in zip(axes, margins.items()):
        shown = m.copy()
        np.fill_diagonal(shown, np.nan)
        muted = np.zeros(m.shape, bool)
        texts = np.full(m.shape, "", dtype=object)
        for (i, j), v in verdicts.get(name, {}).items():
            muted[i, j] = v == UNDECIDED
        for i, j in zip(*np.nonzero(np.isfinite(shown))):
            texts[i, j] = signed(m[i, j]) + MARKERS.get(verdicts.get(name, {}).get((i, j)), "")
        mappable, rgba = _changes(ax, shown, muted, limit)
        _colourbar(fig, mappable, ax, f"{name}: C[i][j] \u2212 C[j][j] (\u00b1{limit:g}, all panels)", signed)
        _grid(ax, models, f"{name}: better (blue) or worse (red) than the old model alone")
        _annotate(ax, texts, rgba)
    legend = f"{MARKER_LEGEND}; {MUTED_LEGEND}. " if any(verdicts.values()) else ""
    frame(fig, f"{legend}{caption}", notes)
    _save(fig, path)


def _zoom_floor(values: np.ndarray) -> float:
    """The lower end of a zoomed accuracy axis: below the smallest value by a margin, in steps of 0.05,
    at most 0.9 (the axis spans at least ten points, so that a point or two stays small)."""
    low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    return min(0.9, max(0.0, math.floor((low - 0.02) * 20) / 20))


def cmc_curves(path: Path, cmc: np.ndarray, models: Sequence[str], *, caption: str, notes: Sequence[str]) -> None:
    """Left: CMC (top-k accuracy, k = 1..depth) of the diagonal cells on an axis zoomed to their range
    (stated in its label). Right: the newest model's queries on each older gallery as the change
    against that gallery model's own CMC, on a symmetric axis (:func:`change_limit`)."""
    from matplotlib import colormaps

    t, depth = len(models), cmc.shape[-1]
    fig, axes = _figure(2, t, size=(13, 6.5))
    colours = colormaps["viridis"](np.linspace(0, 0.9, t))
    ks = np.arange(1, depth + 1)
    diagonal = np.array([cmc[j, j] for j in range(t)])
    floor = _zoom_floor(diagonal)
    for j in range(t):
        axes[0].plot(ks, cmc[j, j], marker="o", color=colours[j], label=f"{models[j]} / {models[j]}")
    axes[0].set_ylim(floor, 1.0)
    axes[0].set_ylabel(f"top-k accuracy (axis zoomed: {floor:.2f} to 1)")
    axes[0].set_title("CMC: each model against its own gallery (diagonal)", fontsize=10)
    change = np.array([cmc[t - 1, j] - cmc[j, j] for j in range(t - 1)]).reshape(t - 1, depth)
    limit = change_limit(change)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    for j in range(t - 1):
        axes[1].plot(ks, change[j], marker="o", color=colours[j], label=f"{models[t - 1]} / {models[j]}")
    axes[1].set_ylim(-limit, limit)
    axes[1].set_ylabel(f"C[i][j] \u2212 C[j][j] of top-k accuracy (axis \u00b1{limit:g})")
    axes[1].set_title(f"CMC change: newest model {models[t - 1]}'s queries on each older gallery\n"
                      "against that gallery's own model", fontsize=10)
    if t == 1:
        axes[1].text(0.5, 0.5, "one model: no older gallery", ha="center", va="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.set_xticks(ks)
        ax.set_xlabel("k (places looked at)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="query / gallery model", fontsize=7, loc="lower right")
    frame(fig, caption, notes)
    _save(fig, path)


def flip_heatmaps(path: Path, flips: dict[str, np.ndarray], models: Sequence[str], *, caption: str,
                  notes: Sequence[str]) -> None:
    """Negative flip rates (fraction of queries the old model got right and the new one wrong), one
    panel per metric on one scale from 0, shared by the panels."""
    from matplotlib import colormaps

    fig, axes = _figure(len(flips), len(models))
    top = max([float(np.nanmax(f)) for f in flips.values() if np.isfinite(f).any()] + [0.01])
    for ax, (name, f) in zip(axes, flips.items()):
        image = ax.imshow(np.ma.masked_invalid(f), cmap="Reds", vmin=0.0, vmax=top)
        _colourbar(fig, image, ax, f"negative flip rate ({name}, 0 to {top:.3g})", lambda v: f"{v:.3g}")
        _grid(ax, models, f"{name}: right with the old model, wrong with the new query")
        texts = np.where(np.isfinite(f), np.vectorize(lambda v: f"{v:.3f}")(np.nan_to_num(f)), "")
        _annotate(ax, texts, colormaps["Reds"](np.nan_to_num(f) / top))
    frame(fig, caption, notes)
    _save(fig, path)


def cka_heatmap(path: Path, cka: np.ndarray, models: Sequence[str], *, caption: str, notes: Sequence[str]) -> None:
    """Linear CKA between models' query embeddings on a linear scale from 0 to 1 (stated on the
    colour bar), every cell printed with three decimals: evidence of drift, not of compatibility."""
    from matplotlib import colormaps

    t = len(models)
    fig, (ax,) = _figure(1, t)
    image = ax.imshow(np.ma.masked_invalid(cka), cmap="magma", vmin=0.0, vmax=1.0)
    _colourbar(fig, image, ax, "linear CKA (linear scale 0 to 1; 1 = alike up to rotation and scale)")
    _grid(ax, models, "representation drift between models' query embeddings (linear CKA)")
    ax.set_xlabel("model")
    ax.set_ylabel("model")
    texts = np.where(np.isfinite(cka), np.vectorize(lambda v: f"{v:.3f}")(np.nan_to_num(cka)), "")
    _annotate(ax, texts, colormaps["magma"](np.nan_to_num(cka)))
    frame(fig, caption, notes)
    _save(fig, path, dpi=110)
