"""Embed a data set with an exported model into the embedding store (see :mod:`infer.store`).

The loop is three swappable parts: :func:`iter_batches` (decode and preprocess), the model
(:func:`embed_items` runs it and checks every output) and :class:`~infer.shards.ShardWriter` (one
shard of ``shard_rows`` items at a time, so memory does not grow with the data set, and a killed run
resumes after its last complete shard).
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import onnxruntime as ort
import PIL
from tqdm import tqdm

from ..common.contract import EMBEDDING_OUTPUT
from ..common.digest import file_sha256
from ..common.errors import InputError
from ..common.faults import fault_point
from ..common.locks import locked
from .datasets import Dataset
from .manifest import DEFAULT_SHARD_ROWS, STORE_FORMAT, DataRecord, Manifest, ModelRecord
from .metadata import ModelInfo, Preprocessing
from .migrate import migrate_legacy
from .preprocess import preprocess_batch
from .session import create_session, model_info, run_model
from .shards import ShardWriter, tidy, writer_lock
from .store import EmbeddingSet, check_model_id, read_set, set_path

@dataclass
class EmbedResult:
    """``set`` as stored; ``reused`` when an existing set matched; ``provider`` used (None if reused);
    ``resumed_rows`` taken over from an interrupted run."""

    set: EmbeddingSet
    reused: bool
    provider: Optional[str]
    seconds: float
    resumed_rows: int = 0


@dataclass(frozen=True)
class Batch:
    """Consecutive items: those decoded (``indices``, ``images`` float32 [len(indices), 3, S, S]) and
    the names of those left out as unreadable (``skipped``)."""

    indices: list[int]
    images: np.ndarray
    skipped: tuple[str, ...]


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def versions() -> dict[str, Optional[str]]:
    """Versions of what computes an embedding here."""
    try:
        own = importlib.metadata.version("dpcompat")
    except importlib.metadata.PackageNotFoundError:
        own = None
    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
            "pillow": PIL.__version__, "dpcompat": own}


def iter_batches(dataset: Dataset, items: range, batch_size: int, preprocessing: Preprocessing, *,
                 skip_bad: bool = False) -> Iterator[Batch]:
    """Batches of ``batch_size`` consecutive ``items``, decoded and preprocessed; the next batch is
    decoded in a thread while the caller works on this one. An unreadable image is an InputError, or
    with ``skip_bad`` left out and named in its batch's ``skipped``."""
    chunks = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]

    def load(chunk: range) -> Batch:
        images, good, skipped = [], [], []
        for i in chunk:
            try:
                images.append(dataset.image(i))
            except InputError:
                if not skip_bad:
                    raise
                skipped.append(dataset.item_name(i))
                continue
            good.append(i)
        return Batch(good, preprocess_batch(images, preprocessing), tuple(skipped))

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for b in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[b + 1]) if b + 1 < len(chunks) else None
            yield batch


def embed_items(session: ort.InferenceSession, info: ModelInfo, dataset: Dataset, items: range, *,
                batch_size: int, skip_bad: bool, model: Path,
                on_batch: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Embeddings float32 [kept, D] (L2-normalised), labels int64 [kept] and skipped item names of
    ``items``; ``on_batch(n)`` after each batch of n items."""
    dim = info.embedding_dim
    out = np.empty((len(items), dim), np.float32)
    kept: list[int] = []
    skipped: list[str] = []
    for batch in iter_batches(dataset, items, batch_size, info.preprocessing, skip_bad=skip_bad):
        if batch.indices:
            emb = run_model(session, batch.images, (EMBEDDING_OUTPUT,))[EMBEDDING_OUTPUT]
            out[len(kept):len(kept) + len(batch.indices)] = _normalised(emb, batch.indices, dim, model, dataset)
            kept.extend(batch.indices)
        skipped.extend(batch.skipped)
        on_batch(len(batch.indices) + len(batch.skipped))
        fault_point("embed.batch")
    return out[:len(kept)], dataset.labels[kept], tuple(skipped)


def _normalised(out: np.ndarray, items: list[int], dim: int, model: Path, dataset: Dataset) -> np.ndarray:
    """L2-normalised rows of a batch's ``embedding`` output, or InputError naming the first bad item."""
    if out.shape != (len(items), dim):
        raise InputError(f"{model}: '{EMBEDDING_OUTPUT}' output is {out.shape} for a batch of {len(items)}, "
                         f"metadata says dimension {dim}")
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        what = "zeros" if np.isfinite(out[bad[0]]).all() else "NaN or Inf"
        raise InputError(f"{model}: '{EMBEDDING_OUTPUT}' is {what} for {dataset.item_name(items[bad[0]])}; "
                         "nothing stored")
    return (out / norms[:, None]).astype(np.float32)


def _stored_match(path: Path, sha256: str, dataset: Dataset, skip_bad: bool,
                  warn: Callable[[str], None]) -> Optional[EmbeddingSet]:
    """The valid set at ``path`` if it was made from this exact model file and data.

    A set made with ``--skip-bad`` (some items left out) matches only when ``skip_bad`` is set too.
    """
    if not path.exists():
        return None
    try:
        stored = read_set(path)
    except InputError as e:
        warn(f"{e}; recomputing")
        return None
    m = stored.manifest
    if (m.model.sha256, m.dataset.location, m.dataset.fingerprint) != (sha256, dataset.location, dataset.fingerprint):
        warn(f"{path}: stored from another model file or other data; recomputing")
        return None
    if not np.array_equal(stored.labels, dataset.labels_without(m.skipped)):
        warn(f"{path}: its labels are not the data's; recomputing")
        return None
    return stored if skip_bad or not m.skipped else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _manifest(model_id: str, model: Path, sha256: str, info: ModelInfo, dataset: Dataset, provider: str,
              batch_size: int) -> Manifest:
    """The manifest of a set computed now (its shards are filled in by the writer)."""
    record = ModelRecord(id=model_id, file=str(model), sha256=sha256, task=info.task,
                         checkpoint_sha256=info.checkpoint_sha256, architecture=info.model,
                         embedding_dim=info.embedding_dim, input_size=info.input_size, top_k=info.top_k,
                         pool=info.pool, selection=info.selection, precision=info.precision,
                         export_versions=info.versions)
    data = DataRecord(spec=dataset.spec, location=dataset.location, name=dataset.name, split=dataset.split,
                      fingerprint=dataset.fingerprint, size=len(dataset))
    return Manifest(model=record, dataset=data, preprocessing=asdict(info.preprocessing),
                    provenance=dict(info.provenance), provider=provider, batch_size=batch_size, versions=versions(),
                    created=_now())


def _prepare(store: str | Path, path: Path) -> None:
    """Create the set's model folder, or InputError naming ``--store`` when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(writer_lock(path), "a"):
            pass
    except OSError as e:
        raise InputError(f"--store {store}: cannot write {path.parent} ({e.strerror or e})") from None


def _compute(model: Path, model_id: str, sha256: str, dataset: Dataset, store: str | Path, path: Path, *,
             provider: str, batch_size: int, shard_rows: int, skip_bad: bool, migrate: bool, progress: bool,
             warn: Callable[[str], None]) -> EmbedResult:
    """Embed ``dataset`` shard by shard into ``path``, resuming an interrupted run of the same identity
    (or, with ``migrate``, taking over a store format 1 set of this model and data)."""
    start = time.perf_counter()
    session, used = create_session(model, provider, warn)
    info = model_info(session, model)
    manifest = _manifest(model_id, model, sha256, info, dataset, used, batch_size)
    if migrate:
        migrated = migrate_legacy(store, path, sha256, dataset, manifest, skip_bad=skip_bad, shard_rows=shard_rows,
                                  warn=warn)
        if migrated is not None:
            return EmbedResult(migrated, True, None, 0.0)
    identity = {"format": STORE_FORMAT, "model_sha256": sha256, "location": dataset.location,
                "fingerprint": dataset.fingerprint, "batch_size": batch_size, "skip_bad": skip_bad}
    writer = ShardWriter(path, identity, dim=info.embedding_dim, shard_rows=shard_rows, warn=warn)
    resumed, n = writer.rows, len(dataset)
    first = len(writer.done) * shard_rows
    with tqdm(total=n, initial=min(first, n), desc=f"{model_id} {dataset.spec}", unit="img",
              disable=not progress, file=sys.stderr) as bar:
        for begin in range(first, n, shard_rows):
            items = range(begin, min(begin + shard_rows, n))
            writer.write(*embed_items(session, info, dataset, items, batch_size=batch_size, skip_bad=skip_bad,
                                      model=model, on_batch=bar.update))
    seconds = round(time.perf_counter() - start, 3)
    stored = writer.finish(replace(manifest, seconds=seconds, created=_now()))
    return EmbedResult(stored, False, used, seconds, resumed)


def embed_dataset(model: str | Path, dataset: Dataset, store: str | Path, *, model_id: Optional[str] = None,
                  provider: str = "auto", batch_size: int = 64, shard_rows: int = DEFAULT_SHARD_ROWS,
                  force: bool = False, skip_bad: bool = False, progress: bool = False,
                  warn: Callable[[str], None] = _warn) -> EmbedResult:
    """Embed every image of ``dataset`` with the ONNX file ``model`` into
    ``<store>/<model_id>/<dataset.key>/`` (``model_id`` defaults to the file stem).

    An existing set of the same model file (sha256) and data (location and fingerprint) is reused
    unless ``force``; one that fails verification is recomputed. An unreadable image is an error,
    or with ``skip_bad`` left out and listed in the manifest. NaN or Inf (or an all-zero vector) in
    an output is an error and nothing is stored. Writers of one set run one at a time (a lock file);
    a killed run leaves its complete shards, and the next run of the same command resumes after them.
    """
    model = Path(model)
    model_id = check_model_id(model_id or model.stem)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not 1 <= shard_rows <= 2**31:
        raise InputError(f"--shard-rows {shard_rows}: must be from 1 to {2**31}")
    if not model.is_file():
        raise InputError(f"{model}: no such ONNX file")
    sha256 = file_sha256(model)
    path = set_path(store, model_id, dataset.key)
    _prepare(store, path)
    with locked(writer_lock(path), waiting=lambda: warn(f"{path}: another embed is writing this set; waiting")):
        tidy(path)
        stored = None if force else _stored_match(path, sha256, dataset, skip_bad, warn)
        if stored is not None:
            ShardWriter.discard_partial(path)
            return EmbedResult(stored, True, None, 0.0)
        return _compute(model, model_id, sha256, dataset, store, path, provider=provider, batch_size=batch_size,
                        shard_rows=shard_rows, skip_bad=skip_bad, migrate=not force and not path.exists(),
                        progress=progress, warn=warn)
