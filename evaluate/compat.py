"""Backward-compatibility matrices (BCT, Shen et al. 2020) and the multi-model criteria.

C[i][j] = metric of queries embedded by model i against the gallery embedded by model j, for
j <= i (NaN above the diagonal). Model i is compatible with an older model j < i when
C[i][j] > C[j][j]; AC is the fraction of pairs i > j that are, AM the mean of C[i][j] over i >= j.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .metrics import linear_cka_matrix, retrieval_metrics

METRICS = ("top1", "top5", "knn", "mAP")


@dataclass
class Criteria:
    """``AC`` (NaN with fewer than two models), ``AM``, ``compatible`` as (i, j, bool) for every i > j,
    ``margins`` [T, T] with C[i][j] - C[j][j] for i > j and NaN elsewhere."""

    AC: float
    AM: float
    compatible: list[tuple[int, int, bool]]
    margins: np.ndarray


@dataclass
class Compatibility:
    """``metrics[name]`` [T, T] lower-triangular matrices, ``criteria[name]``, ``cka`` [T, T] symmetric."""

    metrics: dict[str, np.ndarray]
    criteria: dict[str, Criteria]
    cka: np.ndarray


def criteria(matrix: np.ndarray) -> Criteria:
    """Empirical compatibility of a lower-triangular matrix C [T, T] (see the module doc)."""
    t = len(matrix)
    margins = np.full((t, t), np.nan)
    compatible = []
    for i in range(t):
        for j in range(i):
            margins[i, j] = matrix[i, j] - matrix[j, j]
            compatible.append((i, j, bool(matrix[i, j] > matrix[j, j])))
    lower = matrix[np.tril_indices(t)]
    return Criteria(AC=float(np.mean([c for _, _, c in compatible])) if compatible else float("nan"),
                    AM=float(np.mean(lower)), compatible=compatible, margins=margins)


def compatibility(query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: np.ndarray,
                  gallery_labels: np.ndarray, k: int = 5, exclude_self: bool = False,
                  progress: Optional[Callable[[int, int], None]] = None) -> Compatibility:
    """Every metric for every pair (query model i, gallery model j <= i), criteria, and CKA.

    Parameters
    ----------
    query : T arrays float32 [Nq, D], the query images embedded by models 1..T (L2-normalised).
    gallery : T arrays float32 [Ng, D], the gallery images embedded by the same models, same order.
    query_labels : int [Nq]; gallery_labels : int [Ng].
    k : neighbours of the kNN vote.
    exclude_self : query and gallery are the same images in the same order: leave each query's own
        image out of its gallery.
    progress : called with (cells done, cells in all) after each cell.

    Returns
    -------
    :class:`Compatibility`; CKA is between the models' query embeddings.
    """
    t = len(query)
    matrices = {name: np.full((t, t), np.nan) for name in METRICS}
    cells = t * (t + 1) // 2
    done = 0
    for i in range(t):
        for j in range(i + 1):
            values = retrieval_metrics(query[i], query_labels, gallery[j], gallery_labels, k=k,
                                       exclude_self=exclude_self)
            for name in METRICS:
                matrices[name][i, j] = values[name]
            done += 1
            if progress:
                progress(done, cells)
    return Compatibility(metrics=matrices, criteria={name: criteria(m) for name, m in matrices.items()},
                         cka=linear_cka_matrix(query))
