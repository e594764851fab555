"""Fitting a compatibility adapter (:class:`~.adapter.Adapter`) in float64 with numpy alone, streamed
over the stored shards of two sets of the same items.

``X`` [N, D_in] are the source model's embeddings of the fit items, ``Y`` [N, D_out] the target
model's, row for row. Everything is fitted from sufficient statistics accumulated block by block in
float64 (``XᵀX``, ``XᵀY``, the column sums and N), so memory does not grow with N:

* ``orthogonal`` (Procrustes, Schönemann 1966): the rotation W maximising trace(Wᵀ XᵀY), W = U Vᵀ
  from the SVD XᵀY = U S Vᵀ (in the column convention y = Wᶜ x of the issue: Wᶜ = Wᵀ from the SVD
  of YᵀX). Needs D_in = D_out. No bias, no ridge: it keeps cosine geometry exactly.
* ``linear``: ridge least squares without a bias, W = (XᵀX + λI)⁻¹ XᵀY.
* ``affine``: ridge least squares with an unpenalised bias, the same on centred X and Y, then
  b = mean(Y) − mean(X) W.

The ridge strength is relative: λ = ridge × the mean eigenvalue of the (centred, for affine) Gram
matrix, so one value means the same shrinkage whatever N and the embeddings' scale. Unless given, it
is chosen from :data:`RIDGE_GRID` on a held-out tenth of the fit rows (``ceil(N / 10)`` rows drawn by
a ``seed``-ed permutation, so the split is deterministic): the candidate with the highest mean
cosine between the mapped, L2-normalised held-out source rows and their target rows wins (exact ties
go to the stronger ridge); the adapter is then refitted on all N rows with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ...common.contract import ADAPTER_KINDS, ADAPTER_DIRECTIONS, check_choice
from ...common.errors import InputError
from ...infer.store.sets import EmbeddingSet
from .adapter import Adapter

RIDGE_GRID = (1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # strongest first: exact ties go to it
HELD_OUT = 10  # one fit row in HELD_OUT is held out to choose the ridge strength
BLOCK_ROWS = 4096  # rows per block of the streamed statistics: 2 x 4096 x D float64 in memory
_SINGULAR = 1e-12  # an unregularised Gram matrix with an eigenvalue below this fraction of its largest is refused


def parameters(kind: str, dim_in: int) -> int:
    """Parameters fitted per output dimension."""
    return dim_in + (kind == "affine")


def min_rows(kind: str, dim_in: int, *, choose_ridge: bool) -> int:
    """The fewest fit rows for ``kind``: ``orthogonal`` one per dimension; ``linear``/``affine`` one per
    parameter per output dimension, and with the ridge strength to choose as many again as the
    held-out tenth takes (N - ceil(N / 10) >= parameters)."""
    if kind == "orthogonal":
        return dim_in
    p = parameters(kind, dim_in)
    return p + math.ceil(p / (HELD_OUT - 1)) if choose_ridge else p


def check_pair(fit_from: EmbeddingSet, fit_to: EmbeddingSet) -> None:
    """InputError unless the two sets are embeddings of the same items in the same order (data location,
    fingerprint, items left out, labels) by two different models, each in its own space."""
    a, b = fit_from.manifest, fit_to.manifest
    for s in (fit_from, fit_to):
        if s.manifest.model.adapter is not None:
            raise InputError(f"{s.path}: already mapped into {s.manifest.model.adapter.target_id}'s space by an "
                             "adapter; fit an adapter between two models' own embeddings")
    if (a.dataset.location, a.dataset.fingerprint) != (b.dataset.location, b.dataset.fingerprint):
        raise InputError(f"{fit_to.path}: embeddings of {b.dataset.location} (fingerprint {b.dataset.fingerprint[:12]}), "
                         f"but {fit_from.path} holds {a.dataset.location} ({a.dataset.fingerprint[:12]}); an adapter "
                         "is fitted on the same items embedded by both models")
    if a.skipped != b.skipped or not fit_from.same_labels(fit_to):
        raise InputError(f"{fit_to.path}: not the same items as {fit_from.path} ({b.count} vs {a.count} rows, "
                         f"{len(b.skipped)} vs {len(a.skipped)} skipped, labels "
                         f"{'equal' if fit_from.same_labels(fit_to) else 'differ'}); embed the "
                         "fit data with both models the same way")
    if (a.model.sha256, a.model.output) == (b.model.sha256, b.model.output):
        raise InputError(f"{fit_to.path}: embeddings of the same model as {fit_from.path} (sha256 "
                         f"{a.model.sha256[:12]}); an adapter maps one model's space into another's")


def _check_size(kind: str, fit_from: EmbeddingSet, fit_to: EmbeddingSet, rows: int, choose_ridge: bool) -> None:
    dim_in, dim_out = fit_from.dim, fit_to.dim
    if kind == "orthogonal" and dim_in != dim_out:
        raise InputError(f"{fit_to.path}: dimension {dim_out}, but {fit_from.path} has {dim_in}; an orthogonal "
                         "adapter needs equal dimensions (use linear or affine)")
    need = min_rows(kind, dim_in, choose_ridge=choose_ridge)
    if rows < need:
        why = ("one per dimension" if kind == "orthogonal" else
               f"{parameters(kind, dim_in)} parameters per output dimension"
               + (", plus a held-out tenth to choose the ridge strength" if choose_ridge else ""))
        raise InputError(f"{fit_from.path}: {rows} paired rows, the {kind} adapter from dimension {dim_in} needs at "
                         f"least {need} ({why})")


@dataclass
class _Stats:
    """Sufficient statistics of paired rows, float64: count, column sums, XᵀX (None if not wanted), XᵀY."""

    n: int
    sx: np.ndarray
    sy: np.ndarray
    xx: Optional[np.ndarray]
    xy: np.ndarray

    @classmethod
    def empty(cls, dim_in: int, dim_out: int, gram: bool) -> "_Stats":
        return cls(0, np.zeros(dim_in), np.zeros(dim_out), np.zeros((dim_in, dim_in)) if gram else None,
                   np.zeros((dim_in, dim_out)))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.n += len(x)
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        if self.xx is not None:
            self.xx += x.T @ x
        self.xy += x.T @ y

    def __add__(self, other: "_Stats") -> "_Stats":
        return _Stats(self.n + other.n, self.sx + other.sx, self.sy + other.sy,
                      None if self.xx is None else self.xx + other.xx, self.xy + other.xy)


def _paired_blocks(fit_from: EmbeddingSet, fit_to: EmbeddingSet):
    """(first row, source float32 [B, D_in], target float32 [B, D_out]) of consecutive row blocks."""
    start = 0
    for a, b in zip(fit_from.row_blocks(BLOCK_ROWS), fit_to.row_blocks(BLOCK_ROWS)):
        yield start, a.embeddings, b.embeddings
        start += len(a.embeddings)


def _accumulate(fit_from: EmbeddingSet, fit_to: EmbeddingSet, masks: Sequence[np.ndarray], gram: bool) -> list[_Stats]:
    """One pass over the sets: the statistics of the rows selected by each boolean mask [N]."""
    stats = [_Stats.empty(fit_from.dim, fit_to.dim, gram) for _ in masks]
    for start, x, y in _paired_blocks(fit_from, fit_to):
        for s, mask in zip(stats, masks):
            take = mask[start:start + len(x)]
            if take.any():
                s.add(np.asarray(x[take], np.float64), np.asarray(y[take], np.float64))
    return stats


def _centred(stats: _Stats, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(Gram matrix, cross product) of the least squares: centred for ``affine``."""
    if kind != "affine":
        return stats.xx, stats.xy
    return (stats.xx - np.outer(stats.sx, stats.sx) / stats.n, stats.xy - np.outer(stats.sx, stats.sy) / stats.n)


def _ridge_solutions(stats: _Stats, kind: str, ridges: Sequence[float],
                     where: str) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
    """(W [D_in, D_out], bias [D_out] or None) for each relative ridge strength, from one eigendecomposition."""
    gram, cross = _centred(stats, kind)
    values, vectors = np.linalg.eigh(gram)
    scale = max(values.mean(), 0.0)
    if scale == 0:
        raise InputError(f"{where}: the fit rows do not vary; nothing to fit")
    projected = vectors.T @ cross
    out = []
    for ridge in ridges:
        shifted = values + ridge * scale
        if shifted.min() <= _SINGULAR * values.max():
            raise InputError(f"{where}: the fit rows span only {int((values > _SINGULAR * values.max()).sum())} of "
                             f"{len(values)} dimensions; give a ridge strength above 0")
        weight = vectors @ (projected / shifted[:, None])
        bias = (stats.sy - stats.sx @ weight) / stats.n if kind == "affine" else None
        out.append((weight, bias))
    return out


def _orthogonal(stats: _Stats) -> np.ndarray:
    u, _, vt = np.linalg.svd(stats.xy)
    return u @ vt


def _held_out_cosines(fit_from: EmbeddingSet, fit_to: EmbeddingSet, held: np.ndarray,
                      solutions: Sequence[tuple[np.ndarray, Optional[np.ndarray]]]) -> list[float]:
    """Mean cosine between the mapped held-out source rows and their target rows, per solution
    (a row mapped to zero counts as cosine 0)."""
    weights = np.concatenate([w for w, _ in solutions], axis=1)
    biases = np.concatenate([np.zeros(w.shape[1]) if b is None else b for w, b in solutions])
    k, dim_out = len(solutions), solutions[0][0].shape[1]
    total = np.zeros(k)
    for start, x, y in _paired_blocks(fit_from, fit_to):
        take = held[start:start + len(x)]
        if not take.any():
            continue
        mapped = (np.asarray(x[take], np.float64) @ weights + biases).reshape(-1, k, dim_out)
        target = np.asarray(y[take], np.float64)
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        norms = np.linalg.norm(mapped, axis=2)
        dots = np.einsum("nkd,nd->nk", mapped, target)
        total += np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0).sum(axis=0)
    return list(total / held.sum())


def _masks(n: int, rows: Optional[np.ndarray], seed: int, choose_ridge: bool) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) as boolean masks [n]: ``rows`` (all when None) and, to choose the
    ridge, ceil(len / 10) of them drawn by a ``seed``-ed permutation."""
    selected = np.zeros(n, bool)
    selected[np.arange(n) if rows is None else rows] = True
    held = np.zeros(n, bool)
    if choose_ridge:
        chosen = np.flatnonzero(selected)
        held[chosen[np.random.default_rng(seed).permutation(len(chosen))[:math.ceil(len(chosen) / HELD_OUT)]]] = True
    return selected, held


def fit_adapter(fit_from: EmbeddingSet, fit_to: EmbeddingSet, *, kind: str, direction: str,
                ridge: Optional[float] = None, seed: int = 0, rows: Optional[np.ndarray] = None) -> Adapter:
    """The ``kind`` adapter mapping ``fit_from``'s model's embeddings into ``fit_to``'s model's space,
    fitted on their paired rows (all, or the row indices ``rows``) as the module doc says.

    ``direction``: ``query`` when ``fit_from`` is the new (query) model and ``fit_to`` the old (gallery)
    model; ``gallery`` when ``fit_from`` is the old gallery's model and ``fit_to`` the new model.
    ``ridge``: the relative ridge strength of ``linear``/``affine`` (>= 0), None to choose it.
    InputError (one line) for sets that are not the same items, unequal dimensions for ``orthogonal``,
    too few rows (the message says how many are needed), a ridge for ``orthogonal``.
    """
    check_choice("--kind", kind, ADAPTER_KINDS)
    check_choice("--direction", direction, ADAPTER_DIRECTIONS)
    if ridge is not None and (kind == "orthogonal" or not 0 <= ridge < math.inf):
        raise InputError(f"--ridge {ridge}: " + ("an orthogonal adapter has no ridge strength" if kind == "orthogonal"
                                                 else "must be a finite number of at least 0"))
    check_pair(fit_from, fit_to)
    if rows is not None:
        rows = np.unique(np.asarray(rows, np.int64))
        if rows.size and not 0 <= rows[0] <= rows[-1] < fit_from.count:
            raise ValueError(f"rows must be indices below {fit_from.count}")
    choose = kind != "orthogonal" and ridge is None
    count = fit_from.count if rows is None else len(rows)
    _check_size(kind, fit_from, fit_to, count, choose)
    selected, held = _masks(fit_from.count, rows, seed, choose)
    where = str(fit_from.path)
    selection: tuple[tuple[float, float], ...] = ()
    if kind == "orthogonal":
        weight, bias = _orthogonal(_accumulate(fit_from, fit_to, [selected], gram=False)[0]), None
    else:
        train, kept = _accumulate(fit_from, fit_to, [selected & ~held, held], gram=True)
        if choose:
            scores = _held_out_cosines(fit_from, fit_to, held, _ridge_solutions(train, kind, RIDGE_GRID, where))
            selection = tuple((r, float(s)) for r, s in zip(RIDGE_GRID, scores))
            ridge = RIDGE_GRID[int(np.argmax(scores))]
        weight, bias = _ridge_solutions(train + kept, kind, [ridge], where)[0]
    return Adapter(kind=kind, direction=direction, weight=weight, bias=bias, source=fit_from.manifest.model,
                   target=fit_to.manifest.model, fit=fit_from.manifest.dataset, fit_rows=count, ridge=ridge,
                   selection=selection, seed=seed)
