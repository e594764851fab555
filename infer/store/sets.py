"""The embedding store: ``<store>/<model-id>/<data-key>/`` holds one set, the embeddings of one data
set by one export, as fixed-size shards:

  ``embeddings-00000.npy`` ...  float32 [rows, D], L2-normalised rows
  ``labels-00000.npy`` ...      int64 [rows]; none in a set of unlabelled data (``labelled: false``)
  ``manifest.json``             :class:`~infer.store.manifest.Manifest`: the model, the data (spec, resolved
                                location, fingerprint), every shard's rows and sha256 digests, ...

``<data-key>`` comes from the data's resolved location (:func:`infer.data.base.location_key`). A set
appears under its name only complete, by a folder swap under the lock ``.<data-key>.lock``; readers
hold that lock shared while they open a set, so they see one whole set, never a mix. Reading checks
every digest and every row, so an edited, truncated or replaced file is refused with the file named.
Sets being written live in ``.<data-key>.partial`` (see :mod:`infer.store.shards`).
"""
from __future__ import annotations

import math
import re
from functools import cached_property
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ...common.atomic import recover_swap, swap_lock
from ...common.digest import file_sha256
from ...common.errors import InputError
from ...common.locks import locked
from .manifest import MAX_MANIFEST_BYTES, Manifest, Shard, shard_files

MANIFEST_FILE = "manifest.json"
_NORM_TOLERANCE = 1e-3
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class Block(NamedTuple):
    """One shard of a set: ``embeddings`` float32 [rows, D] (memory-mapped), ``labels`` int64 [rows] or
    None (unlabelled data)."""

    embeddings: np.ndarray
    labels: Optional[np.ndarray]


class EmbeddingSet:
    """One stored set, opened and verified: its ``path``, ``manifest`` and memory-mapped shards.

    ``blocks()`` streams the shards; ``embeddings`` and ``labels`` give whole arrays (the mapped file
    itself for a one-shard set, else a copy in memory: meant for sets that fit). ``labels`` is None
    when the set is not ``labelled``."""

    def __init__(self, path: Path, manifest: Manifest, shards: Sequence[Block]):
        self.path, self.manifest, self._shards = Path(path), manifest, list(shards)

    def blocks(self) -> Iterator[Block]:
        """The shards in row order, memory-mapped."""
        return iter(self._shards)

    def row_blocks(self, rows: int) -> Iterator[Block]:
        """Consecutive blocks of ``rows`` rows (the last may be shorter) whatever the shard sizes: a copy
        where a block spans shards, else a view of the mapped shard. Memory: one block."""
        pending: list[Block] = []
        have = 0
        for shard in self._shards:
            at = 0
            while at < len(shard.embeddings):
                take = min(rows - have, len(shard.embeddings) - at)
                labels = None if shard.labels is None else shard.labels[at:at + take]
                pending.append(Block(shard.embeddings[at:at + take], labels))
                have, at = have + take, at + take
                if have == rows:
                    yield _joined(pending)
                    pending, have = [], 0
        if pending:
            yield _joined(pending)

    @cached_property
    def embeddings(self) -> np.ndarray:
        return self._shards[0].embeddings if len(self._shards) == 1 else np.concatenate([b.embeddings for b in self._shards])

    @cached_property
    def labels(self) -> Optional[np.ndarray]:
        if not self.labelled:
            return None
        return np.concatenate([np.asarray(b.labels) for b in self._shards])

    @property
    def labelled(self) -> bool:
        return self.manifest.labelled

    @property
    def model_id(self) -> str:
        return self.manifest.model.id

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def data(self) -> tuple[str, tuple[str, ...]]:
        """What identifies the rows: the data set's fingerprint and the items left out of it."""
        return self.manifest.dataset.fingerprint, self.manifest.skipped

    def same_labels(self, other: "EmbeddingSet") -> bool:
        """Whether both sets have the same labels row for row, or both none."""
        return self.labelled == other.labelled and (not self.labelled or np.array_equal(self.labels, other.labels))

    def same_items(self, other: "EmbeddingSet") -> bool:
        """Whether the rows of both sets are the same items (data and items left out) with the same labels."""
        return self.data == other.data and self.same_labels(other)


def _joined(parts: Sequence[Block]) -> Block:
    if len(parts) == 1:
        return parts[0]
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    return Block(np.concatenate([p.embeddings for p in parts]), labels)


def check_model_id(model_id: str) -> str:
    """``model_id`` if it can name a store folder; InputError otherwise."""
    if not _MODEL_ID.match(model_id):
        raise InputError(f"model id {model_id!r}: use letters, digits, '.', '_' and '-' (a folder name)")
    return model_id


def set_path(store: str | Path, model_id: str, dataset_key: str) -> Path:
    """Where the set of ``model_id`` on the data set with store key ``dataset_key`` lives."""
    return Path(store) / check_model_id(model_id) / dataset_key


def read_manifest(path: str | Path) -> Manifest:
    """The validated manifest of the set in folder ``path``."""
    path = Path(path)
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise InputError(f"{path}: no stored embeddings there")
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{file}: larger than {MAX_MANIFEST_BYTES} bytes, not a manifest")
        text = file.read_text()
    except FileNotFoundError:
        raise InputError(f"{file}: missing (an incomplete embedding set)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: not readable ({e})") from None
    return Manifest.from_json(text, str(file))


def _load(file: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{file}: missing (an incomplete embedding set)") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{file}: not a readable .npy array ({e})") from None


def check_rows(embeddings: np.ndarray, file: Path, first_row: int = 0) -> None:
    """InputError naming ``file`` unless every row of ``embeddings`` [N, D] is a finite unit vector."""
    norms = np.linalg.norm(embeddings, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) <= _NORM_TOLERANCE))
    if bad.size:
        raise InputError(f"{file}: row {first_row + bad[0]} is not a finite unit vector "
                         f"(norm {norms[bad[0]]:.4g}; {bad.size} such rows)")


def _declared(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) that the .npy ``file`` declares, read without its data."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            return shape, dtype, f.tell()
    except FileNotFoundError:
        raise InputError(f"{file}: missing (an incomplete embedding set)") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{file}: not a readable .npy array ({str(e)[:200]})") from None


def load_checked(file: Path, dtype: type, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    """The array in ``file``, refused unless its header declares ``dtype`` ``shape`` and its data bytes
    are exactly what the file holds past the header: checked before anything is allocated, so a header
    declaring 100 GB over 1 KB of data costs nothing."""
    declared, kind, header = _declared(file)
    if kind.hasobject:
        raise InputError(f"{file}: not a readable .npy array (an object array, which needs pickle)")
    if kind != dtype or declared != shape:
        raise InputError(f"{file}: {kind} {declared}, manifest says {np.dtype(dtype)} {shape}")
    stored = file.stat().st_size - header
    if stored != math.prod(shape) * kind.itemsize:
        raise InputError(f"{file}: holds {stored:,} bytes of data, its header declares "
                         f"{math.prod(shape) * kind.itemsize:,}")
    return _load(file, mmap)


def _open_shard(path: Path, index: int, shard: Shard, dim: int, first_row: int) -> Block:
    """Shard ``index``, verified; its labels None when the set is unlabelled (then a labels file is refused)."""
    emb_file, lab_file = (path / name for name in shard_files(index))
    labelled = shard.labels_sha256 is not None
    if not labelled and lab_file.exists():
        raise InputError(f"{lab_file}: a labels file in a set of unlabelled data (manifest.json says labelled: "
                         "false); embed recomputes the set")
    for file, digest in ((emb_file, shard.embeddings_sha256), (lab_file, shard.labels_sha256))[:1 + labelled]:
        try:
            actual = file_sha256(file)
        except InputError:
            raise InputError(f"{file}: missing or unreadable (an incomplete embedding set)") from None
        if actual != digest:
            raise InputError(f"{file}: its sha256 differs from the manifest's (the file was changed); "
                             "embed recomputes the set")
    # Checked read into memory (one shard at a time), then mapped: pages of a mapping, once read, count
    # in the reader's resident memory, and checking every row would read every page.
    embeddings = load_checked(emb_file, np.float32, (shard.rows, dim), mmap=False)
    labels = load_checked(lab_file, np.int64, (shard.rows,), mmap=False) if labelled else None
    check_rows(embeddings, emb_file, first_row)
    return Block(_load(emb_file, mmap=True), labels)


def read_set(path: str | Path) -> EmbeddingSet:
    """Open and verify the set in folder ``path`` (shards memory-mapped).

    Refuses (InputError naming the file) a manifest that is malformed or disagrees with the files,
    a file whose sha256 is not the manifest's, wrong dtypes or shapes, and rows that are not finite
    unit vectors.
    """
    path = Path(path)
    if not path.is_dir() and swap_lock(path).exists():
        try:
            with locked(swap_lock(path)):
                recover_swap(path)  # a writer killed between the two renames of its swap
        except OSError:
            pass  # a read-only store: the set is then reported missing
    with locked(swap_lock(path), shared=True):
        manifest = read_manifest(path)
        blocks, first = [], 0
        for i, shard in enumerate(manifest.shards):
            blocks.append(_open_shard(path, i, shard, manifest.dim, first))
            first += shard.rows
    return EmbeddingSet(path, manifest, blocks)


def check_comparable(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet]) -> None:
    """Refuse sets that cannot be compared: every set must have the same dimension and
    preprocessing, and the sets of each role the same data (fingerprint, skipped items, labels)."""
    every = [*query, *gallery]
    first = every[0]
    for s in every[1:]:
        if s.dim != first.dim:
            raise InputError(f"{s.path}: dimension {s.dim}, but {first.path} has {first.dim}")
        if s.manifest.preprocessing != first.manifest.preprocessing:
            raise InputError(f"{s.path}: preprocessing {s.manifest.preprocessing} differs from "
                             f"{first.path}'s {first.manifest.preprocessing}")
    for role, sets in (("query", query), ("gallery", gallery)):
        for s in sets[1:]:
            if not s.same_items(sets[0]):
                raise InputError(f"{s.path}: other {role} data than {sets[0].path} (fingerprint "
                                 f"{s.data[0][:12]} vs {sets[0].data[0][:12]}, {s.count} vs {sets[0].count} items, "
                                 f"{len(s.data[1])} vs {len(sets[0].data[1])} skipped)")
