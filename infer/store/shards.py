"""Writing a set shard by shard, resumable after a kill at any point.

Shards are written into ``.<data-key>.partial`` beside the set: each file under a temporary name,
renamed when complete, then listed with its sha256 in ``progress.json`` (itself replaced
atomically) together with what the shards are computed from (the ``identity``: model, data, shard
and batch sizes). A later run with the same identity keeps the listed shards whose digests still
match and continues after them; anything else in the folder is removed. Finishing writes the
manifest and swaps the folder in under the set's name. Use under :func:`writer_lock` of the set.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ...common.atomic import atomic_file, recover_swap, swap_dir, swap_lock
from ...common.digest import file_sha256
from ...common.errors import InputError
from ...common.faults import fault_point
from ...common.locks import locked
from .manifest import DEFAULT_SHARD_ROWS, Manifest, Shard, shard_files
from .sets import MANIFEST_FILE, EmbeddingSet, read_set

PROGRESS_FILE = "progress.json"


def partial_path(path: Path) -> Path:
    """Where the set at ``path`` is written before it is complete."""
    return path.with_name(f".{path.name}.partial")


def writer_lock(path: Path) -> Path:
    """The lock file held by the one process writing the set at ``path``."""
    return path.with_name(f".{path.name}.embed.lock")


def tidy(path: Path) -> None:
    """Finish what a writer of the set at ``path`` killed during its swap left: the set restored
    under its name, its progress file removed (call under :func:`writer_lock`)."""
    with locked(swap_lock(path)):
        recover_swap(path)
    (path / PROGRESS_FILE).unlink(missing_ok=True)


@dataclass(frozen=True)
class DoneShard:
    shard: Shard
    skipped: tuple[str, ...]  # items of this shard's range left out (unreadable, with --skip-bad)


def _save(file: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy to ``file`` atomically; returns the file's sha256."""
    with atomic_file(file) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return file_sha256(file)


class ShardWriter:
    """The shards of the set at ``path``: ``done`` are those complete (resumed ones included);
    ``write`` adds the next, ``finish`` makes the set."""

    def __init__(self, path: Path, identity: dict, *, dim: int, shard_rows: int = DEFAULT_SHARD_ROWS,
                 resume: bool = True, warn: Callable[[str], None] = lambda m: None):
        self.path, self.partial = Path(path), partial_path(Path(path))
        self.dim, self.shard_rows = dim, shard_rows
        self.identity = {**identity, "dim": dim, "shard_rows": shard_rows}
        self.done = self._resume(warn) if resume else self._restart()

    @property
    def rows(self) -> int:
        return sum(d.shard.rows for d in self.done)

    def _restart(self) -> list[DoneShard]:
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        return []

    def _read_progress(self) -> Optional[list[DoneShard]]:
        try:
            progress = json.loads((self.partial / PROGRESS_FILE).read_text())
            if progress["identity"] != self.identity:
                return None
            return [DoneShard(Shard.from_dict(d), tuple(str(s) for s in d["skipped"])) for d in progress["shards"]]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # absent, or not written by this code
            return None

    def _resume(self, warn: Callable[[str], None]) -> list[DoneShard]:
        listed = self._read_progress() if self.partial.is_dir() else None
        if listed is None:
            return self._restart()
        done = []
        for i, d in enumerate(listed):
            files = [self.partial / name for name in shard_files(i)]
            digests = [d.shard.embeddings_sha256, d.shard.labels_sha256]
            if not all(h is None or f.is_file() and file_sha256(f) == h for f, h in zip(files, digests)):
                break
            done.append(d)
        keep = {name for i in range(len(done)) for name in shard_files(i)} | {PROGRESS_FILE}
        for f in self.partial.iterdir():
            if f.name in keep:
                continue
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
        self.done = done
        self._write_progress()
        if done:
            warn(f"{self.path}: resuming after {len(done)} complete shard(s), {self.rows} rows, "
                 "left by an interrupted run")
        return done

    def _write_progress(self) -> None:
        shards = [{**asdict(d.shard), "skipped": list(d.skipped)} for d in self.done]
        with atomic_file(self.partial / PROGRESS_FILE) as tmp:
            tmp.write_text(json.dumps({"identity": self.identity, "shards": shards}, allow_nan=False))

    def write(self, embeddings: np.ndarray, labels: Optional[np.ndarray], skipped: tuple[str, ...] = ()) -> None:
        """Add the next shard: float32 [rows, dim] unit rows, int64 [rows] labels (None: unlabelled data,
        no labels file), the items left out."""
        rows = len(embeddings)
        if embeddings.shape != (rows, self.dim) or rows > self.shard_rows or labels is not None and len(labels) != rows:
            raise ValueError(f"shard of {embeddings.shape} with {'no' if labels is None else len(labels)} labels; "
                             f"expected at most {self.shard_rows} rows of dimension {self.dim}")
        if self.done and (labels is None) != (self.done[0].shard.labels_sha256 is None):
            raise ValueError("a set's shards all have labels or none has")
        emb_name, lab_name = shard_files(len(self.done))
        emb_sha = _save(self.partial / emb_name, np.ascontiguousarray(embeddings, np.float32))
        lab_sha = None if labels is None else _save(self.partial / lab_name, np.ascontiguousarray(labels, np.int64))
        fault_point("shards.before_progress")
        self.done.append(DoneShard(Shard(rows, emb_sha, lab_sha), tuple(skipped)))
        self._write_progress()
        fault_point("shards.after_progress")

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` complete shards (another set written alongside has fewer)."""
        if count >= len(self.done):
            return
        for i in range(count, len(self.done)):
            for name in shard_files(i):
                (self.partial / name).unlink(missing_ok=True)
        self.done = self.done[:count]
        self._write_progress()

    def finish(self, manifest: Manifest) -> EmbeddingSet:
        """Write ``manifest`` (its storage fields and skipped items filled in here) and swap the set in."""
        manifest = manifest.with_storage(dim=self.dim, shard_rows=self.shard_rows,
                                         shards=tuple(d.shard for d in self.done),
                                         skipped=tuple(s for d in self.done for s in d.skipped))
        if not manifest.count:
            raise InputError(f"{manifest.dataset.spec}: no readable image ({len(manifest.skipped)} skipped); "
                             "nothing stored")
        with atomic_file(self.partial / MANIFEST_FILE) as tmp:
            tmp.write_text(manifest.to_json())
        fault_point("shards.before_swap")
        with locked(swap_lock(self.path)):
            swap_dir(self.partial, self.path)
        (self.path / PROGRESS_FILE).unlink(missing_ok=True)
        return read_set(self.path)

    @staticmethod
    def discard_partial(path: Path) -> None:
        """Remove what an interrupted writer of the set at ``path`` left (when a valid set made it moot)."""
        shutil.rmtree(partial_path(path), ignore_errors=True)


def _complete_rows(partial: Path) -> int:
    """Rows of the complete shards ``progress.json`` lists in the folder ``partial`` (0: none, or unreadable)."""
    try:
        progress = json.loads((partial / PROGRESS_FILE).read_text())
        return sum(int(d["rows"]) for d in progress["shards"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return 0


@contextmanager
def resumable(paths: Sequence[Path]) -> Iterator[None]:
    """Around the writing of the sets at ``paths`` (under their writer locks): when it fails, a
    ``.<data-key>.partial`` folder holding no complete row is removed (nothing to resume, so nothing
    left behind), and an InputError says how many complete rows are kept for the next run to resume."""
    try:
        yield
    except BaseException as e:
        kept = 0
        for path in paths:
            rows = _complete_rows(partial_path(path))
            if rows:
                kept = max(kept, rows)
            else:
                shutil.rmtree(partial_path(path), ignore_errors=True)
        if kept and isinstance(e, InputError):
            raise type(e)(f"{e}; {kept} rows of complete shards are kept: the same command resumes after them") \
                from None
        raise


def write_set(path: str | Path, embeddings: np.ndarray, labels: Optional[np.ndarray], manifest: Manifest, *,
              shard_rows: int = DEFAULT_SHARD_ROWS) -> EmbeddingSet:
    """Write a whole set held in memory (float32 [N, D] unit rows, int64 [N] labels or None for
    unlabelled data) to folder ``path``, replacing any set there, and return it as a reader will see it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(writer_lock(path)):
        writer = ShardWriter(path, {"write_set": True}, dim=embeddings.shape[1], shard_rows=shard_rows, resume=False)
        for start in range(0, len(embeddings), shard_rows):
            writer.write(embeddings[start:start + shard_rows], None if labels is None else labels[start:start + shard_rows],
                         manifest.skipped if start == 0 else ())
        return writer.finish(manifest)
