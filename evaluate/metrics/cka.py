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


_GRAM_BYTES = 64 * 1024 * 1024  # float64 accumulators of the pairs computed in one pass over the rows


def _centred_grams(embeddings: Sequence[np.ndarray], means: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]],
                   rows: int = 2048) -> dict[tuple[int, int], np.ndarray]:
    """``{(i, j): (x_i - mean_i)^T (x_j - mean_j)}`` in float64 for ``pairs``, in one pass over the
    rows: each block of rows is centred once per embedding (float32, into a buffer kept for the
    pass) and its float32 products are summed in float64; a pair (i, i) is a symmetric product."""
    out = {(i, j): np.zeros((embeddings[i].shape[1], embeddings[j].shape[1])) for i, j in pairs}
    used = sorted({t for pair in pairs for t in pair})
    centred = {t: np.empty((rows, embeddings[t].shape[1]), np.float32) for t in used}
    product = {pair: np.empty(grams.shape, np.float32) for pair, grams in out.items()}
    means32 = {t: means[t].astype(np.float32) for t in used}
    for s in range(0, len(embeddings[0]), rows):
        r = min(rows, len(embeddings[0]) - s)
        for t in used:
            np.subtract(embeddings[t][s:s + r], means32[t], out=centred[t][:r])
        for i, j in pairs:
            out[i, j] += np.matmul(centred[i][:r].T, centred[j][:r], out=product[i, j])
    return out


def linear_cka_matrix(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA between every two of ``embeddings`` (each [N, D_t], same N items in the same order).

    Returns
    -------
    float64 array [T, T], symmetric, ones on the diagonal (NaN where an embedding is constant).
    Products of centred float32 blocks are summed in float64; no centred copy of a whole set is kept.
    The pairs are computed in passes over the rows, as many per pass as ``_GRAM_BYTES`` of
    accumulators hold.
    """
    embeddings = [np.asarray(e) for e in embeddings]
    means = [e.mean(axis=0, dtype=np.float64) for e in embeddings]
    t = len(embeddings)
    grams: dict[tuple[int, int], np.ndarray] = {}
    batch, size = [], 0
    for i, j in [(i, j) for i in range(t) for j in range(i + 1)]:
        pair = 8 * embeddings[i].shape[1] * embeddings[j].shape[1]
        if batch and size + pair > _GRAM_BYTES:
            grams.update(_centred_grams(embeddings, means, batch))
            batch, size = [], 0
        batch.append((i, j))
        size += pair
    grams.update(_centred_grams(embeddings, means, batch))
    self_norm = [np.linalg.norm(grams[i, i]) for i in range(t)]
    cka = np.eye(t)
    for i in range(t):
        for j in range(i):
            with np.errstate(invalid="ignore", divide="ignore"):
                cka[i, j] = cka[j, i] = np.linalg.norm(grams[i, j]) ** 2 / (self_norm[i] * self_norm[j])
    for i in range(t):
        if self_norm[i] == 0:
            cka[i, :] = cka[:, i] = np.nan
    return cka
