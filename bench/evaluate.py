"""Synthetic embedding stores for timing ``evaluate --from-store`` at full size without any model."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..common.tables import format_table
from ..infer.data.datasets import dataset_key, dataset_location
from ..infer.store.manifest import DataRecord, Manifest, ModelRecord
from ..infer.runtime.metadata import Preprocessing
from ..infer.store.shards import write_set
from ..infer.store.sets import set_path


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_random_store(store: str | Path, *, models: int = 10, n: int = 10_000, dim: int = 768, classes: int = 10,
                       separation: float = 0.0, spec: str = "cifar10:test", seed: int = 0) -> list[str]:
    """Write ``models`` sets ``task1..taskT`` of ``n`` random unit vectors (float32 [n, dim]) with
    labels ``i % classes``, all claiming the same data ``spec``; returns the model ids. With
    ``separation`` > 0 each vector is its label's centre (a random unit vector, the same for every
    model) times ``separation`` plus its own random unit vector, normalised: classes that retrieval
    tells apart, as a trained model's are (0: none, every label's precision at chance)."""
    rng = np.random.default_rng(seed)
    centres = _unit(np.random.default_rng((seed, 1)).standard_normal((classes, dim), dtype=np.float32))
    labels = np.arange(n, dtype=np.int64) % classes
    ids = [f"task{t}" for t in range(1, models + 1)]
    for t, model_id in enumerate(ids, 1):
        x = _unit(rng.standard_normal((n, dim), dtype=np.float32))
        if separation:
            x = _unit(x + np.float32(separation) * centres[labels])
        data = DataRecord(spec=spec, location=dataset_location(spec), name=spec.split(":")[0],
                          split=spec.split(":")[-1], fingerprint=hashlib.sha256(f"random-{seed}-{n}".encode()).hexdigest(),
                          size=n)
        manifest = Manifest(model=ModelRecord(id=model_id, sha256="0" * 64, task=t), dataset=data,
                            preprocessing=asdict(Preprocessing()))
        write_set(set_path(store, model_id, dataset_key(spec)), x, labels, manifest)
    return ids


def products_seconds(query: list[np.ndarray], gallery: list[np.ndarray]) -> float:
    """Time of the similarity products of every cell i >= j alone, in the blocks and by the function
    the evaluation uses (:func:`evaluate.metrics.ranking.similarities`)."""
    from ..evaluate.metrics.ranking import _usable_cpus, block_rows, similarities

    start = time.perf_counter()
    for i in range(len(query)):
        q = np.asarray(query[i])
        for j in range(i + 1):
            g = np.ascontiguousarray(gallery[j], dtype=np.float32)
            block = block_rows(len(g), _usable_cpus())
            for s in range(0, len(q), block):
                similarities(q[s:s + block], g)
    return time.perf_counter() - start


def ranking_ns(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, requires: frozenset, *, k: int = 5) -> float:
    """CPU nanoseconds per similarity of the ranking step alone, single-threaded, on one cell: queries
    [N, D] against the gallery [N, D] (the same items: own image left out, as the evaluation names
    it), in the evaluation's blocks; the products are computed first and not counted, and the first
    block is ranked once before timing (the process's first allocations of its temporaries)."""
    from ..evaluate.metrics.ranking import block_rows, ranked_outcomes, similarities
    from ..evaluate.metrics.selection import LabelColumns

    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    columns, block = LabelColumns.of(labels), block_rows(len(gallery), 1)

    def rank(s: int) -> float:
        similarity = similarities(query[s:s + block], gallery)
        rows = np.arange(s, s + len(similarity))
        similarity[rows - s, rows] = -np.inf
        start = time.thread_time()
        ranked_outcomes(similarity, labels[rows], labels, k=k, columns=columns, requires=requires, excluded=rows)
        return time.thread_time() - start

    rank(0)
    return sum(rank(s) for s in range(0, len(query), block)) * 1e9 / (len(query) * len(gallery))


def _device_figures(search, ev, cells: int, n: int, dim: int) -> dict:
    """What the search graph achieved: its provider and precision, the cells stage (products, TopK and
    the host's finishing) per similarity, the products' FLOP/s over that stage, and that as a
    fraction of the provider's measured matrix-product peak at the same precision."""
    from ..infer.runtime.throughput import matmul_peak

    spent = ev.result.seconds["cells"]
    flops = 2.0 * n * n * dim * cells / spent
    peak = matmul_peak(search.used, search.precision, sizes=(1024, 2048) if search.used == "cpu" else None,
                       repeats=3)["peak"]
    return {"search_graph": {"provider": search.used, "precision": search.precision,
                       "cells_ns_per_similarity": spent * 1e9 / (n * n * cells), "product_flops": flops,
                       "peak_flops": peak, "fraction_of_peak": flops / peak}}


def _timed_evaluation(ids: list[str], store: Path, full_map: bool, search) -> tuple[float, float, object]:
    """(seconds, peak extra bytes, evaluation) of one ``evaluate --from-store`` on ``ids``: its sets
    read and checked, then every cell, test and criterion."""
    import tracemalloc

    from ..evaluate.decide import DecisionOptions
    from ..evaluate.pipeline import collect_from_store, evaluate_sets

    tracemalloc.start()
    start = time.perf_counter()
    query, gallery = collect_from_store(ids, "cifar10:test", "cifar10:test", store)
    ev = evaluate_sets(query, gallery, options=DecisionOptions(full_map=full_map), search=search)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, ev


def bench_evaluate(workdir: str | Path, *, models: int = 10, n: int = 10_000, dim: int = 768, classes: int = 10,
                   separation: float = 0.0, full_map: bool = False, search_provider: str = "numpy",
                   search_precision: str = "fp32", repeats: int = 3) -> dict:
    """Time and peak extra memory of ``evaluate --from-store`` on a synthetic store written first
    (not timed; :func:`write_random_store`, ``separation`` its class structure), beside the time of
    its similarity products alone (numpy) and the numpy ranking's CPU time per similarity
    (:func:`ranking_ns`, on the cell of the last two models).

    ``repeats`` rounds each time the products alone, then the evaluation, back to back, then the
    ranking alone; the ratio is the median of the rounds' ratios (every round is in ``rounds``), and
    ``seconds``, ``products_seconds`` and ``ranking_ns_per_similarity`` are the medians.
    ``map_at_r_first_model``: the first model's mAP@R against itself, how separable the classes
    are. Extra memory is what the evaluation allocates beyond the memory-mapped sets (tracemalloc,
    which numpy reports its buffers to). ``stages`` splits the last evaluation: cells (products,
    ranking and every per-query metric), bootstrap, tests_and_criteria (McNemar, intervals,
    criteria, CMC, flips), cka, decision (the rule's verdicts and the backfill search of
    not-compatible pairs). ``full_map``: with the exact mAP
    (``evaluate --full-map``), which sorts every similarity row. ``search_provider``,
    ``search_precision``: ``evaluate --search-provider/--search-precision``; a graph's figures are
    under ``search_graph`` (:func:`_device_figures`).
    """
    import resource

    from ..evaluate.metrics.ranking import FIRST_HIT
    from ..evaluate.metrics.table import chosen, requirements
    from ..evaluate.pipeline import collect_from_store
    from ..evaluate.search.device import open_search
    from .machine import machine_info

    search = open_search(search_provider, precision=search_precision)  # a GPU that does not work: an error first
    store = Path(workdir) / "store"
    ids = write_random_store(store, models=models, n=n, dim=dim, classes=classes, separation=separation)
    query, gallery = collect_from_store(ids, "cifar10:test", "cifar10:test", store)
    names = chosen(full_map=full_map)
    rounds = []
    for _ in range(repeats):
        products = products_seconds([s.embeddings for s in query], [s.embeddings for s in gallery])
        seconds, peak, ev = _timed_evaluation(ids, store, full_map, search)
        ranking = ranking_ns(query[-1].embeddings, gallery[max(models - 2, 0)].embeddings, query[0].labels,
                             requirements(names) | {FIRST_HIT})
        rounds.append({"products_seconds": products, "seconds": seconds, "ratio": seconds / products,
                       "ranking_ns_per_similarity": ranking})
    cells = models * (models + 1) // 2
    median = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
    return {"benchmark": "evaluate", "models": models, "queries": n, "gallery": n, "dim": dim, "classes": classes,
            "separation": separation, "map_at_r_first_model": float(ev.result.metrics["mAP@R"][0, 0]),
            "metrics": list(names), "cells": cells, "seconds": median["seconds"], "search": ev.protocol["search"],
            "products_seconds": median["products_seconds"], "ratio_to_products": median["ratio"], "rounds": rounds,
            "ranking_ns_per_similarity": median["ranking_ns_per_similarity"], "stages": ev.result.seconds, "resamples": ev.result.resamples,
            "peak_extra_mib": peak / 2**20,
            # the whole process: imports, the memory-mapped sets' pages and BLAS buffers included
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "own_image_left_out": ev.protocol["own_image_left_out"], "load_average": list(os.getloadavg()),
            "machine": machine_info(), **(_device_figures(search, ev, cells, n, dim) if search else {})}


def format_evaluate(result: dict) -> str:
    """``bench evaluate``'s table (medians of the rounds), each round's ratio and the time of each stage."""
    cols = [("models", "models", "d"), ("queries", "queries x gallery", "d"), ("dim", "dim", "d"),
            ("cells", "cells", "d"), ("seconds", "evaluate s", ".1f"), ("products_seconds", "products alone s", ".1f"),
            ("ratio_to_products", "ratio", ".2f"), ("ranking_ns_per_similarity", "ranking ns/similarity", ".2f"),
            ("peak_extra_mib", "peak extra MiB", ".0f"), ("max_rss_mib", "max RSS MiB", ".0f")]
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["stages"].items())
    rounds = ", ".join(f"{r['ratio']:.2f}" for r in result.get("rounds", []))
    return (format_table([result], cols) + f"\nratio of each round (products alone, then the evaluation): {rounds}"
            + f"\nstages of the last round: {stages} ({result['resamples']} bootstrap resamples)")
