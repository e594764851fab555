"""Scale benchmark: a generated gallery (default 1,000,000 x 768) against generated queries (10,000),
exact streamed search and search through indexes, with time, recall and memory beyond the inputs."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.tables import format_table
from ..evaluate.search.indexes import (IndexParams, build_index, exact_topk, neighbour_metrics, recall_at, search,
                                       training_shortfalls)


def _rss_anon() -> int:
    """Anonymous resident bytes of this process (memory-mapped inputs are file pages, not counted)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("RssAnon:"))


class PeakMemory:
    """Peak of :func:`_rss_anon` above its value at entry, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        self.base = _rss_anon()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_anon() - self.base)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon() - self.base)


def write_clustered(path: Path, n: int, dim: int, centres: np.ndarray, *, noise: float, seed: int,
                    rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """A .npy file of ``n`` unit vectors around ``centres`` [C, dim] (item i around centre i % C, Gaussian
    noise of norm about ``noise``), written a block at a time; returns (memory map [n, dim], labels [n])."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(centres)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, rows):
        x = centres[labels[s:s + rows]] + rng.standard_normal((min(rows, n - s), dim), dtype=np.float32) * (
            noise / np.sqrt(dim))
        out[s:s + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r"), labels


def bench_index(workdir: str | Path, *, gallery: int = 1_000_000, queries: int = 10_000, dim: int = 768,
                classes: int = 1000, kinds: Sequence[str] = ("ivfpq",), params: IndexParams = IndexParams(),
                depth: int = 10, noise: float = 1.0) -> dict:
    """Exact search and each index kind on generated clustered data written to ``workdir`` first (not
    timed): wall and CPU seconds (all threads; what a busy machine does not distort), recall@1 and @depth
    against exact, the metrics, and the peak anonymous memory of each step beyond the memory-mapped inputs."""
    from .machine import machine_info

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    c = np.random.default_rng(0).standard_normal((classes, dim)).astype(np.float32)
    centres = c / np.linalg.norm(c, axis=1, keepdims=True)
    g, g_labels = write_clustered(workdir / "gallery.npy", gallery, dim, centres, noise=noise, seed=1)
    q, q_labels = write_clustered(workdir / "queries.npy", queries, dim, centres, noise=noise, seed=2)
    result = {"benchmark": "index", "gallery": gallery, "queries": queries, "dim": dim, "classes": classes,
              "depth": depth, "noise": noise, "input_bytes": g.nbytes + q.nbytes, "methods": []}
    with PeakMemory() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        exact = exact_topk(q, g, depth)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result["methods"].append({"kind": "exact", "search_seconds": seconds, "search_cpu_seconds": cpu,
                              "peak_extra_mib": mem.peak / 2**20, **neighbour_metrics(exact, q_labels, g_labels)})
    for kind in kinds:
        resolved = params.resolve(kind, gallery, dim)
        with PeakMemory() as mem:
            start, cpu = time.perf_counter(), time.process_time()
            index = build_index(g, kind, resolved)
            built, built_cpu = time.perf_counter() - start, time.process_time() - cpu
            found = search(index, kind, resolved, q, depth)
            searched, searched_cpu = time.perf_counter() - start - built, time.process_time() - cpu - built_cpu
        result["methods"].append({"kind": kind, "params": resolved, "build_seconds": built, "build_cpu_seconds": built_cpu,
                                  "search_seconds": searched, "search_cpu_seconds": searched_cpu,
                                  "peak_extra_mib": mem.peak / 2**20, "training": training_shortfalls(kind, resolved, gallery),
                                  "recall@1": recall_at(found, exact, 1), f"recall@{depth}": recall_at(found, exact, depth),
                                  **neighbour_metrics(found, q_labels, g_labels)})
        del index
    result["machine"] = machine_info()
    return result


def format_index(result: dict) -> str:
    """``bench index``'s table: one row per method, exact search first."""
    depth = result["depth"]
    cols = [("kind", "method", "s"), ("build_seconds", "build s", ".1f"), ("build_cpu_seconds", "build CPU s", ".1f"),
            ("search_seconds", "search s", ".1f"), ("search_cpu_seconds", "search CPU s", ".1f"),
            ("recall@1", "recall@1", ".4f"), (f"recall@{depth}", f"recall@{depth}", ".4f"), ("top1", "top1", ".4f"),
            ("peak_extra_mib", "peak extra MiB", ".0f")]
    head = (f"{result['gallery']} x {result['dim']} gallery, {result['queries']} queries, inputs "
            f"{result['input_bytes'] / 2**30:.2f} GiB (memory-mapped; not counted)")
    notes = dict.fromkeys(f"note: {line}" for m in result["methods"] for line in m.get("training", ()))
    return "\n".join([head, format_table(result["methods"], cols), *notes])
