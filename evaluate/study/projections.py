"""2-D projections of the same items embedded by every model: PCA and t-SNE per model, and one PCA
fitted on all models' embeddings together, so drift between tasks shows as movement on shared axes.
Needs scikit-learn (the ``analysis`` extra)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ...common.atomic import atomic_file
from ...common.errors import InputError

METHODS = ("pca", "tsne")
JOINT = "joint pca"
DEFAULT_SAMPLE = 2000
FIGURE_FILE = "projections.png"


def parse_methods(text: str) -> tuple[str, ...]:
    """``pca,tsne`` -> ('pca', 'tsne'); InputError for an unknown method or without scikit-learn."""
    methods = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise InputError(f"--projections {text!r}: expected a comma-separated subset of {', '.join(METHODS)}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError("--projections needs scikit-learn: pip install 'dpcompat[analysis]'") from None
    return methods


def sample_indices(count: int, *, size: int = DEFAULT_SAMPLE, seed: int = 0) -> np.ndarray:
    """``min(size, count)`` distinct item indices in increasing order, drawn with ``seed``."""
    if size < 3:
        raise InputError(f"--projection-sample {size}: at least 3 items are needed")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(size, count), replace=False))


def project(embeddings: Sequence[np.ndarray], *, methods: Sequence[str] = METHODS, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """2-D coordinates of every model's embeddings of the same items.

    Parameters
    ----------
    embeddings : one float array [n, D] per model, rows the same items in the same order.
    methods : 'pca' (fitted per model) and/or 'tsne' (per model, PCA-initialised, seed ``seed``).

    Returns
    -------
    ``{method: [float64 [n, 2] per model]}`` plus ``'joint pca'``: one PCA fitted on all models' rows
    stacked, applied to each model. Deterministic for equal inputs (PCA signs fixed by scikit-learn).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    xs = [np.asarray(x, np.float64) for x in embeddings]
    n = len(xs[0])
    out: dict[str, list[np.ndarray]] = {}
    if "pca" in methods:
        out["pca"] = [PCA(2, svd_solver="full").fit_transform(x) for x in xs]
    if "tsne" in methods:
        perplexity = min(30.0, (n - 1) / 3)  # t-SNE needs perplexity < n
        out["tsne"] = [TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x) for x in xs]
    joint = PCA(2, svd_solver="full").fit(np.concatenate(xs))
    out[JOINT] = [joint.transform(x) for x in xs]
    return out


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, cmap, vmax: int) -> None:
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, vmin=0, vmax=vmax, s=4, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_projections(coords: dict[str, list[np.ndarray]], labels: np.ndarray, models: Sequence[str],
                     path: str | Path, *, notes: Sequence[str] = (), subtitle: str = "") -> Path:
    """One figure: a row per method (and the joint PCA on shared axes, with the first model's class
    centroids as black crosses), a column per model, points coloured by class."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows, cols = list(coords), len(models)
    classes = int(labels.max()) + 1
    cmap = colormaps["tab10" if classes <= 10 else "tab20" if classes <= 20 else "viridis"]
    vmax = cmap.N - 1 if classes <= 20 else classes - 1  # one qualitative colour per class up to 20
    fig = Figure(figsize=(2.6 * cols + 0.6, 2.6 * len(rows) + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, method in enumerate(rows):
        for c, model in enumerate(models):
            ax = axes[r][c]
            _scatter(ax, coords[method][c], labels, cmap, vmax)
            if r == 0:
                ax.set_title(model, fontsize=10)
            if c == 0:
                ax.set_ylabel(method, fontsize=10)
        if method == JOINT:
            stacked = np.concatenate(coords[method])
            low, high = stacked.min(axis=0), stacked.max(axis=0)
            pad = 0.05 * (high - low)
            first = coords[method][0]
            centroids = np.stack([first[labels == k].mean(axis=0) for k in np.unique(labels)])
            for ax in axes[r]:
                ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
                ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
                ax.scatter(centroids[:, 0], centroids[:, 1], marker="x", c="black", s=14, linewidths=0.8)
    width = 30 * cols
    title = textwrap.wrap(f"Embeddings of {len(labels)} items by each model, coloured by class"
                          + (f" ({subtitle})" if subtitle else ""), width)
    title += textwrap.wrap(" + ".join(n.split(":")[0] for n in notes), width)
    fig.suptitle("\n".join(title), fontsize=10, color="red" if notes else "black")
    if classes <= 20:
        handles = [Line2D([], [], ls="", marker="o", ms=4, color=cmap(k)) for k in range(classes)]
        fig.legend(handles, [str(k) for k in range(classes)], title="class", loc="lower center",
                   ncol=min(classes, 5 * cols), fontsize=7, title_fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if classes <= 20 else 0, 1, 1))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return Path(path)


def write_projections(embeddings: Sequence[np.ndarray], labels: np.ndarray, models: Sequence[str],
                      out_dir: str | Path, *, methods: Sequence[str] = METHODS, sample: int = DEFAULT_SAMPLE,
                      notes: Sequence[str], seed: int = 0) -> Path:
    """Project the same sample of items (``sample`` at most, drawn with ``seed``) embedded by every
    model and write ``projections.png`` into ``out_dir``; ``notes``: the evaluation's provenance notes
    (generated data, random backbone), bannered on the figure."""
    index = sample_indices(len(labels), size=sample, seed=seed)
    coords = project([np.asarray(e[index]) for e in embeddings], methods=methods, seed=seed)
    return plot_projections(coords, np.asarray(labels[index]), models, Path(out_dir) / FIGURE_FILE, notes=notes,
                            subtitle=f"sample seed {seed}")
