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


def _figure(panels: int, t: int, *, size: Optional[tuple[float, float]] = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    side = max(4.6, 0.62 * t + 2.4)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=size or ((side + 1.3) * cols, side * rows + 1.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, p + 1) for p in range(panels)]


def _frame(fig, caption: str, notes: Sequence[str]) -> None:
    """The caption under the panels and the provenance banner above them (both kept clear by the
    constrained layout), wrapped to the figure's width."""
    width = fig.get_figwidth()
    fig.supxlabel("\n".join(textwrap.wrap(caption, int(width * 14))), fontsize=8)
    if notes:
        banner = " + ".join(dict.fromkeys(n.split(":")[0] for n in notes)) + ": NOT A MEASUREMENT OF REAL MODELS"
        # A box padded by 0: constrained layout keeps the text's own extent clear, not a padded box's.
        fig.suptitle("\n".join(textwrap.wrap(banner, int(width * 8))), color="white", fontsize=11,
                     fontweight="bold", bbox=dict(facecolor="red", edgecolor="red", pad=0))


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


def _annotate(ax, texts: np.ndarray, values: np.ndarray, dark_above: float) -> None:
    t = len(texts)
    size = max(5, 10 - t // 3)
    for i in range(t):
        for j in range(t):
            if texts[i, j]:
                ax.text(j, i, texts[i, j], ha="center", va="center", fontsize=size,
                        color="black" if values[i, j] > dark_above else "white")


def _marked(matrix: np.ndarray, verdicts: dict, digits: int = 3) -> np.ndarray:
    t = len(matrix)
    texts = np.full((t, t), "", dtype=object)
    for i in range(t):
        for j in range(i + 1):
            if np.isfinite(matrix[i, j]):
                texts[i, j] = f"{matrix[i, j]:.{digits}f}" + MARKERS.get(verdicts.get((i, j)), "")
    return texts


def metric_heatmap(path: Path, matrix: np.ndarray, verdicts: dict, models: Sequence[str], *, name: str, title: str,
                   caption: str, notes: Sequence[str]) -> None:
    """C[i][j] of one metric on the fixed scale [0, 1], each cell marked with its verdict."""
    fig, (ax,) = _figure(1, len(models))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=1.0)
    _colourbar(fig, image, ax, f"{name} (0 to 1)")
    _grid(ax, models, f"{title}\n{MARKER_LEGEND}")
    _annotate(ax, _marked(matrix, verdicts), matrix, 0.5)
    _frame(fig, caption, notes)
    fig.savefig(path, format="png", dpi=110)


def margin_heatmaps(path: Path, margins: dict[str, np.ndarray], verdicts: dict[str, dict], models: Sequence[str], *,
                    caption: str, notes: Sequence[str]) -> None:
    """C[i][j] - C[j][j] of every metric: a diverging scale centred on 0 (the column's diagonal),
    symmetric, one panel and one labelled colour bar per metric."""
    fig, axes = _figure(len(margins), len(models))
    for ax, (name, m) in zip(axes, margins.items()):
        finite = np.abs(m[np.isfinite(m)])
        limit = max(float(finite.max()) if finite.size else 0.0, 1e-3)
        shown = m.copy()
        np.fill_diagonal(shown, 0.0)
        image = ax.imshow(np.ma.masked_invalid(shown), cmap="RdBu", vmin=-limit, vmax=limit)
        _colourbar(fig, image, ax, f"{name}: C[i][j] \u2212 C[j][j]", lambda v: f"{v:+.3g}")
        _grid(ax, models, f"{name}: better (blue) or worse (red) than the old model alone")
        texts = np.full(m.shape, "", dtype=object)
        for (i, j), v in verdicts[name].items():
            texts[i, j] = f"{m[i, j]:+.3f}{MARKERS.get(v, '')}"
        _annotate(ax, texts, -np.abs(shown) / limit, -0.6)
    _frame(fig, f"{MARKER_LEGEND}. {caption}", notes)
    fig.savefig(path, format="png", dpi=100)


def cmc_curves(path: Path, cmc: np.ndarray, models: Sequence[str], *, caption: str, notes: Sequence[str]) -> None:
    """CMC (top-k accuracy for k = 1..depth) of the diagonal cells and of the newest model's row."""
    from matplotlib import colormaps

    t, depth = len(models), cmc.shape[-1]
    fig, axes = _figure(2, t, size=(13, 6.5))
    colours = colormaps["viridis"](np.linspace(0, 0.9, t))
    ks = np.arange(1, depth + 1)
    for j in range(t):
        axes[0].plot(ks, cmc[j, j], marker="o", color=colours[j], label=f"{models[j]} / {models[j]}")
        axes[1].plot(ks, cmc[t - 1, j], marker="o", color=colours[j], label=f"{models[t - 1]} / {models[j]}")
    titles = ("each model against its own gallery (diagonal)", f"newest model {models[t - 1]}'s queries on every gallery")
    for ax, title in zip(axes, titles):
        ax.set_ylim(0, 1)
        ax.set_xticks(ks)
        ax.set_xlabel("k (places looked at)")
        ax.set_ylabel("top-k accuracy")
        ax.set_title(f"CMC: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(title="query / gallery model", fontsize=7, loc="lower right")
    _frame(fig, caption, notes)
    fig.savefig(path, format="png", dpi=100)


def flip_heatmaps(path: Path, flips: dict[str, np.ndarray], models: Sequence[str], *, caption: str,
                  notes: Sequence[str]) -> None:
    """Negative flip rates (fraction of queries the old model got right and the new one wrong), one
    panel per metric on a scale starting at 0."""
    fig, axes = _figure(len(flips), len(models))
    top = max([float(np.nanmax(f)) for f in flips.values() if np.isfinite(f).any()] + [0.01])
    for ax, (name, f) in zip(axes, flips.items()):
        image = ax.imshow(np.ma.masked_invalid(f), cmap="Reds", vmin=0.0, vmax=top)
        _colourbar(fig, image, ax, f"negative flip rate ({name})", lambda v: f"{v:.3g}")
        _grid(ax, models, f"{name}: right with the old model, wrong with the new query")
        texts = np.where(np.isfinite(f), np.vectorize(lambda v: f"{v:.3f}")(np.nan_to_num(f)), "")
        _annotate(ax, texts, -np.nan_to_num(f), -top / 2)
    _frame(fig, caption, notes)
    fig.savefig(path, format="png", dpi=100)


def cka_heatmap(path: Path, cka: np.ndarray, models: Sequence[str], *, caption: str, notes: Sequence[str]) -> None:
    """1 - linear CKA on a log scale (readable when every CKA is close to 1); cells print the CKA
    with enough decimals to show its distance from 1."""
    from matplotlib.colors import LogNorm

    t = len(models)
    gap = np.where(np.eye(t, dtype=bool), np.nan, 1.0 - cka)
    shown = np.where(gap > 0, gap, np.nan)
    finite = shown[np.isfinite(shown)]
    low, high = (finite.min(), finite.max()) if finite.size else (1e-4, 1.0)
    from matplotlib.ticker import LogLocator

    norm = LogNorm(vmin=low / 1.5, vmax=min(1.0, max(high * 1.5, low * 10)))
    fig, (ax,) = _figure(1, t)
    image = ax.imshow(np.ma.masked_invalid(shown), cmap="magma_r", norm=norm)
    _colourbar(fig, image, ax, "1 \u2212 linear CKA (log scale; smaller = more alike)", lambda v: f"{v:.1g}")
    image.colorbar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    _grid(ax, models, "representation drift between models' query embeddings\n(cells: linear CKA)")
    ax.set_xlabel("model")
    texts = np.full((t, t), "", dtype=object)
    for i in range(t):
        for j in range(t):
            if np.isfinite(cka[i, j]):
                digits = 3 if i == j or gap[i, j] <= 0 else max(3, 1 - math.floor(math.log10(gap[i, j])))
                texts[i, j] = f"{cka[i, j]:.{min(digits, 8)}f}"
    _annotate(ax, texts, -np.nan_to_num(np.asarray(norm(np.nan_to_num(shown, nan=low))), nan=0.0), -0.5)
    _frame(fig, caption, notes)
    fig.savefig(path, format="png", dpi=110)
