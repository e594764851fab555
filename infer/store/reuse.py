"""When ``embed`` may reuse a stored set instead of computing it again: same model file, output and
data, and a manifest that says of them what the model file and the data say now.

The model file wins over the store: a manifest whose record of the model (its task, modes, sizes),
preprocessing or provenance differs from what the file's metadata says (even one resealed after an
edit, see :func:`.manifest.content_digest`) is not reused, and the set is computed again from the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...common.errors import InputError
from ..data.base import Dataset
from ..data.datasets import spec_describes
from .manifest import Manifest
from .sets import EmbeddingSet, read_set

_COMPARED = ("model", "preprocessing", "provenance")
_DATA_FIELDS = ("location", "name", "split", "fingerprint", "size")


def _plain(value: object) -> object:
    """``value`` as JSON reads it back (tuples as lists), so a computed record compares with a stored one."""
    return json.loads(json.dumps(value, sort_keys=True))


def disagreements(stored: Manifest, expected: Manifest) -> list[str]:
    """What ``stored`` says differently from ``expected`` (the manifest the model file and data give
    now): ``model.task 7 (now 1)``, ... The model file's path, run details (provider, batch size,
    times, versions) and the spec's wording are not compared; the spec must still name the data."""
    got, want = json.loads(stored.to_json()), json.loads(expected.to_json())
    got["model"].pop("file", None), want["model"].pop("file", None)
    out = []
    for section in _COMPARED:
        a, b = got[section] or {}, _plain(want[section]) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key} {str(a.get(key))[:60]} (now {str(b.get(key))[:60]})")
    out += [f"dataset.{k} {str(got['dataset'][k])[:60]} (now {str(want['dataset'][k])[:60]})"
            for k in _DATA_FIELDS if got["dataset"][k] != want["dataset"][k]]
    if not spec_describes(stored.dataset.spec, stored.dataset.location):
        out.append(f"dataset.spec {stored.dataset.spec[:60]!r} does not name its location {stored.dataset.location}")
    return out


def stored_match(path: Path, expected: Manifest, dataset: Dataset, skip_bad: bool,
                 warn: Callable[[str], None]) -> Optional[EmbeddingSet]:
    """The valid set at ``path`` if it was made from this exact model file (sha256), output and data
    (location, fingerprint, labels) and its manifest agrees with ``expected`` (:func:`disagreements`);
    otherwise None, said through ``warn`` when a set was there. A set made with ``--skip-bad`` (some
    items left out) matches only when ``skip_bad`` is set too."""
    if not path.exists():
        return None
    try:
        stored = read_set(path)
    except InputError as e:
        warn(f"{e}; recomputing")
        return None
    m = stored.manifest
    if ((m.model.sha256, m.model.output, m.dataset.location, m.dataset.fingerprint)
            != (expected.model.sha256, expected.model.output, dataset.location, dataset.fingerprint)):
        warn(f"{path}: stored from another model file, output or other data; recomputing")
        return None
    differ = disagreements(m, expected)
    if differ:
        warn(f"{path}: its manifest disagrees with the model file and data ({'; '.join(differ)[:400]}); "
             "the model file wins: recomputing")
        return None
    if stored.labelled != dataset.labelled or (
            dataset.labelled and not np.array_equal(stored.labels, dataset.labels_without(m.skipped))):
        warn(f"{path}: its labels are not the data's; recomputing")
        return None
    return stored if skip_bad or not m.skipped else None
