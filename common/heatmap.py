"""A square matrix as an annotated heatmap PNG (matplotlib's object API, no global backend)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .atomic import atomic_file


def heatmap(path: Path, matrix: np.ndarray, models: Sequence[str], title: str, stars: Optional[np.ndarray],
            xlabel: str, ylabel: str, notes: Sequence[str] = ()) -> None:
    """Write ``matrix`` [T, T] (rows and columns labelled ``models``) as an annotated PNG at ``path``,
    atomically; NaN cells stay blank, ``stars`` [T, T] marks cells with '*', ``notes`` head it in red."""
    # The object API leaves matplotlib's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = len(models)
    size = max(4.5, 0.75 * t + 2.5)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(matrix)
    finite = matrix[np.isfinite(matrix)]
    image = ax.imshow(masked, cmap="viridis", vmin=finite.min() if finite.size else 0,
                      vmax=finite.max() if finite.size else 1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(t), labels=models, rotation=45, ha="right")
    ax.set_yticks(range(t), labels=models)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if notes:
        fig.suptitle("\n".join(textwrap.wrap(" + ".join(n.split(":")[0] for n in notes), 60)), color="red",
                     fontsize=11, fontweight="bold")
    if t <= 16:
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(t):
            for j in range(t):
                if np.isfinite(matrix[i, j]):
                    text = f"{matrix[i, j]:.3f}" + ("*" if stars is not None and stars[i, j] else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=max(5, 10 - t // 3),
                            color="black" if matrix[i, j] > middle else "white")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
