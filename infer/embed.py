"""Embed a data set with an exported model into the embedding store (see :mod:`infer.store`).

The loop is three swappable parts: a batch source (:func:`infer.workers.batch_source`: decode and
preprocess in worker processes), an engine that runs the model (:func:`_run_local` in this process, or
:func:`infer.ray_engine.embed_with_ray` on Ray actors), and :class:`~infer.shards.ShardWriter` (one
shard of ``shard_rows`` items at a time, so memory does not grow with the data set, and a killed run
resumes after its last complete shard). Batches never cross a shard boundary.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import onnxruntime as ort
import PIL
from tqdm import tqdm

from ..common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT
from ..common.digest import file_sha256
from ..common.errors import InputError
from ..common.faults import fault_point
from ..common.locks import locked
from .datasets import Dataset
from .device import TensorRTOptions
from .manifest import DEFAULT_SHARD_ROWS, STORE_FORMAT, DataRecord, Manifest, ModelRecord
from .metadata import ModelInfo, Preprocessing
from .migrate import migrate_legacy
from .session import create_session, model_info, run_model
from .shards import ShardWriter, tidy, writer_lock
from .ray_engine import RayOptions
from .store import EmbeddingSet, check_model_id, read_set, set_path
from .workers import Batch, Embedded, batch_source

@dataclass
class EmbedResult:
    """``set`` as stored; ``reused`` when an existing set matched; ``provider`` used (None if reused);
    ``resumed_rows`` taken over from an interrupted run."""

    set: EmbeddingSet
    reused: bool
    provider: Optional[str]
    seconds: float
    resumed_rows: int = 0


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


@dataclass(frozen=True)
class Engine:
    """How batches are decoded and run: decoding ``workers``, onnxruntime ``threads``, TensorRT options,
    or ``ray`` (the model then runs in Ray actors)."""

    workers: Optional[int] = None
    threads: Optional[int] = None
    trt: Optional[TensorRTOptions] = None
    ray: Optional[RayOptions] = None


def _run_local(session: ort.InferenceSession, batches: Iterator[Batch], output: str) -> Iterator[Embedded]:
    """The local engine: each batch through the model in this process."""
    for b in batches:
        out = run_model(session, b.images, (output, PROMPT_INDEX_OUTPUT)) if len(b.rows) else {}
        yield Embedded(b.start, b.rows, out.get(output), out.get(PROMPT_INDEX_OUTPUT), b.skipped)


def _outputs(model: Path, session: ort.InferenceSession, info: ModelInfo, dataset: Dataset, first: int, *,
             engine: Engine, provider: str, batch_size: int, shard_rows: int, skip_bad: bool,
             output: str) -> Iterator[Embedded]:
    """Model outputs of rows ``first`` onwards, in order, in batches that never cross a shard boundary."""
    if engine.ray is None:
        batches = batch_source(dataset, info.preprocessing, batch_size=batch_size, workers=engine.workers,
                               skip_bad=skip_bad, start=first, align=shard_rows)
        return _run_local(session, batches, output)
    from .ray_engine import embed_with_ray

    return embed_with_ray(model, dataset, options=engine.ray, provider=provider, batch_size=batch_size,
                          skip_bad=skip_bad, threads=engine.threads, trt=engine.trt, start=first, align=shard_rows)


def shards_of(outputs: Iterator[Embedded], dataset: Dataset, first: int, *, shard_rows: int, dim: int,
              model: Path, output: str, on_batch: Callable[[int], object] = lambda n: None,
              on_provider: Callable[[str], object] = lambda p: None,
              ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    """Complete shards from an output stream: (embeddings float32 [kept, D] L2-normalised, labels int64
    [kept], skipped item names) per ``shard_rows`` rows from row ``first``; the last may be shorter."""
    n = len(dataset)
    end = min(first + shard_rows, n)
    out, kept, skipped = np.empty((end - first, dim), np.float32), [], []
    for batch in outputs:
        if len(batch.rows):
            good = batch.rows.tolist()
            out[len(kept):len(kept) + len(good)] = _normalised(batch.embeddings, good, dim, model, dataset, output)
            kept.extend(good)
        skipped.extend(batch.skipped)
        if batch.provider:
            on_provider(batch.provider)
        on_batch(batch.size)
        fault_point("embed.batch")
        if batch.start + batch.size == end:
            yield out[:len(kept)], dataset.labels[kept], tuple(skipped)
            first, end = end, min(end + shard_rows, n)
            out, kept, skipped = np.empty((end - first, dim), np.float32), [], []


def _normalised(out: np.ndarray, items: list[int], dim: int, model: Path, dataset: Dataset,
                output: str = EMBEDDING_OUTPUT) -> np.ndarray:
    """L2-normalised rows of a batch's ``output``, or InputError naming the first bad item."""
    if out.shape != (len(items), dim):
        raise InputError(f"{model}: '{output}' output is {out.shape} for a batch of {len(items)}, "
                         f"metadata says dimension {dim}")
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        what = "zeros" if np.isfinite(out[bad[0]]).all() else "NaN or Inf"
        raise InputError(f"{model}: '{output}' is {what} for {dataset.item_name(items[bad[0]])}; "
                         "nothing stored")
    return (out / norms[:, None]).astype(np.float32)


def _stored_match(path: Path, sha256: str, dataset: Dataset, skip_bad: bool,
                  warn: Callable[[str], None], output: str = EMBEDDING_OUTPUT) -> Optional[EmbeddingSet]:
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
    if ((m.model.sha256, m.model.output, m.dataset.location, m.dataset.fingerprint)
            != (sha256, output, dataset.location, dataset.fingerprint)):
        warn(f"{path}: stored from another model file, output or other data; recomputing")
        return None
    if not np.array_equal(stored.labels, dataset.labels_without(m.skipped)):
        warn(f"{path}: its labels are not the data's; recomputing")
        return None
    return stored if skip_bad or not m.skipped else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _manifest(model_id: str, model: Path, sha256: str, info: ModelInfo, dataset: Dataset, provider: str,
              batch_size: int, output: str) -> Manifest:
    """The manifest of a set computed now (its shards are filled in by the writer)."""
    record = ModelRecord(id=model_id, file=str(model), sha256=sha256, task=info.task,
                         checkpoint_sha256=info.checkpoint_sha256, architecture=info.model,
                         embedding_dim=info.embedding_dim, input_size=info.input_size, top_k=info.top_k,
                         pool=info.pool, selection=info.selection, precision=info.precision,
                         export_versions=info.versions, output=output, gather=info.gather, query=info.query)
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
             warn: Callable[[str], None], output: str, engine: Engine) -> EmbedResult:
    """Embed ``dataset`` shard by shard into ``path``, resuming an interrupted run of the same identity
    (or, with ``migrate``, taking over a store format 1 set of this model and data)."""
    start = time.perf_counter()
    local = engine.ray is None  # with Ray, this session only reads the metadata
    session, used = create_session(model, provider if local else "cpu", warn, threads=engine.threads if local else 1,
                                   trt=engine.trt if local else None)
    info = model_info(session, model)
    manifest = _manifest(model_id, model, sha256, info, dataset, used, batch_size, output)
    if migrate and output == EMBEDDING_OUTPUT:
        migrated = migrate_legacy(store, path, sha256, dataset, manifest, skip_bad=skip_bad, shard_rows=shard_rows,
                                  warn=warn)
        if migrated is not None:
            return EmbedResult(migrated, True, None, 0.0)
    identity = {"format": STORE_FORMAT, "model_sha256": sha256, "output": output, "location": dataset.location,
                "fingerprint": dataset.fingerprint, "batch_size": batch_size, "skip_bad": skip_bad}
    writer = ShardWriter(path, identity, dim=info.embedding_dim, shard_rows=shard_rows, warn=warn)
    resumed, n = writer.rows, len(dataset)
    first = min(len(writer.done) * shard_rows, n)
    providers = {used}
    with tqdm(total=n, initial=first, desc=f"{model_id} {dataset.spec}", unit="img",
              disable=not progress, file=sys.stderr) as bar:
        outputs = _outputs(model, session, info, dataset, first, engine=engine, provider=provider,
                           batch_size=batch_size, shard_rows=shard_rows, skip_bad=skip_bad, output=output)
        for shard in shards_of(outputs, dataset, first, shard_rows=shard_rows, dim=info.embedding_dim, model=model,
                               output=output, on_batch=bar.update, on_provider=providers.add):
            writer.write(*shard)
    if not local:  # what the actors ran on
        used = sorted(providers - {used} or providers)[0]
    seconds = round(time.perf_counter() - start, 3)
    stored = writer.finish(replace(manifest, provider=used, seconds=seconds, created=_now()))
    return EmbedResult(stored, False, used, seconds, resumed)


def embed_dataset(model: str | Path, dataset: Dataset, store: str | Path, *, model_id: Optional[str] = None,
                  provider: str = "auto", batch_size: int = 64, shard_rows: int = DEFAULT_SHARD_ROWS,
                  force: bool = False, skip_bad: bool = False, progress: bool = False,
                  warn: Callable[[str], None] = _warn, output: str = EMBEDDING_OUTPUT,
                  engine: Engine = Engine()) -> EmbedResult:
    """Embed every image of ``dataset`` with the ONNX file ``model`` into
    ``<store>/<model_id>/<dataset.key>/`` (``model_id`` defaults to the file stem).

    An existing set of the same model file (sha256), output and data (location and fingerprint) is
    reused unless ``force``; one that fails verification is recomputed. An unreadable image is an
    error, or with ``skip_bad`` left out and listed in the manifest. NaN or Inf (or an all-zero
    vector) in an output is an error and nothing is stored. Writers of one set run one at a time (a
    lock file); a killed run leaves its complete shards, and the next run of the same command resumes
    after them. ``output`` names the graph output stored (``embedding``, or another [N, D] output such
    as a bundle's ``query``); ``engine`` says how batches are decoded and run (workers, threads, Ray).
    """
    model = Path(model)
    model_id = check_model_id(model_id or model.stem)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not 1 <= shard_rows <= 2**31:
        raise InputError(f"--shard-rows {shard_rows}: must be from 1 to {2**31}")
    if engine.ray is not None and output != EMBEDDING_OUTPUT:
        raise InputError(f"--engine ray stores the '{EMBEDDING_OUTPUT}' output only, not '{output}'")
    if not model.is_file():
        raise InputError(f"{model}: no such ONNX file")
    sha256 = file_sha256(model)
    path = set_path(store, model_id, dataset.key)
    _prepare(store, path)
    with locked(writer_lock(path), waiting=lambda: warn(f"{path}: another embed is writing this set; waiting")):
        tidy(path)
        stored = None if force else _stored_match(path, sha256, dataset, skip_bad, warn, output)
        if stored is not None:
            ShardWriter.discard_partial(path)
            return EmbedResult(stored, True, None, 0.0)
        return _compute(model, model_id, sha256, dataset, store, path, provider=provider, batch_size=batch_size,
                        shard_rows=shard_rows, skip_bad=skip_bad, migrate=not force and not path.exists(),
                        progress=progress, warn=warn, output=output, engine=engine)
