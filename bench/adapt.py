"""``bench adapt``: the cost of fitting a compatibility adapter on a large fit set, and of applying a
gallery adapter, against the measured matrix-product peak of this machine.

A synthetic store is written first (not timed), shard by shard as :mod:`bench.evaluate` writes its
sets: "old" holds ``rows`` random unit vectors x [rows, dim], "new" ``unit(x R + 0.05 noise)`` for a
random rotation R (the same items, paired). Then, for each kind, :func:`evaluate.adapt.fit.fit_adapter`
streams both sets (gallery direction, ridge chosen on a held-out tenth for linear/affine): its time and
peak memory beyond the memory-mapped sets (tracemalloc, which numpy reports its buffers to). Then the
first kind's adapter transforms the old gallery:

* kernel: :meth:`Adapter.apply` on one shard's rows in memory (normalise, float32 product, normalise),
  the median of ``repeats`` runs;
* end to end: :func:`evaluate.adapt.apply.apply_to_set`, reading every shard, transforming it and
  writing the new set (files, checksums and manifest included).

Each as FLOP/s = 2 rows dim_in dim_out / seconds (the product's; the normalisations are not counted)
and as a fraction of :func:`infer.runtime.throughput.matmul_peak` (n x n products, numpy and
onnxruntime on the CPU, the best of them).
"""
from __future__ import annotations

import os
import resource
import shutil
import time
import tracemalloc
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.locks import locked
from ..common.tables import format_table
from ..infer.data.datasets import dataset_key, dataset_location
from ..infer.store.manifest import DEFAULT_SHARD_ROWS, DataRecord, Manifest, ModelRecord
from ..infer.store.sets import EmbeddingSet, set_path
from ..infer.store.shards import ShardWriter, writer_lock

NOISE = 0.05


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_pair_store(store: str | Path, *, rows: int, dim: int, classes: int = 1000, seed: int = 0,
                     shard_rows: int = DEFAULT_SHARD_ROWS) -> tuple[EmbeddingSet, EmbeddingSet]:
    """The sets "old" and "new" of ``rows`` paired generated items (see the module doc), written one
    shard at a time (memory: a shard of each, whatever ``rows``)."""
    spec = f"generated:{rows}"
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    data = DataRecord(spec=spec, location=dataset_location(spec), name="generated", split=str(rows),
                      fingerprint=f"{seed:064x}", size=rows)
    models = {"old": ModelRecord(id="old", sha256="1" * 64, task=1), "new": ModelRecord(id="new", sha256="2" * 64, task=2)}
    paths = {m: set_path(store, m, dataset_key(spec)) for m in models}
    with ExitStack() as stack:
        writers = {}
        for m, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(writer_lock(path)))
            writers[m] = ShardWriter(path, {"bench": "adapt"}, dim=dim, shard_rows=shard_rows, resume=False)
        for start in range(0, rows, shard_rows):
            n = min(shard_rows, rows - start)
            x = _unit(rng.standard_normal((n, dim)))
            y = _unit(x @ rotation + NOISE * rng.standard_normal((n, dim)))
            labels = (np.arange(start, start + n) % classes).astype(np.int64)
            writers["old"].write(x, labels)
            writers["new"].write(y, labels)
        sets = {m: w.finish(Manifest(model=models[m], dataset=data, preprocessing={})) for m, w in writers.items()}
    return sets["old"], sets["new"]


def _fit(old: EmbeddingSet, new: EmbeddingSet, kind: str) -> tuple[dict, object]:
    from ..evaluate.adapt.fit import fit_adapter

    tracemalloc.start()
    start = time.perf_counter()
    adapter = fit_adapter(old, new, kind=kind, direction="gallery")
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"kind": kind, "seconds": seconds, "rows_per_s": old.count / seconds, "peak_extra_mib": peak / 2**20,
            "ridge": adapter.ridge}, adapter


def _apply(adapter, old: EmbeddingSet, store: Path, repeats: int, peak: float) -> dict:
    from ..evaluate.adapt.apply import apply_to_set
    from ..infer.runtime.throughput import median_seconds

    block = np.ascontiguousarray(next(old.row_blocks(old.manifest.shard_rows)).embeddings)
    kernel = median_seconds(lambda: adapter.apply(block), warmup=1, repeats=repeats)
    shutil.rmtree(set_path(store, adapter.default_id, dataset_key(old.manifest.dataset.spec)), ignore_errors=True)
    tracemalloc.start()
    start = time.perf_counter()
    moved = apply_to_set(adapter, old, store)
    end_to_end = time.perf_counter() - start
    _, extra = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    flop = 2.0 * adapter.dim_in * adapter.dim_out
    return {"kind": adapter.kind, "kernel_rows": len(block), "kernel_seconds": kernel,
            "kernel_flops": flop * len(block) / kernel, "kernel_fraction_of_peak": flop * len(block) / kernel / peak,
            "rows": moved.count, "seconds": end_to_end, "flops": flop * moved.count / end_to_end,
            "fraction_of_peak": flop * moved.count / end_to_end / peak, "peak_extra_mib": extra / 2**20,
            "gallery_mib": old.count * old.dim * 4 / 2**20}


def bench_adapt(workdir: str | Path, *, rows: int = 100_000, dim: int = 768,
                kinds: Sequence[str] = ("orthogonal", "linear", "affine"), repeats: int = 5) -> dict:
    """Fit each of ``kinds`` on ``rows`` x ``dim`` generated pairs and apply the first one's adapter
    to the gallery (see the module doc); every figure, the machine and its load as a dict."""
    from ..infer.runtime.throughput import matmul_peak
    from .machine import machine_info

    store = Path(workdir) / "store"
    load = os.getloadavg()
    old, new = write_pair_store(store, rows=rows, dim=dim)
    fits, adapters = zip(*(_fit(old, new, kind) for kind in kinds))
    peak = matmul_peak("cpu")
    return {"benchmark": "adapt", "rows": rows, "dim": dim, "fit": list(fits),
            "apply": _apply(adapters[0], old, store, repeats, peak["peak"]), "matmul_peak": peak,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_average": {"before": list(load), "after": list(os.getloadavg())}, "machine": machine_info()}


def format_adapt(result: dict) -> str:
    """``bench adapt``'s tables: the fits, then the gallery transform against the matmul peak."""
    fit = format_table(result["fit"], [("kind", "kind", "s"), ("seconds", "fit s", ".2f"),
                                       ("rows_per_s", "rows/s", ".0f"), ("peak_extra_mib", "peak extra MiB", ".1f")])
    a = result["apply"]
    peak = result["matmul_peak"]["peak"]
    return (f"fit on {result['rows']} x {result['dim']} pairs (streamed from the store; gallery direction):\n{fit}\n"
            f"apply ({a['kind']}), matmul peak {peak / 1e9:.1f} GFLOP/s:\n"
            f"  kernel ({a['kernel_rows']} rows in memory): {a['kernel_flops'] / 1e9:.1f} GFLOP/s = "
            f"{a['kernel_fraction_of_peak']:.0%} of peak\n"
            f"  end to end ({a['rows']} rows, shards read and written): {a['seconds']:.2f} s, "
            f"{a['flops'] / 1e9:.1f} GFLOP/s = {a['fraction_of_peak']:.0%} of peak, "
            f"peak extra {a['peak_extra_mib']:.0f} MiB for a {a['gallery_mib']:.0f} MiB gallery\n"
            f"load average before {result['load_average']['before'][0]:.2f}, after "
            f"{result['load_average']['after'][0]:.2f}")
