"""Compatibility where production search happens: through indexes, during a backfill, with reduced
precision. One entry point, :func:`evaluate_production`, run after the exact evaluation on the same
sets; its result is the content of ``production.json`` (see :mod:`evaluate.report.production`)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...common.errors import InputError
from ...infer.runtime.options import RuntimeOptions
from ...infer.store.sets import EmbeddingSet
from .backfill import area, backfill_order, default_pairs, exact_curve, fractions, index_curve, parse_pairs
from ..metrics.compat import Compatibility
from .indexes import IndexParams, check_kinds, faiss_module, training_shortfalls
from .precision import STORAGE_PRECISIONS, query_precision_row, storage_matrices
from .cells import cached_index, index_compatibility
from ..metrics.table import deepest


@dataclass
class ProductionOptions:
    """What to measure beyond the exact matrix; the defaults measure nothing."""

    indexes: tuple[str, ...] = ()
    params: IndexParams = field(default_factory=IndexParams)
    depth: int = 100
    backfill: bool = False
    backfill_pairs: Optional[str] = None
    backfill_steps: int = 10
    backfill_seed: int = 0
    backfill_order: Optional[str] = None
    gallery_precisions: tuple[str, ...] = ()
    seed: int = 0

    @property
    def wanted(self) -> bool:
        return bool(self.indexes or self.backfill or self.gallery_precisions)

    def check(self) -> None:
        """InputError for an impossible option, before any work."""
        check_kinds(self.indexes, self.params)
        name, places = deepest(indexed=True)
        if self.depth < places:
            raise InputError(f"--index-depth {self.depth}: must be at least {places} ({name} needs {places} "
                             "neighbours)")
        fractions(self.backfill_steps)
        for p in self.gallery_precisions:
            if p not in STORAGE_PRECISIONS:
                raise InputError(f"--gallery-precision {p!r}: expected one of {', '.join(STORAGE_PRECISIONS)}")
        if not self.backfill and (self.backfill_pairs or self.backfill_order):
            raise InputError("--backfill-pairs and --backfill-order need --backfill")
        if self.backfill_order and not Path(self.backfill_order).is_file():
            raise InputError(f"--backfill-order {self.backfill_order}: no such file")


def production_options(*, indexes: Sequence[str] = (), gallery_precisions: Sequence[str] = (),
                       params: IndexParams = IndexParams(), **options) -> ProductionOptions:
    """:class:`ProductionOptions` from the command line's values, checked (FAISS importable when an
    index is asked for). ``indexes`` and ``gallery_precisions``: values that may each hold a
    comma-separated list (``--index hnsw,ivf --index flat``); ``options``: the other fields."""
    def split(values: Sequence[str]) -> tuple[str, ...]:
        return tuple(v.strip() for value in values for v in value.split(",") if v.strip())

    production = ProductionOptions(indexes=split(indexes), gallery_precisions=split(gallery_precisions),
                                   params=params, **options)
    production.check()
    if production.indexes:
        faiss_module()
    return production


def _rows(m: np.ndarray) -> list[list[Optional[float]]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in m]


def _index_section(query, gallery, opts: ProductionOptions, store, k, exclude_self, progress) -> dict:
    results = index_compatibility(query, gallery, opts.indexes, opts.params, store, k=k, exclude_self=exclude_self,
                                  depth=opts.depth, seed=opts.seed, progress=progress)
    depth = min(opts.depth, gallery[0].count - exclude_self)
    return {"depth": depth, "methods": [
        {"kind": r.kind, "params": r.params, "cached": r.cached, "build_seconds": r.build_seconds,
         "search_seconds": r.search_seconds, "metrics": {n: _rows(m) for n, m in r.metrics.items()},
         "recall": {n: _rows(m) for n, m in r.recall.items()},
         "criteria": {n: {"AC": None if math.isnan(c.AC) else c.AC, "AM": c.AM} for n, c in r.criteria.items()}}
        for r in results]}


def _backfill_section(query, gallery, models, opts: ProductionOptions, store, k, exclude_self, names) -> dict:
    n = gallery[0].count
    f = fractions(opts.backfill_steps)
    order = backfill_order(n, seed=opts.backfill_seed, order_file=opts.backfill_order)
    pairs = parse_pairs(opts.backfill_pairs, models) if opts.backfill_pairs else default_pairs(len(models))
    labels = (query[0].labels, gallery[0].labels)
    section = {"fractions": f.tolist(), "items": n,
               "order": opts.backfill_order or f"random, seed {opts.backfill_seed}", "pairs": []}
    for i, j in pairs:
        old, new, q = gallery[j].embeddings, gallery[i].embeddings, query[i].embeddings
        curves = {"exact": exact_curve(q, old, new, *labels, order, f, k=k, exclude_self=exclude_self, names=names)}
        for kind in opts.indexes:
            resolved = opts.params.resolve(kind, n, gallery[j].dim)
            ends = tuple(cached_index(gallery[m], kind, resolved, store, seed=opts.seed)[0] for m in (j, i))
            curves[kind] = index_curve(ends, kind, resolved, q, old, new, *labels, order, f, k=k,
                                       exclude_self=exclude_self, depth=min(opts.depth, n - exclude_self),
                                       seed=opts.seed)
        section["pairs"].append({
            "new": models[i], "old": models[j],
            "curves": {m: {name: v.tolist() for name, v in c.items()} for m, c in curves.items()},
            "auc": {m: {name: area(f, v) for name, v in c.items()} for m, c in curves.items()}})
    return section


def _storage_section(query, gallery, exact: Compatibility, opts: ProductionOptions, k, exclude_self) -> dict:
    section = {}
    for p in opts.gallery_precisions:
        got = storage_matrices([s.embeddings for s in query], [s.embeddings for s in gallery], query[0].labels,
                               gallery[0].labels, p, k=k, exclude_self=exclude_self, names=list(exact.metrics))
        delta = {n: got[n] - exact.metrics[n] for n in got}
        section[p] = {"metrics": {n: _rows(m) for n, m in got.items()},
                      "delta": {n: _rows(m) for n, m in delta.items()},
                      "max_abs_delta": {n: float(np.nanmax(np.abs(d))) for n, d in delta.items()},
                      "mean_delta": {n: float(np.nanmean(d)) for n, d in delta.items()}}
    return section


def precision_rows(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet],
                   reduced: dict[str, Sequence[EmbeddingSet]], speeds: dict[str, float], *, k: int = 5,
                   exclude_self: bool = False) -> list[dict]:
    """One row per model and reduced precision: its queries against the model's own fp32 gallery,
    the change from fp32 queries, the cosine to them, and ``speeds[precision]`` images/s."""
    rows = []
    for precision, sets in reduced.items():
        for i, s in enumerate(sets):
            row = query_precision_row(s.embeddings, query[i].embeddings, gallery[i].embeddings, query[0].labels,
                                      gallery[0].labels, k=k, exclude_self=exclude_self)
            rows.append({"model": query[i].model_id, "precision": precision, **row,
                         "images_per_s": speeds.get(precision), "fp32_images_per_s": speeds.get("fp32")})
    return rows


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def evaluate_production(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], exact: Compatibility,
                        models: Sequence[str], opts: ProductionOptions, store: str | Path, *, k: int = 5,
                        exclude_self: bool = False, progress: Optional[Callable[[int, int], None]] = None,
                        warn: Callable[[str], None] = _stderr) -> dict:
    """The sections asked for in ``opts`` (``indexes``, ``backfill``, ``gallery_precision``) over the
    sets already checked by the exact evaluation (``exact``, same order). Indexes trained on fewer
    points than FAISS recommends are said once through ``warn``, however many cells build or load
    them, and listed in the ``indexes`` section's ``training``."""
    out: dict = {"models": list(models), "k": k, "own_image_left_out": exclude_self}
    shortfalls = list(dict.fromkeys(
        line for kind in opts.indexes
        for line in training_shortfalls(kind, opts.params.resolve(kind, gallery[0].count, gallery[0].dim),
                                        gallery[0].count)))
    for line in shortfalls:
        warn(f"note: {line}")
    if opts.indexes:
        out["indexes"] = {**_index_section(query, gallery, opts, store, k, exclude_self, progress),
                          "training": shortfalls}
    if opts.backfill:
        out["backfill"] = _backfill_section(query, gallery, list(models), opts, store, k, exclude_self,
                                            list(exact.metrics))
    if opts.gallery_precisions:
        out["gallery_precision"] = _storage_section(query, gallery, exact, opts, k, exclude_self)
    return out


def collect_precision_sets(files: Sequence[Path], folders: Sequence[str], query: Sequence[EmbeddingSet],
                           query_spec: str, data_path: str | Path, store: str | Path, *,
                           runtime: RuntimeOptions = RuntimeOptions(),
                           speed: bool = True) -> tuple[dict[str, list[EmbeddingSet]], dict[str, float]]:
    """Query sets of the other-precision exports in ``folders`` (each holding the same file names as
    ``files``, of the same checkpoints), embedded with ``runtime`` as the fp32 sets were and stored as
    ``<stem>-<precision>``; and images/s per precision (fp32 included) of the last model, measured as
    ``bench embed`` does at ``runtime.batch_size`` with its provider, threads and TensorRT settings."""
    from ...infer.runtime.throughput import onnx_throughput
    from ...infer.data.datasets import open_dataset
    from ...infer.embed import embed_dataset
    from ...infer.runtime.session import create_session, model_info

    variants: dict[str, list[Path]] = {}
    for folder in folders:
        paths = [Path(folder) / f.name for f in files]
        for p in paths:
            if not p.is_file():
                raise InputError(f"--precision-exports {folder}: no {p.name} there (it must mirror the models' files)")
        precision = model_info(create_session(paths[0], "cpu")[0], paths[0]).precision
        if precision in variants or precision == "fp32":
            raise InputError(f"--precision-exports {folder}: a second set of {precision} exports")
        variants[precision] = paths
    dataset = open_dataset(query_spec, data_path)
    sets: dict[str, list[EmbeddingSet]] = {}
    for precision, paths in variants.items():
        sets[precision] = [embed_dataset(p, dataset, store, runtime=runtime, model_id=f"{p.stem}-{precision}").set
                           for p in paths]
        for s, fp32 in zip(sets[precision], query):
            if s.manifest.model.checkpoint_sha256 != fp32.manifest.model.checkpoint_sha256:
                raise InputError(f"{s.manifest.model.file}: exported from another checkpoint than "
                                 f"{fp32.manifest.model.file}")
            if s.data != fp32.data:
                raise InputError(f"{s.path}: other query items than {fp32.path} (unreadable images differ)")
    speeds = {}
    if speed and variants:
        for precision, path in [("fp32", Path(files[-1]))] + [(p, v[-1]) for p, v in variants.items()]:
            speeds[precision] = onnx_throughput(path, runtime.provider, [runtime.batch_size], repeats=3,
                                                threads=runtime.threads, trt=runtime.trt)[2][0]["images_per_s"]
    return sets, speeds
