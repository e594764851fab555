"""Applying an adapter to stored embeddings: a gallery adapter writes the transformed gallery as a set
of its own (FCT-style: one matrix product per stored vector instead of one model pass per image), and
either kind maps a set in memory for an evaluation.

A transformed set lives in the store like any other, ``<store>/<id>/<data-key>/`` (``id`` by default
``<source>-to-<target>``), and its manifest says what it is: ``transform`` names the set it was
made from and that set's model; ``model.adapter`` is the adapter's record, and ``model.sha256`` the
adapter's digest, since no model file computed these vectors (see :mod:`infer.store.manifest`).
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...common.errors import InputError
from ...common.locks import locked
from ...infer.data.base import location_key
from ...infer.embed import versions
from ...infer.store.manifest import Manifest, TransformRecord
from ...infer.store.sets import EmbeddingSet, check_model_id, read_set, set_path
from ...infer.store.shards import ShardWriter, tidy, writer_lock
from .adapter import Adapter


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def check_source(adapter: Adapter, stored: EmbeddingSet) -> None:
    """InputError unless ``stored`` holds embeddings of the adapter's source model, computed by it."""
    m = stored.manifest.model
    if stored.manifest.transformed or m.adapter is not None:
        raise InputError(f"{stored.path}: already mapped into {m.adapter.target_id}'s space by an adapter")
    if (m.sha256, m.output) != (adapter.source.sha256, adapter.source.output) or stored.dim != adapter.dim_in:
        raise InputError(f"{stored.path}: embeddings of {m.id} (sha256 {m.sha256[:12]}, '{m.output}'), but the "
                         f"adapter maps {adapter.source.id}'s (sha256 {adapter.source.sha256[:12]}, "
                         f"'{adapter.source.output}')")


def adapted_embeddings(adapter: Adapter, stored: EmbeddingSet, *, block_rows: int = 65_536) -> np.ndarray:
    """float32 [N, D_out] unit rows: every row of ``stored`` (the source model's set) mapped, in memory."""
    check_source(adapter, stored)
    out = np.empty((stored.count, adapter.dim_out), np.float32)
    start = 0
    for block in stored.row_blocks(block_rows):
        out[start:start + len(block.embeddings)] = adapter.apply(block.embeddings, where=str(stored.path), first_row=start)
        start += len(block.embeddings)
    return out


def transformed_manifest(adapter: Adapter, stored: EmbeddingSet, model_id: str) -> Manifest:
    """The manifest of ``stored`` transformed by ``adapter`` under ``model_id`` (storage filled in later)."""
    model = replace(stored.manifest.model, id=model_id, sha256=adapter.digest, file=None,
                    embedding_dim=adapter.dim_out, adapter=adapter.record)
    return replace(stored.manifest, model=model, transform=TransformRecord(str(stored.path), stored.manifest.model),
                   provider=None, batch_size=None, versions=versions(),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=None)


def _existing(path: Path, adapter: Adapter, stored: EmbeddingSet) -> Optional[EmbeddingSet]:
    """The set at ``path`` if it is this adapter's transform of ``stored``; None if there is none or a
    stale transformed one (recomputed); InputError if it is a model's embeddings."""
    if not path.is_dir():
        return None
    try:
        found = read_set(path)
    except InputError:
        return None
    m = found.manifest
    if not m.transformed:
        raise InputError(f"{path}: holds embeddings of a model, not a transformed gallery; choose another id")
    same = (m.model.sha256 == adapter.digest and m.transform.source_model == stored.manifest.model
            and (m.dataset, m.skipped, m.count) == (stored.manifest.dataset, stored.manifest.skipped, stored.count))
    return found if same else None


def apply_to_set(adapter: Adapter, stored: EmbeddingSet, store: str | Path, *, model_id: Optional[str] = None,
                 shard_rows: Optional[int] = None, warn: Callable[[str], None] = _warn) -> EmbeddingSet:
    """Write ``stored`` (the source model's gallery) transformed by the gallery ``adapter`` as the set
    ``<store>/<model_id>/<data-key>/`` (``model_id`` default: ``adapter.default_id``), shard by shard
    (``shard_rows`` rows each, default the source set's), so memory holds one shard whatever the
    gallery's size. A killed run resumes after its last complete shard; an existing transform of the
    same set by the same adapter is returned as it is. InputError for a query adapter, a set of
    another model, or an id whose set is a model's embeddings."""
    if adapter.direction != "gallery":
        raise InputError(f"{stored.path}: a query adapter maps queries (export it into the query model); only a "
                         "gallery adapter transforms a stored gallery")
    check_source(adapter, stored)
    model_id = check_model_id(model_id or adapter.default_id)
    path = set_path(store, model_id, location_key(stored.manifest.dataset.location))
    if path.resolve() == stored.path.resolve():
        raise InputError(f"{path}: the set being transformed; choose another id")
    shard_rows = shard_rows or stored.manifest.shard_rows
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--store {store}: cannot write {path.parent} ({e.strerror or e})") from None
    with locked(writer_lock(path)):
        tidy(path)
        found = _existing(path, adapter, stored)
        if found is not None:
            ShardWriter.discard_partial(path)
            return found
        if path.exists():
            warn(f"{path}: replacing the set there (a transform by another adapter or of another set, or unreadable)")
        start = time.perf_counter()
        sources = hashlib.sha256("".join(s.embeddings_sha256 for s in stored.manifest.shards).encode()).hexdigest()
        writer = ShardWriter(path, {"adapter": adapter.digest, "source": sources}, dim=adapter.dim_out,
                             shard_rows=shard_rows, warn=warn)
        for index, block in enumerate(stored.row_blocks(shard_rows)):
            if index < len(writer.done):
                continue
            row = index * shard_rows
            writer.write(adapter.apply(block.embeddings, where=str(stored.path), first_row=row), block.labels,
                         stored.manifest.skipped if index == 0 else ())
        manifest = transformed_manifest(adapter, stored, model_id)
        return writer.finish(replace(manifest, seconds=round(time.perf_counter() - start, 3)))
