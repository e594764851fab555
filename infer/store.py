"""The embedding store: ``<store>/<model-id>/<dataset-key>/`` holding

  ``embeddings.npy``  float32 [N, D], L2-normalised rows
  ``labels.npy``      int64 [N]
  ``manifest.json``   model (id, sha256, task, ...), dataset (spec, fingerprint, size), skipped items,
                      count, dim, preprocessing, provider, versions, time

Sets are written under a temporary name and renamed when complete; reading validates everything a
comparison relies on, so a truncated or hand-edited set is refused with the file named.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.atomic import atomic_dir
from ..common.errors import InputError

STORE_FORMAT = "1"
EMBEDDINGS_FILE = "embeddings.npy"
LABELS_FILE = "labels.npy"
MANIFEST_FILE = "manifest.json"
_NORM_TOLERANCE = 1e-3
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class EmbeddingSet:
    """One stored set: ``embeddings`` float32 [N, D], ``labels`` int64 [N], its ``manifest`` and ``path``."""

    path: Path
    embeddings: np.ndarray
    labels: np.ndarray
    manifest: dict

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def data(self) -> tuple[str, tuple[str, ...]]:
        """What identifies the rows: the data set's fingerprint and the items left out of it."""
        return self.manifest["dataset"]["fingerprint"], tuple(self.manifest["skipped"])


def check_model_id(model_id: str) -> str:
    """``model_id`` if it can name a store folder; InputError otherwise."""
    if not _MODEL_ID.match(model_id):
        raise InputError(f"model id {model_id!r}: use letters, digits, '.', '_' and '-' (a folder name)")
    return model_id


def set_path(store: str | Path, model_id: str, dataset_key: str) -> Path:
    """Where the set of ``model_id`` on the data set ``dataset_key`` lives."""
    return Path(store) / check_model_id(model_id) / dataset_key


def read_manifest(path: str | Path) -> dict:
    """The manifest of the set in folder ``path``, checked for the fields the store relies on."""
    file = Path(path) / MANIFEST_FILE
    if not Path(path).is_dir():
        raise InputError(f"{path}: no stored embeddings there")
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(f"{file}: missing (an incomplete embedding set)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: not readable JSON ({e})") from None
    try:
        version = manifest["format_version"]
        fields = [manifest["model"]["id"], manifest["model"]["sha256"], manifest["dataset"]["spec"],
                  manifest["dataset"]["fingerprint"], manifest["count"], manifest["dim"], manifest["skipped"],
                  manifest["preprocessing"]]
    except (KeyError, TypeError) as e:
        raise InputError(f"{file}: malformed manifest (no {e})") from None
    if version != STORE_FORMAT:
        raise InputError(f"{file}: store format {version}, this toolkit reads {STORE_FORMAT}")
    if [type(f) for f in fields] != [str, str, str, str, int, int, list, dict]:
        raise InputError(f"{file}: malformed manifest (a field of the wrong type)")
    return manifest


def _load(file: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{file}: missing (an incomplete embedding set)") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{file}: not a readable .npy array ({e})") from None


def read_set(path: str | Path, mmap: bool = True) -> EmbeddingSet:
    """Load and validate the set in folder ``path`` (arrays memory-mapped unless ``mmap`` is False).

    Refuses (InputError naming the file) wrong dtypes or shapes, counts that disagree between the
    embeddings, the labels and the manifest, a dimension other than the manifest's, and rows that
    are not finite unit vectors.
    """
    path = Path(path)
    manifest = read_manifest(path)
    embeddings = _load(path / EMBEDDINGS_FILE, mmap)
    labels = _load(path / LABELS_FILE, mmap)
    if embeddings.dtype != np.float32 or embeddings.ndim != 2:
        raise InputError(f"{path / EMBEDDINGS_FILE}: {embeddings.dtype} {embeddings.shape}, expected float32 [N, D]")
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise InputError(f"{path / LABELS_FILE}: {labels.dtype} {labels.shape}, expected int64 [N]")
    if not len(embeddings) == len(labels) == int(manifest["count"]):
        raise InputError(f"{path}: {len(embeddings)} embeddings, {len(labels)} labels, manifest count "
                         f"{manifest['count']}: they must agree")
    if embeddings.shape[1] != int(manifest["dim"]):
        raise InputError(f"{path / EMBEDDINGS_FILE}: dimension {embeddings.shape[1]}, manifest says {manifest['dim']}")
    norms = np.linalg.norm(embeddings, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) <= _NORM_TOLERANCE))
    if bad.size:
        raise InputError(f"{path / EMBEDDINGS_FILE}: row {bad[0]} is not a finite unit vector "
                         f"(norm {norms[bad[0]]:.4g}; {bad.size} such rows)")
    return EmbeddingSet(path, embeddings, labels, manifest)


def write_set(path: str | Path, embeddings: np.ndarray, labels: np.ndarray, manifest: dict) -> EmbeddingSet:
    """Write a set to folder ``path`` atomically (replacing any previous set there) and return it."""
    text = json.dumps({"format_version": STORE_FORMAT, **manifest}, indent=2, sort_keys=True) + "\n"
    with atomic_dir(path) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, np.asarray(embeddings, np.float32))
        np.save(tmp / LABELS_FILE, np.asarray(labels, np.int64))
        (tmp / MANIFEST_FILE).write_text(text)
    return EmbeddingSet(Path(path), embeddings, labels, json.loads(text))  # as a reader will see it


def check_comparable(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet]) -> None:
    """Refuse sets that cannot be compared: every set must have the same dimension and
    preprocessing, and the sets of each role the same data (fingerprint, skipped items, labels)."""
    every = [*query, *gallery]
    first = every[0]
    for s in every[1:]:
        if s.dim != first.dim:
            raise InputError(f"{s.path}: dimension {s.dim}, but {first.path} has {first.dim}")
        if s.manifest["preprocessing"] != first.manifest["preprocessing"]:
            raise InputError(f"{s.path}: preprocessing {s.manifest['preprocessing']} differs from "
                             f"{first.path}'s {first.manifest['preprocessing']}")
    for role, sets in (("query", query), ("gallery", gallery)):
        for s in sets[1:]:
            if s.data != sets[0].data or not np.array_equal(s.labels, sets[0].labels):
                raise InputError(f"{s.path}: other {role} data than {sets[0].path} (fingerprint "
                                 f"{s.data[0][:12]} vs {sets[0].data[0][:12]}, {s.count} vs {sets[0].count} items, "
                                 f"{len(s.data[1])} vs {len(sets[0].data[1])} skipped)")
