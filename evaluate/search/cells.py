"""Compatibility through real indexes: for each gallery model one index (built once, cached in the
store with a record of what it was built from and its own sha256, both checked before a cached index
is used), searched by every newer model's queries; every metric through the index, and the index's
recall against exact search for the same queries."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...common.atomic import atomic_file, write_json
from ...common.digest import file_sha256
from ...common.errors import InputError
from ...infer.store.sets import EmbeddingSet
from ..metrics.compat import Criteria, criteria
from ..metrics.table import index_metrics
from .indexes import (IndexParams, build_index, cache_name, embeddings_digest, exact_topk, faiss_module,
                      neighbour_metrics, recall_at, search)

CACHE_FOLDER = ".indexes"  # under the store; a model id cannot start with '.'


@dataclass
class SearchResult:
    """One search method over every pair (i, j <= i): ``metrics`` and ``recall`` [T, T] matrices
    (NaN above the diagonal), ``criteria`` per metric, ``params`` resolved per gallery model."""

    kind: str
    metrics: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    criteria: dict[str, Criteria] = field(default_factory=dict)
    params: list[dict] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)
    build_seconds: list[float] = field(default_factory=list)
    search_seconds: float = 0.0


def recall_depths(depth: int) -> list[int]:
    """The k of each recall@k reported: 1, 10 and the search depth (those <= depth)."""
    return sorted({1, min(10, depth), depth})


_INDEX_CLASSES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat", "ivfpq": "IndexIVFPQ"}
MAX_RECORD_BYTES = 64 * 2**10  # an index's record file: a few hundred bytes


def record_path(path: Path) -> Path:
    """The record beside a cached index: what it was built from, and the sha256 of its bytes."""
    return path.with_suffix(".json")


def _verified(path: Path, record: dict, faiss) -> tuple[Optional[object], str]:
    """(the cached index at ``path``, '') when its record matches ``record`` (kind, parameters, seed,
    faiss version, the gallery's digest and size) and the file's sha256 is the recorded one, so faiss
    never parses bytes it did not write; else (None, why not)."""
    side = record_path(path)
    try:
        if side.stat().st_size > MAX_RECORD_BYTES:
            return None, f"its record {side.name} is larger than {MAX_RECORD_BYTES} bytes"
        saved = json.loads(side.read_text())
    except FileNotFoundError:
        return None, f"no record {side.name} beside it"
    except (OSError, ValueError, RecursionError) as e:
        return None, f"unreadable record {side.name} ({type(e).__name__})"
    if not isinstance(saved, dict) or {k: v for k, v in saved.items() if k != "index_sha256"} != record:
        return None, "built from other embeddings or parameters than this gallery's"
    try:
        if file_sha256(path) != saved.get("index_sha256"):
            return None, "its sha256 differs from its record (the file was changed)"
        index = faiss.read_index(str(path))
    except (InputError, RuntimeError) as e:
        return None, f"unreadable ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
    if (type(faiss.downcast_index(index)).__name__ != _INDEX_CLASSES[record["kind"]]
            or (index.ntotal, index.d) != (record["rows"], record["dim"])):
        return None, "not the recorded kind or size"
    return index, ""


def cached_index(gallery: EmbeddingSet, kind: str, resolved: dict, store: str | Path, *, seed: int = 0,
                 warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    """(index, loaded from the cache?, seconds) for ``kind`` over ``gallery``'s embeddings, read from
    ``<store>/.indexes/<model-id>/`` when built before from the same embeddings (digest) and parameters
    and verified (:func:`_verified`), else built and written there atomically with its record."""
    faiss = faiss_module()
    start = time.perf_counter()
    digest = embeddings_digest(gallery.embeddings)
    path = Path(store) / CACHE_FOLDER / gallery.model_id / cache_name(kind, resolved, digest, seed)
    record = {"kind": kind, "params": resolved, "seed": seed, "faiss": faiss.__version__, "gallery_sha256": digest,
              "rows": gallery.count, "dim": gallery.dim}
    if path.is_file():
        index, why = _verified(path, json.loads(json.dumps(record)), faiss)
        if index is not None:
            return index, True, time.perf_counter() - start
        warn(f"{path}: cached index not used: {why}; rebuilding")
    index = build_index(gallery.embeddings, kind, resolved, seed=seed)
    with atomic_file(path) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(record_path(path), {**record, "index_sha256": file_sha256(path)})
    return index, False, time.perf_counter() - start


def _empty(t: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.full((t, t), np.nan) for name in names}


def index_compatibility(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], kinds: Sequence[str],
                        params: IndexParams, store: str | Path, *, k: int = 5, exclude_self: bool = False,
                        depth: int = 100, seed: int = 0,
                        progress: Optional[Callable[[int, int], None]] = None) -> list[SearchResult]:
    """``exact`` (streamed exact top-K) then one :class:`SearchResult` per index kind.

    Query and gallery sets are in model order; query i searches the index of gallery j for j <= i.
    ``depth`` (K) is the length of each ranked list, at most the gallery size per query.
    """
    t = len(query)
    depth = min(depth, gallery[0].count - exclude_self)
    recalls = [f"recall@{r}" for r in recall_depths(depth)]
    methods = ["exact", *kinds]
    names = [m.index_name for m in index_metrics()]
    results = {m: SearchResult(m, _empty(t, names), _empty(t, recalls)) for m in methods}
    q_labels, g_labels = query[0].labels, gallery[0].labels
    done, cells = 0, t * (t + 1) // 2
    for j in range(t):
        g = gallery[j]
        indexes = {}
        for kind in kinds:
            resolved = params.resolve(kind, g.count, g.dim)
            indexes[kind] = (cached_index(g, kind, resolved, store, seed=seed), resolved)
            r = results[kind]
            r.params.append(resolved)
            r.cached.append(indexes[kind][0][1])
            r.build_seconds.append(indexes[kind][0][2])
        for i in range(j, t):
            exact = exact_topk(query[i].embeddings, g.embeddings, depth, exclude_self=exclude_self)
            lists = {"exact": exact}
            for kind, ((index, _, _), resolved) in indexes.items():
                start = time.perf_counter()
                lists[kind] = search(index, kind, resolved, query[i].embeddings, depth, exclude_self=exclude_self)
                results[kind].search_seconds += time.perf_counter() - start
            for method, found in lists.items():
                values = neighbour_metrics(found, q_labels, g_labels, k=k, exclude_self=exclude_self)
                for name in names:
                    results[method].metrics[name][i, j] = values[name]
                for name, r in zip(recalls, recall_depths(depth)):
                    results[method].recall[name][i, j] = recall_at(found, exact, r)
            done += 1
            if progress:
                progress(done, cells)
    for r in results.values():
        r.criteria = {name: criteria(m) for name, m in r.metrics.items()}
    return [results[m] for m in methods]
