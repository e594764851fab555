"""What an adapter does to retrieval: the adapted pair's metrics, and how they grow with the number of
paired fit items (the learning curve a team reads to know how many items it must pair).

A pair is (query model, gallery model). A ``query`` adapter maps the query model's (its source's)
query set into the gallery model's (its target's) space; a ``gallery`` adapter maps the gallery
model's (its source's) gallery set into the query model's (its target's) space. Metrics are
:func:`evaluate.metrics.table.retrieval_metrics`; when query and gallery are the same data, each
query's own item is left out of its gallery unless ``include_self`` (as ``evaluate`` does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ...common.errors import InputError
from ...infer.store.sets import EmbeddingSet
from ..metrics.table import retrieval_metrics
from ..metrics.unlabelled import require_set_labels
from .adapter import Adapter
from .apply import adapted_embeddings
from .fit import check_pair, fit_adapter, min_rows
from .guard import check_disjoint, check_no_leak

CURVE_STEPS = (1, 3)  # sizes 100, 300, 1000, 3000, ... (x10 per decade)
CURVE_START = 100


def _check_target(adapter: Adapter, s: EmbeddingSet) -> None:
    m = s.manifest.model
    if (m.sha256, m.output) != (adapter.target.sha256, adapter.target.output) or m.adapter is not None:
        raise InputError(f"{s.path}: embeddings of {m.id} (sha256 {m.sha256[:12]}), but the adapter maps into "
                         f"{adapter.target.id}'s space (sha256 {adapter.target.sha256[:12]})")


def adapted_pair(adapter: Adapter, query: EmbeddingSet, gallery: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """(query float32 [Nq, D], gallery float32 [Ng, D]) of the adapted pair, the adapter applied to
    the side its direction names; InputError if the sets are not of its source and target models."""
    if adapter.direction == "query":
        _check_target(adapter, gallery)
        return adapted_embeddings(adapter, query), gallery.embeddings
    _check_target(adapter, query)
    return query.embeddings, adapted_embeddings(adapter, gallery)


def adapted_metrics(adapter: Adapter, query: EmbeddingSet, gallery: EmbeddingSet, *, k: int = 5,
                    include_self: bool = False) -> dict[str, float]:
    """Retrieval metrics of the adapted pair (see the module doc), after the leakage guard."""
    check_no_leak(adapter, query, gallery)
    require_set_labels((query, gallery))
    q, g = adapted_pair(adapter, query, gallery)
    return retrieval_metrics(q, query.labels, g, gallery.labels, k=k,
                             exclude_self=query.same_items(gallery) and not include_self)


@dataclass(frozen=True)
class CurvePoint:
    """The adapted pair's ``metrics`` with an adapter fitted on ``size`` paired items (``ridge`` used)."""

    size: int
    ridge: Optional[float]
    metrics: dict[str, float]


def curve_sizes(count: int, least: int) -> list[int]:
    """100, 300, 1000, 3000, ... from ``least`` rows (the fewest a fit takes) up to ``count``, and ``count``."""
    sizes, decade = [], CURVE_START
    while decade <= count:
        sizes += [decade * s for s in CURVE_STEPS if least <= decade * s <= count]
        decade *= 10
    return sizes + ([count] if count not in sizes and count >= least else [])


def curve_adapters(fit_from: EmbeddingSet, fit_to: EmbeddingSet, query: EmbeddingSet, gallery: EmbeddingSet, *,
                   kind: str, direction: str, sizes: Optional[Sequence[int]] = None, ridge: Optional[float] = None,
                   seed: int = 0) -> Iterator[tuple[int, Adapter]]:
    """(size, adapter) for each size of a learning curve: adapters fitted on nested subsets of the fit
    set, the first ``size`` rows of one ``seed``-ed permutation for each size (default
    :func:`curve_sizes`: 100, 300, 1000, ... as far as the fit set allows, and all of it), each fitted
    as :func:`fit_adapter` does (the ridge strength chosen on a held-out tenth of that subset unless
    given). InputError, before any fit, if the fit data overlaps the query or gallery data, or for a
    size the fit set cannot give."""
    check_pair(fit_from, fit_to)
    check_disjoint(fit_from.manifest.dataset, query, gallery, name=str(fit_from.path))
    least = min_rows(kind, fit_from.dim, choose_ridge=kind != "orthogonal" and ridge is None)
    sizes = curve_sizes(fit_from.count, least) if sizes is None else sorted(set(sizes))
    if not sizes or not least <= sizes[0] <= sizes[-1] <= fit_from.count:
        raise InputError(f"{fit_from.path}: {fit_from.count} paired rows; learning-curve sizes must lie from {least} "
                         f"(the fewest the {kind} adapter of dimension {fit_from.dim} takes) to {fit_from.count}")
    order = np.random.default_rng(seed).permutation(fit_from.count)
    return ((size, fit_adapter(fit_from, fit_to, kind=kind, direction=direction, ridge=ridge, seed=seed,
                               rows=order[:size])) for size in sizes)


def learning_curve(fit_from: EmbeddingSet, fit_to: EmbeddingSet, query: EmbeddingSet, gallery: EmbeddingSet, *,
                   kind: str, direction: str, sizes: Optional[Sequence[int]] = None, ridge: Optional[float] = None,
                   seed: int = 0, k: int = 5, include_self: bool = False) -> list[CurvePoint]:
    """The adapted pair's metrics with the adapters of :func:`curve_adapters` (same parameters)."""
    return [CurvePoint(size, adapter.ridge, adapted_metrics(adapter, query, gallery, k=k, include_self=include_self))
            for size, adapter in curve_adapters(fit_from, fit_to, query, gallery, kind=kind, direction=direction,
                                                sizes=sizes, ridge=ridge, seed=seed)]
