"""What evaluate does with data that has no labels: decided here, and only here.

Every metric of the table (:mod:`.table`: top-1, mAP@R, the kNN vote, ...) asks whether a retrieved
item has the query's label, so none can be computed without labels, and no label is ever made up.
Issue 24, phase 1: unlabelled query or gallery data is refused, before any embedding or search, with
the reason. Phase 2 replaces :func:`require_labels` with the choice of label-free compatibility
(cross-model self-retrieval, neighbourhood agreement), the metrics offered for unlabelled data.
"""
from __future__ import annotations

from typing import Iterable

from ...common.errors import InputError
from ...infer.store.sets import EmbeddingSet


def require_labels(what: str, labelled: bool) -> None:
    """InputError naming ``what`` (a data spec, or a stored set) unless its data is ``labelled``."""
    if not labelled:
        raise InputError(f"{what}: unlabelled data; every metric evaluate reports (top-1, mAP@R, ...) compares labels, "
                         "so none can be computed on it; label-free compatibility (cross-model self-retrieval, "
                         "neighbourhood agreement) comes with issue 24, phase 2")


def require_set_labels(sets: Iterable[EmbeddingSet]) -> None:
    """:func:`require_labels` for stored sets, each named by its data spec and folder."""
    for s in sets:
        require_labels(f"{s.manifest.dataset.spec} ({s.path})", s.labelled)
