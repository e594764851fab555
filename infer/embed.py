"""Embed a data set with an exported model into the embedding store (see :mod:`infer.store`)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort
import PIL
from tqdm import tqdm

from .datasets import Dataset
from ..common.errors import InputError
from ..common.contract import EMBEDDING_OUTPUT
from .preprocess import preprocess_batch
from .session import create_session, model_info, run_model
from .store import EmbeddingSet, check_model_id, read_set, set_path, write_set


@dataclass
class EmbedResult:
    """``set`` as stored; ``reused`` when an existing set matched; ``provider`` used (None if reused)."""

    set: EmbeddingSet
    reused: bool
    provider: Optional[str]
    seconds: float


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def versions() -> dict[str, Optional[str]]:
    """Versions of what computes an embedding here."""
    try:
        own = importlib.metadata.version("dpcompat")
    except importlib.metadata.PackageNotFoundError:
        own = None
    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
            "pillow": PIL.__version__, "dpcompat": own}


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
    if m["model"]["sha256"] != sha256 or m["dataset"]["fingerprint"] != dataset.fingerprint:
        warn(f"{path}: stored from another model file or other data; recomputing")
        return None
    return stored if skip_bad or not m["skipped"] else None


def embed_dataset(model: str | Path, dataset: Dataset, store: str | Path, model_id: Optional[str] = None,
                  provider: str = "auto", batch_size: int = 64, force: bool = False, skip_bad: bool = False,
                  progress: bool = False, warn: Callable[[str], None] = _warn) -> EmbedResult:
    """Embed every image of ``dataset`` with the ONNX file ``model`` into
    ``<store>/<model_id>/<dataset.key>/`` (``model_id`` defaults to the file stem).

    An existing set of the same model file (sha256) and data (fingerprint) is reused unless
    ``force``. An unreadable image is an error, or with ``skip_bad`` left out and listed in the
    manifest. NaN or Inf (or an all-zero vector) in an output is an error and nothing is stored.
    """
    model = Path(model)
    model_id = check_model_id(model_id or model.stem)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not model.is_file():
        raise InputError(f"{model}: no such ONNX file")
    sha256 = file_sha256(model)
    path = set_path(store, model_id, dataset.key)
    stored = None if force else _stored_match(path, sha256, dataset, skip_bad, warn)
    if stored is not None:
        return EmbedResult(stored, True, None, 0.0)
    start = time.perf_counter()
    session, used = create_session(model, provider, warn)
    info = model_info(session, model)
    n, dim = len(dataset), info.embedding_dim
    embeddings = np.empty((n, dim), np.float32)
    kept: list[int] = []
    skipped: list[str] = []

    def load(indices: range) -> tuple[np.ndarray, list[int]]:
        images, good = [], []
        for i in indices:
            try:
                images.append(dataset.image(i))
            except InputError:
                if not skip_bad:
                    raise
                skipped.append(dataset.item_name(i))
                continue
            good.append(i)
        return preprocess_batch(images, info.preprocessing), good

    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    with ThreadPoolExecutor(1) as pool, tqdm(total=n, desc=f"{model_id} {dataset.spec}", unit="img",
                                             disable=not progress, file=sys.stderr) as bar:
        pending = pool.submit(load, batches[0]) if batches else None
        for b in range(len(batches)):
            x, good = pending.result()  # the next batch decodes while this one runs
            pending = pool.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
            if good:
                out = run_model(session, x, (EMBEDDING_OUTPUT,))[EMBEDDING_OUTPUT]
                embeddings[len(kept):len(kept) + len(good)] = _normalised(out, good, dim, model, dataset)
                kept.extend(good)
            bar.update(len(batches[b]))
    if not kept:
        raise InputError(f"{dataset.spec}: no readable image ({len(skipped)} skipped); nothing stored")
    manifest = {
        "model": {"id": model_id, "file": str(model), "sha256": sha256, "task": info.task,
                  "checkpoint_sha256": info.checkpoint_sha256, "architecture": info.model,
                  "embedding_dim": dim, "input_size": info.input_size, "top_k": info.top_k, "pool": info.pool,
                  "selection": info.selection, "precision": info.precision, "gather": info.gather,
                  "query": info.query, "export_versions": info.versions},
        "dataset": {"spec": dataset.spec, "name": dataset.name, "split": dataset.split,
                    "fingerprint": dataset.fingerprint, "size": n},
        "skipped": skipped,
        "count": len(kept),
        "dim": dim,
        "preprocessing": asdict(info.preprocessing),
        "provider": used,
        "batch_size": batch_size,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 3),
    }
    stored = write_set(path, embeddings[:len(kept)], dataset.labels[kept], manifest)
    return EmbedResult(stored, False, used, manifest["seconds"])


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
