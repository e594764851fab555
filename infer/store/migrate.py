"""Sets of store format 1 — one ``embeddings.npy`` and ``labels.npy`` under ``<model-id>/<name>-<split>/``,
a folder name two data sets could share, and no digests — migrated to the current format by ``embed``.

A format-1 set is taken over only when its manifest names the same model file (sha256) and data
fingerprint, its arrays are well-formed unit rows and its labels are the data's; anything else is
left alone and recomputed. The old folder is kept (the message says it can be deleted).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...common.errors import InputError
from ..data.base import Dataset
from ..data.datasets import legacy_dataset_key
from .manifest import Manifest
from .shards import ShardWriter
from .sets import MANIFEST_FILE, EmbeddingSet, check_rows, load_checked, set_path


def _read_legacy(folder: Path, sha256: str, dataset: Dataset) -> Optional[tuple[np.ndarray, np.ndarray, dict]]:
    """(embeddings, labels, manifest dict) of a format-1 set of this model and data in ``folder``, else None."""
    try:
        old = json.loads((folder / MANIFEST_FILE).read_text())
        if old.get("format_version") != "1" or old["model"]["sha256"] != sha256 or \
                old["dataset"]["fingerprint"] != dataset.fingerprint:
            return None
        embeddings = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        if embeddings.dtype != np.float32 or embeddings.ndim != 2:
            return None
        labels = load_checked(folder / "labels.npy", np.int64, (len(embeddings),), mmap=False)  # header first
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, InputError):
        return None
    return embeddings, labels, old


def migrate_legacy(store: str | Path, path: Path, sha256: str, dataset: Dataset, manifest: Manifest, *,
                   skip_bad: bool, shard_rows: int, warn: Callable[[str], None]) -> Optional[EmbeddingSet]:
    """The format-1 set of ``manifest.model.id`` on ``dataset`` rewritten at ``path`` with ``manifest``
    (the old one's provider and creation time kept), or None when there is none to take over (one
    with skipped items only when ``skip_bad``). Call under the writer lock of ``path``."""
    folder = set_path(store, manifest.model.id, legacy_dataset_key(dataset.spec))
    found = _read_legacy(folder, sha256, dataset) if (folder / MANIFEST_FILE).is_file() else None
    if found is None:
        return None
    embeddings, labels, old = found
    skipped = tuple(s for s in old.get("skipped", []) if isinstance(s, str))
    if skipped and not skip_bad:
        return None
    if not np.array_equal(labels, dataset.labels_without(skipped)) or embeddings.shape[1] != manifest.model.embedding_dim:
        warn(f"{folder}: a store format 1 set whose labels or dimension are not this data's and model's; recomputing")
        return None
    try:
        check_rows(embeddings, folder / "embeddings.npy")
        writer = ShardWriter(path, {"migrated_from": str(folder)}, dim=embeddings.shape[1], shard_rows=shard_rows,
                             resume=False)
        for start in range(0, len(labels), shard_rows):
            writer.write(embeddings[start:start + shard_rows], labels[start:start + shard_rows],
                         skipped if start == 0 else ())
        kept = {k: old[k] for k in ("provider", "created") if isinstance(old.get(k), str) and len(old[k]) <= 64}
        stored = writer.finish(replace(manifest, seconds=None, **kept))
    except InputError as e:
        warn(f"{e}; recomputing instead of migrating {folder}")
        ShardWriter.discard_partial(path)
        return None
    warn(f"migrated {folder} (store format 1) to {path}; the old folder can be deleted")
    return stored
