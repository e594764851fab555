"""Backfilling curves: a gallery embedded by an old model j is re-embedded by a new model i a fraction
f at a time, in a fixed order; queries come from model i. At f = 0 the metric is C[i][j], at f = 1 the
diagonal C[i][i].

Through an index, the gallery as it stands at f is indexed the way the matrix's cells index a gallery
(same kind, parameters and build seed): f = 0 searches the old model's index (cell C[i][j] of that
kind), f = 1 the new model's (cell C[i][i]), and each fraction in between an index built over the
mixed gallery. Patching the old index instead (new vectors added to the old IVF lists or HNSW graph,
old ones masked out of the search) does not end at the diagonal: the old coarse quantiser or graph
links stay, and through HNSW the masked nodes take the search's candidate budget (efSearch), so lists
come back with empty slots that count as misses. What an engine keeps during a live update is its own
policy; the curve measures the gallery's content through the index kind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...common.errors import InputError
from .indexes import build_index, neighbour_metrics, search
from ..metrics.ranking import retrieval_outcomes
from ..metrics.labelfree import item_outcomes
from ..metrics.table import METRICS, metric as table_metric, per_query, retrieval_metrics


def fractions(steps: int) -> np.ndarray:
    """f = 0, 1/steps, ..., 1 (float64 [steps + 1])."""
    if steps < 1:
        raise InputError(f"--backfill-steps {steps}: must be at least 1")
    return np.linspace(0.0, 1.0, steps + 1)


def backfilled_counts(n: int, f: np.ndarray) -> np.ndarray:
    """Items re-embedded at each fraction: round(f * n), int64 like ``f``."""
    return np.rint(f * n).astype(np.int64)


def backfill_order(n: int, *, seed: int = 0, order_file: Optional[str | Path] = None) -> np.ndarray:
    """The order items are re-embedded in: a seeded random permutation of 0..n-1, or the one in
    ``order_file`` (gallery row numbers, one per line, each of 0..n-1 exactly once)."""
    if order_file is None:
        return np.random.default_rng(seed).permutation(n)
    try:
        lines = [ln.strip() for ln in Path(order_file).read_text().splitlines() if ln.strip()]
        order = np.array([int(ln) for ln in lines], np.int64)
    except OSError as e:
        raise InputError(f"{order_file}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{order_file}: expected one gallery row number per line ({e})") from None
    if len(order) != n or not np.array_equal(np.sort(order), np.arange(n)):
        raise InputError(f"{order_file}: must list each gallery row 0..{n - 1} exactly once "
                         f"({len(order)} lines, {len(np.unique(order))} distinct)")
    return order


def default_pairs(t: int) -> list[tuple[int, int]]:
    """(new, old) pairs: each model against the first and against the previous one."""
    return list(dict.fromkeys(p for i in range(1, t) for p in ((i, 0), (i, i - 1))))


def parse_pairs(text: str, models: Sequence[str]) -> list[tuple[int, int]]:
    """``NEW:OLD,NEW:OLD`` model ids as (new, old) positions; the old model must come before the new."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        new, sep, old = part.partition(":")
        if not sep or new not in models or old not in models:
            raise InputError(f"--backfill-pairs {part!r}: expected NEW:OLD with model ids among {', '.join(models)}")
        i, j = models.index(new), models.index(old)
        if j >= i:
            raise InputError(f"--backfill-pairs {part!r}: {old} must be older than {new}")
        pairs.append((i, j))
    if not pairs:
        raise InputError("--backfill-pairs: no pairs given")
    return pairs


def mixed_gallery(old: np.ndarray, new: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A float32 copy of ``old`` [Ng, D] with rows ``items`` taken from ``new``."""
    out = np.array(old, dtype=np.float32)
    out[items] = new[items]
    return out


def exact_curve(query: np.ndarray, old: np.ndarray, new: np.ndarray, query_labels: np.ndarray,
                gallery_labels: np.ndarray, order: np.ndarray, f: np.ndarray, *, k: int = 5,
                exclude_self: bool = False, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """The exact metrics ``names`` (default :func:`.table.chosen`) at each fraction ``f`` [F]: queries
    [Nq, D] of the new model against the gallery with its first round(f * Ng) items of ``order``
    re-embedded."""
    curves: dict[str, list[float]] = {}
    for count in backfilled_counts(len(old), f):
        values = retrieval_metrics(query, query_labels, mixed_gallery(old, new, order[:count]), gallery_labels,
                                   k=k, exclude_self=exclude_self, names=names)
        for name, v in values.items():
            curves.setdefault(name, []).append(v)
    return {name: np.array(v) for name, v in curves.items()}


def index_curve(ends: tuple, kind: str, resolved: dict, query: np.ndarray, old: np.ndarray, new: np.ndarray,
                query_labels: np.ndarray, gallery_labels: np.ndarray, order: np.ndarray, f: np.ndarray, *,
                k: int = 5, exclude_self: bool = False, depth: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """The metrics of :func:`neighbour_metrics` at each fraction ``f`` [F] through an index of ``kind``.

    ``ends`` = (the old gallery's index, the new gallery's index), as the matrix's cells search them:
    used when no item, or every item, is re-embedded. Any other fraction searches an index built by
    :func:`build_index` (``resolved``, ``seed``) over ``old`` [Ng, D] with the first round(f * Ng) items
    of ``order`` taken from ``new`` [Ng, D]. ``depth``: the ranked list's length K.
    """
    ng = len(new)
    old_index, new_index = ends
    curves: dict[str, list[float]] = {}
    for count in backfilled_counts(ng, f):
        if count in (0, ng):
            index = old_index if count == 0 else new_index
        else:
            index = build_index(mixed_gallery(old, new, order[:count]), kind, resolved, seed=seed)
        found = search(index, kind, resolved, query, depth, exclude_self=exclude_self)
        for name, v in neighbour_metrics(found, query_labels, gallery_labels, k=k, exclude_self=exclude_self).items():
            curves.setdefault(name, []).append(v)
    return {name: np.array(v) for name, v in curves.items()}


def area(f: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule over f in [0, 1] (the mean metric during the backfill)."""
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(f)))


def backfilled_values(query: np.ndarray, old: np.ndarray, new: np.ndarray, query_labels: Optional[np.ndarray],
                      gallery_labels: Optional[np.ndarray], items: np.ndarray, *, metric: str, k: int = 5,
                      exclude_self: bool = False, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-query values (float64 [Nq], NaN = no value) of ``metric`` by exact search: queries [Nq, D]
    against the gallery ``old`` [Ng, D] with rows ``items`` taken from ``new`` (``old`` itself when
    ``items`` is empty). What the decision rule judges at one point of a backfilling curve. A label-free
    metric (labels unused) compares neighbourhoods with ``reference`` int [N, k], the old model's own
    (:attr:`.metrics.compat.Compatibility.neighbours`): the neighbourhood its users saw before the backfill
    (the full re-index, f = 1, is the diagonal cell C[i][i] instead: 1 by construction)."""
    gallery = mixed_gallery(old, new, items) if len(items) else old
    entry = table_metric(metric)
    if not entry.labels:
        return per_query(item_outcomes(query, gallery, k=k, requires=entry.requires, reference=reference), metric)
    outcomes = retrieval_outcomes(query, query_labels, gallery, gallery_labels, k=k, exclude_self=exclude_self,
                                  requires=METRICS[metric].requires)
    return per_query(outcomes, metric)
