"""Linear CKA (Kornblith et al. 2019) between embeddings of the same items: how far two models'
representations drifted apart. Pure numpy."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two embeddings of the same N items.

    Parameters
    ----------
    x : [N, D1], y : [N, D2]; row i of both is item i.

    Returns
    -------
    float in [0, 1]: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc, Yc centred per column.
    """
    return float(linear_cka_matrix([x, y])[0, 1])


def _centred_cross(x: np.ndarray, y: np.ndarray, mean_x: np.ndarray, mean_y: np.ndarray,
                   rows: int = 4096) -> np.ndarray:
    """(x - mean_x)^T (y - mean_y) in float64, centring one block of rows at a time."""
    out = np.zeros((x.shape[1], y.shape[1]))
    for s in range(0, len(x), rows):
        xc = (x[s:s + rows] - mean_x).astype(np.float32)
        yc = xc if y is x else (y[s:s + rows] - mean_y).astype(np.float32)
        out += xc.T @ yc
    return out


def linear_cka_matrix(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA between every two of ``embeddings`` (each [N, D_t], same N items in the same order).

    Returns
    -------
    float64 array [T, T], symmetric, ones on the diagonal (NaN where an embedding is constant).
    Products of centred float32 blocks are summed in float64; no centred copy of a whole set is kept.
    """
    embeddings = [np.asarray(e) for e in embeddings]
    means = [e.mean(axis=0, dtype=np.float64) for e in embeddings]
    self_norm = [np.linalg.norm(_centred_cross(e, e, m, m)) for e, m in zip(embeddings, means)]
    t = len(embeddings)
    cka = np.eye(t)
    for i in range(t):
        for j in range(i):
            cross = np.linalg.norm(_centred_cross(embeddings[i], embeddings[j], means[i], means[j])) ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                cka[i, j] = cka[j, i] = cross / (self_norm[i] * self_norm[j])
    for i in range(t):
        if self_norm[i] == 0:
            cka[i, :] = cka[:, i] = np.nan
    return cka
