"""Synthetic embedding stores for timing ``evaluate --from-store`` at full size without any model."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..common.tables import format_table
from ..infer.data.datasets import dataset_key, dataset_location
from ..infer.store.manifest import DataRecord, Manifest, ModelRecord
from ..infer.runtime.metadata import Preprocessing
from ..infer.store.shards import write_set
from ..infer.store.sets import set_path


def write_random_store(store: str | Path, *, models: int = 10, n: int = 10_000, dim: int = 768, classes: int = 10,
                       spec: str = "cifar10:test", seed: int = 0) -> list[str]:
    """Write ``models`` sets ``task1..taskT`` of ``n`` random unit vectors (float32 [n, dim]) with
    labels ``i % classes``, all claiming the same data ``spec``; returns the model ids."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    ids = [f"task{t}" for t in range(1, models + 1)]
    for t, model_id in enumerate(ids, 1):
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        data = DataRecord(spec=spec, location=dataset_location(spec), name=spec.split(":")[0],
                          split=spec.split(":")[-1], fingerprint=hashlib.sha256(f"random-{seed}-{n}".encode()).hexdigest(),
                          size=n)
        manifest = Manifest(model=ModelRecord(id=model_id, sha256="0" * 64, task=t), dataset=data,
                            preprocessing=asdict(Preprocessing()))
        write_set(set_path(store, model_id, dataset_key(spec)), x, labels, manifest)
    return ids


def products_seconds(query: list[np.ndarray], gallery: list[np.ndarray]) -> float:
    """Time of the similarity products of every cell i >= j alone, in the blocks the evaluation uses."""
    import time

    from ..evaluate.metrics.ranking import _BLOCK_ELEMENTS

    start = time.perf_counter()
    for i in range(len(query)):
        q = np.asarray(query[i])
        for j in range(i + 1):
            g = np.asarray(gallery[j])
            block = max(1, _BLOCK_ELEMENTS // len(g))
            for s in range(0, len(q), block):
                q[s:s + block] @ g.T
    return time.perf_counter() - start


def bench_evaluate(workdir: str | Path, *, models: int = 10, n: int = 10_000, dim: int = 768,
                   classes: int = 10) -> dict:
    """Time and peak extra memory of ``evaluate --from-store`` on a synthetic store written first
    (not timed), beside the time of its similarity products alone (measured in the same run, first).

    Extra memory is what the evaluation allocates beyond the memory-mapped sets (tracemalloc, which
    numpy reports its buffers to). ``stages`` splits the evaluation: cells (products, ranking and
    every per-query metric), bootstrap, tests_and_criteria (McNemar, intervals, criteria, CMC, flips), cka,
    decision (the rule's verdicts and the backfill search of not-compatible pairs).
    """
    import resource
    import time
    import tracemalloc

    from ..evaluate.pipeline import collect_from_store, evaluate_sets
    from .machine import machine_info

    ids = write_random_store(Path(workdir) / "store", models=models, n=n, dim=dim, classes=classes)
    query, gallery = collect_from_store(ids, "cifar10:test", "cifar10:test", Path(workdir) / "store")
    products = products_seconds([s.embeddings for s in query], [s.embeddings for s in gallery])
    tracemalloc.start()
    start = time.perf_counter()
    query, gallery = collect_from_store(ids, "cifar10:test", "cifar10:test", Path(workdir) / "store")
    ev = evaluate_sets(query, gallery)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"benchmark": "evaluate", "models": models, "queries": n, "gallery": n, "dim": dim, "classes": classes,
            "cells": models * (models + 1) // 2, "seconds": seconds, "products_seconds": products,
            "ratio_to_products": seconds / products, "stages": ev.result.seconds, "resamples": ev.result.resamples,
            "peak_extra_mib": peak / 2**20,
            # the whole process: imports, the memory-mapped sets' pages and BLAS buffers included
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "own_image_left_out": ev.protocol["own_image_left_out"], "machine": machine_info()}


def format_evaluate(result: dict) -> str:
    """``bench evaluate``'s table and the time of each stage."""
    cols = [("models", "models", "d"), ("queries", "queries x gallery", "d"), ("dim", "dim", "d"),
            ("cells", "cells", "d"), ("seconds", "evaluate s", ".1f"), ("products_seconds", "products alone s", ".1f"),
            ("ratio_to_products", "ratio", ".2f"), ("peak_extra_mib", "peak extra MiB", ".0f"),
            ("max_rss_mib", "max RSS MiB", ".0f")]
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["stages"].items())
    return format_table([result], cols) + f"\nstages: {stages} ({result['resamples']} bootstrap resamples)"
