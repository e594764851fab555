"""The leakage guard: an adapter fitted on the very items it is evaluated on learns them, and a leaked
adapter looks compatible when it is not. Its fit data must be disjoint from the query and gallery
sets of any evaluation that reports it.

What the store records allows these checks, any one of which refuses: the same data location (the
resolved place, which includes the split), the same content fingerprint, the same CIFAR split read
from another folder, two generated sets (``generated:N`` items are the same first N of one
sequence), and folders one inside the other. A fit folder that holds copies of some gallery images
under other names cannot be told from the manifests: keep fit and evaluation data apart at the source.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Optional

from ...common.errors import InputError
from ...infer.data.base import CIFAR_KINDS
from ...infer.store.manifest import AdapterRecord, DataRecord
from ...infer.store.sets import EmbeddingSet
from .adapter import Adapter


def _folder(location: str) -> Optional[PurePath]:
    kind, _, rest = location.partition(":")
    return PurePath(rest) if kind == "folder" else None


def overlap(fit: DataRecord, data: DataRecord) -> Optional[str]:
    """Why the fit data ``fit`` and the data ``data`` share items, or None when the records say they do not."""
    if fit.location == data.location:
        return f"the same data, {data.location}"
    if fit.fingerprint == data.fingerprint:
        return f"the same content (fingerprint {data.fingerprint[:12]})"
    if fit.name in CIFAR_KINDS and (fit.name, fit.split) == (data.name, data.split):
        return f"the same {data.name} {data.split} split"
    if fit.location.startswith("generated:") and data.location.startswith("generated:"):
        return "generated sets share their first items"
    a, b = _folder(fit.location), _folder(data.location)
    if a is not None and b is not None and (a.is_relative_to(b) or b.is_relative_to(a)):
        return "one folder holds the other"
    return None


def check_disjoint(fit: DataRecord, query: EmbeddingSet, gallery: EmbeddingSet, *, name: str) -> None:
    """InputError naming ``name`` if the fit data ``fit`` overlaps the ``query`` or ``gallery`` set's data."""
    for role, s in (("query", query), ("gallery", gallery)):
        why = overlap(fit, s.manifest.dataset)
        if why is not None:
            raise InputError(f"{name}: fitted on {fit.spec}, which overlaps the {role} set {s.path} ({why}); fit it "
                             "on data disjoint from both")


def check_no_leak(adapter: Adapter, query: EmbeddingSet, gallery: EmbeddingSet, *, name: Optional[str] = None) -> None:
    """InputError (naming the adapter as ``name``, default its digest) if its fit data overlaps the
    ``query`` or ``gallery`` set's data (see the module doc)."""
    check_disjoint(adapter.fit, query, gallery, name=name or f"adapter {adapter.digest[:12]}")


def location_record(location: str, *, fingerprint: str = "", size: int = 1) -> DataRecord:
    """A data record from a data ``location`` alone (``cifar10:test:/abs/...``, ``folder:/abs``, ...):
    the kind and, for CIFAR, the split read from it; ``fingerprint`` "" (unknown) matches nothing."""
    kind, _, rest = location.partition(":")
    split = rest.partition(":")[0] if kind in CIFAR_KINDS else ""
    return DataRecord(spec=location, location=location, name=kind, split=split, fingerprint=fingerprint, size=size)


def record_data(record: AdapterRecord) -> DataRecord:
    """The fit data as far as an adapter's record tells it (a model file with an adapter inside holds
    the record, not the adapter file): its location, fingerprint and rows."""
    return location_record(record.fit_location, fingerprint=record.fit_fingerprint, size=record.fit_rows)


def check_locations(fit: DataRecord, locations: dict[str, str], *, name: str) -> None:
    """InputError naming ``name`` if the fit data ``fit`` overlaps one of ``locations`` (role -> data
    location) by what the locations alone say: the check that can come before any embedding."""
    for role, location in locations.items():
        why = overlap(fit, location_record(location))
        if why is not None:
            raise InputError(f"{name}: fitted on {fit.spec}, which overlaps the {role} data {location} ({why}); fit "
                             "it on data disjoint from both")
