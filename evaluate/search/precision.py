"""Reduced precision measured as compatibility: galleries stored in fp16 or as int8 scalar-quantised
codes (searched by inner product with the decoded vectors, as a scalar-quantised index does), and
queries from fp16 / int8 exports against fp32 galleries."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..metrics.table import retrieval_metrics

STORAGE_PRECISIONS = ("fp16", "int8")
_ROWS = 65_536


def int8_quantiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension scalar quantiser of ``x`` [N, D]: (low [D], step [D]) with 256 levels spanning each
    dimension's min..max (step 1 where a dimension is constant)."""
    low = np.min(x, axis=0).astype(np.float32)
    span = np.max(x, axis=0).astype(np.float32) - low
    return low, np.where(span > 0, span / 255, 1).astype(np.float32)


def int8_encode(x: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """uint8 codes [N, D]: round((x - low) / step), clipped to 0..255."""
    return np.clip(np.rint((x - low) / step), 0, 255).astype(np.uint8)


def int8_decode(codes: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """float32 [N, D]: low + code * step (within step / 2 of the encoded values)."""
    return (low + codes.astype(np.float32) * step).astype(np.float32)


def stored(gallery: np.ndarray, precision: str) -> np.ndarray:
    """``gallery`` float32 [N, D] as a search sees it after storage at ``precision`` (float32 copy)."""
    x = np.asarray(gallery)
    if precision == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if precision == "int8":
        low, step = int8_quantiser(x)
        out = np.empty(x.shape, np.float32)
        for s in range(0, len(x), _ROWS):
            out[s:s + _ROWS] = int8_decode(int8_encode(x[s:s + _ROWS], low, step), low, step)
        return out
    raise ValueError(f"storage precision {precision!r}: expected one of {', '.join(STORAGE_PRECISIONS)}")


def storage_matrices(query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: np.ndarray,
                     gallery_labels: np.ndarray, precision: str, *, k: int = 5, exclude_self: bool = False,
                     names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """C[i][j] (the metrics ``names``, default :func:`.table.chosen`; [T, T], NaN above the diagonal)
    with gallery j stored at ``precision`` and fp32 queries; each gallery is decoded once for all its
    query models."""
    t = len(query)
    out: dict[str, np.ndarray] = {}
    for j in range(t):
        g = stored(gallery[j], precision)
        for i in range(j, t):
            values = retrieval_metrics(query[i], query_labels, g, gallery_labels, k=k, exclude_self=exclude_self,
                                       names=names)
            for name, v in values.items():
                out.setdefault(name, np.full((t, t), np.nan))[i, j] = v
    return out


def cosine_to_reference(x: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean and minimum cosine between matching rows of ``x`` and ``reference`` [N, D] (unit rows)."""
    cos = np.einsum("nd,nd->n", np.asarray(x, np.float64), np.asarray(reference, np.float64))
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def query_precision_row(reduced: np.ndarray, fp32_query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray,
                        gallery_labels: np.ndarray, *, k: int = 5, exclude_self: bool = False) -> dict[str, float]:
    """Every metric of ``reduced``-precision queries of a model against its own fp32 gallery, the change
    from the fp32 queries' value (``delta_<metric>``), and the cosine to the fp32 query embeddings."""
    values = retrieval_metrics(reduced, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self)
    base = retrieval_metrics(fp32_query, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self)
    return {**values, **{f"delta_{n}": values[n] - base[n] for n in values},
            **cosine_to_reference(reduced, fp32_query)}
