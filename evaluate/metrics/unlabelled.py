"""Which metrics an evaluation computes, given whether its data has labels: decided here, and only here.

Every metric of :data:`.table.METRICS` (top-1, mAP@R, the kNN vote, ...) asks whether a retrieved item
has the query's label; no label is ever made up, so on unlabelled data (``folder:`` without class
sub-folders, ``images:``, ``list:`` without a label column) evaluate computes the label-free metrics of
:data:`.table.LABEL_FREE` only (cross-model self-retrieval, neighbourhood agreement: :mod:`.labelfree`),
and a label metric asked for by name (``--primary-metric top1``) is refused with the reason. On
labelled data the label-free metrics are computed beside the label metrics when asked for
(``--label-free``, or a label-free primary metric). The primary metric defaults to top-1 on labelled
data and to self-top1, its label-free counterpart, on unlabelled data.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ...common.errors import InputError
from ...infer.store.sets import EmbeddingSet
from .decision import DEFAULT_METRIC
from .table import LABEL_FREE, chosen, known, metric

DEFAULT_LABEL_FREE = "self-top1"


def require_set_labels(sets: Iterable[EmbeddingSet]) -> None:
    """InputError naming the first stored set (by its data spec and folder) whose data is unlabelled: for
    what measures label metrics only (``adapt``)."""
    for s in sets:
        if not s.labelled:
            raise InputError(f"{s.manifest.dataset.spec} ({s.path}): unlabelled data; the metrics measured here "
                             "(top-1, mAP@R, ...) compare labels, so none can be computed on it")


def primary_metric(what: str, *, labelled: bool, primary: Optional[str]) -> str:
    """The primary metric for data ``what``: ``primary``, or by default top-1 (labelled) / self-top1
    (unlabelled). InputError when it is unknown, or compares labels and the data has none."""
    name = primary or (DEFAULT_METRIC if labelled else DEFAULT_LABEL_FREE)
    if name not in known():
        raise InputError(f"--primary-metric {name}: expected one of {', '.join(known())}")
    if not labelled and metric(name).labels:
        raise InputError(f"--primary-metric {name}: {what} is unlabelled, and {metric(name).label} compares the "
                         f"labels of retrieved items; on unlabelled data evaluate offers the label-free metrics "
                         f"{', '.join(LABEL_FREE)}")
    return name


def metric_names(*, labelled: bool, label_free: bool, primary: str, full_map: bool = False) -> list[str]:
    """The metrics to compute, label metrics first, each table in its order: the label metrics on
    labelled data (:func:`.table.chosen`: the exact mAP only with ``full_map`` or as the ``primary``
    metric), the label-free ones on unlabelled data, and with ``label_free`` or a label-free
    ``primary`` metric too."""
    names = list(chosen(full_map=full_map or metric(primary).opt_in)) if labelled else []
    if not labelled or label_free or not metric(primary).labels:
        names += list(LABEL_FREE)
    return names


def require_same_items(what: str, same: bool) -> None:
    """InputError unless the query set is the gallery's items (needed by the label-free metrics)."""
    if not same:
        raise InputError(f"{what}: the label-free metrics ({', '.join(LABEL_FREE)}) compare each item's query with "
                         "the same item's gallery entry, so the query set must be the gallery's items: give "
                         "--query only (the gallery defaults to it), or the same data for both")
