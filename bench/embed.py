"""``bench embed``: an export's images/s per batch size against the measured matrix-product peak, and
the input pipeline (decode + preprocess) per worker count. Needs no torch."""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ..infer.data.base import Dataset
from ..infer.data.preprocess import preprocess_batch
from ..infer.data.workers import batch_source
from ..common.errors import InputError
from ..common.synthetic import write_photo_folder
from ..common.tables import format_table
from ..infer.data.datasets import open_dataset
from ..infer.runtime.bundle import is_bundle
from ..infer.runtime.options import RuntimeOptions, TensorRTOptions
from ..infer.runtime.metadata import ModelInfo, Preprocessing
from ..infer.runtime.summary import dualprompt_flops
from ..infer.runtime.throughput import matmul_peak, median_seconds, onnx_throughput
from .machine import machine_info


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def preprocess_throughput(info: ModelInfo, source_size: tuple[int, int], count: int = 64) -> float:
    """images/s of the numpy/Pillow eval transform in one process, for RGB images of ``source_size``."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (source_size[1], source_size[0], 3), dtype=np.uint8))
              for _ in range(count)]
    return count / median_seconds(lambda: preprocess_batch(images, info.preprocessing), warmup=1, repeats=3)


def pipeline_throughput(dataset: Dataset, spec: Preprocessing, worker_counts: Sequence[int], *,
                        batch_size: int = 32, repeats: int = 3) -> list[dict]:
    """images/s of decoding + preprocessing ``dataset`` through :func:`infer.data.workers.batch_source`
    (no model) for each worker count; the counts alternate run by run (1, 2, 1, 2, ...), so a change
    in the machine's load hits every count alike; one untimed pass first (file cache, imports).
    Each row: ``workers``, ``seconds`` (median), ``images_per_s``, ``per_worker`` (images/s divided by
    the processes decoding: 1 for 0 or 1 worker, and never more than the batches, since a pool starts
    no more processes than there are batches), ``speedup`` (over the first count)."""
    def run(workers: int) -> float:
        t0 = time.perf_counter()
        for _ in batch_source(dataset, spec, batch_size=batch_size, workers=workers):
            pass
        return time.perf_counter() - t0

    run(worker_counts[0])
    times: dict[int, list[float]] = {w: [] for w in worker_counts}
    for _ in range(repeats):
        for w in worker_counts:
            times[w].append(run(w))
    rows, batches = [], math.ceil(len(dataset) / batch_size)
    for w in worker_counts:
        seconds = statistics.median(times[w])
        rows.append({"workers": w, "seconds": seconds, "images_per_s": len(dataset) / seconds,
                     "per_worker": len(dataset) / seconds / max(min(w, batches), 1), "runs": times[w]})
    for r in rows:
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
    return rows


def feeding(model_images_per_s: float, pipeline: Sequence[dict],
            model_speeds: Sequence[float] = (100, 300, 1000, 3000, 10000)) -> dict:
    """Which side limits ``embed`` and how many decoding processes a model needs.

    A model of ``s`` images/s needs ceil(s / r) workers, r being the per-worker rate of one worker
    (the scaling measured in ``pipeline`` says how far that holds on this machine's cores)."""
    per_worker = pipeline[0]["per_worker"]
    best = max(pipeline, key=lambda r: r["images_per_s"])
    return {"model_images_per_s": model_images_per_s, "per_worker_images_per_s": per_worker,
            "bottleneck": "model" if best["images_per_s"] >= model_images_per_s else "input pipeline",
            "workers_needed": math.ceil(model_images_per_s / per_worker),
            "workers_needed_by_model_speed": {str(s): math.ceil(s / per_worker) for s in model_speeds}}


def bench_embed(path: str | Path, provider: str, batch_sizes: Sequence[int], repeats: int = 5,
                torch_runner: Callable[[ModelInfo, str, Sequence[int]], list[dict]] | None = None,
                warn: Callable[[str], None] = _stderr, *, threads: int | None = None, trt: TensorRTOptions | None = None,
                photos: Dataset | None = None, worker_counts: Sequence[int] = (1, 2)) -> dict:
    """Throughput of an export at each batch size, as images/s and as a fraction of the device's
    measured matrix-product peak; ``torch_runner(info, device, batch_sizes)`` adds PyTorch eager
    figures from the same run and the onnxruntime/PyTorch ratio. With ``photos`` (a data set of
    photo-sized images) also the input pipeline per worker count and :func:`feeding`."""
    info, used, rows = onnx_throughput(path, provider, batch_sizes, repeats, warn, threads=threads, trt=trt)
    if not info.architecture:
        raise ValueError(f"{path}: its metadata has no architecture, so FLOPs per image are unknown; re-export it")
    flops = dualprompt_flops(info.architecture, info.pool)
    precision = info.precision if used != "cpu" else "fp32"
    peak = matmul_peak(used if used != "tensorrt" else "cuda", precision)
    for r in rows:
        r["fraction_of_peak"] = r["images_per_s"] * flops / peak["peak"]
    result = {"benchmark": "embed", "model": str(path), "task": info.task, "architecture": info.architecture,
              "precision": info.precision, "provider": used, "flops_per_image": flops, "matmul_peak": peak,
              "onnxruntime": rows, "machine": machine_info()}
    if torch_runner is not None:
        torch_rows = torch_runner(info, "cuda" if used != "cpu" else "cpu", batch_sizes)
        for r, t in zip(rows, torch_rows):
            r["torch_images_per_s"] = t["images_per_s"]
            r["speedup_vs_torch"] = r["images_per_s"] / t["images_per_s"]
        result["torch"] = torch_rows
    sizes = {"cifar_32x32": (32, 32), "photo_500x375": (500, 375)}
    result["preprocessing_images_per_s_per_process"] = {k: preprocess_throughput(info, v) for k, v in sizes.items()}
    if photos is not None:
        pipeline = pipeline_throughput(photos, info.preprocessing, worker_counts, batch_size=max(batch_sizes))
        result["pipeline"] = {"dataset": photos.spec, "images": len(photos), "batch_size": max(batch_sizes),
                              "rows": pipeline}
        result["feeding"] = feeding(max(r["images_per_s"] for r in rows), pipeline)
    return result


def bench_embed_file(path: str | Path, *, runtime: RuntimeOptions, batch_sizes: Sequence[int], repeats: int = 5,
                     compare_torch: bool = False, checkpoint_dir: Optional[str] = None,
                     worker_counts: Sequence[int] = (1, 2), photos: int = 384, pipeline_dataset: Optional[str] = None,
                     workdir: str | Path = "bench-embed", singles_dir: Optional[str] = None,
                     against: Optional[str] = None, warn: Callable[[str], None] = _stderr) -> dict:
    """``bench embed``: a bundle against its tasks' single files in ``singles_dir`` (default: beside
    it, see :func:`bench.bundle.bench_bundle`), or a task's file through :func:`bench_embed`, with the
    input pipeline timed on ``pipeline_dataset`` or else on ``photos`` generated photo-sized JPEGs under
    ``workdir`` (0: not timed), and with ``compare_torch`` PyTorch eager on its source checkpoint
    (needs torch); with ``against``, a task's file against that one (:func:`bench.bundle.bench_against`)
    instead. Sessions open with ``runtime``'s provider, threads and TensorRT settings."""
    options = dict(threads=runtime.threads, trt=runtime.trt)
    if is_bundle(path):
        from .bundle import bench_bundle

        if compare_torch or against:
            raise InputError(f"--{'compare-torch' if compare_torch else 'against'}: time one task's single file "
                             "against another, not a bundle")
        return bench_bundle(path, singles_dir or Path(path).parent, runtime.provider, batch_sizes, repeats=repeats,
                            warn=warn, **options)
    if singles_dir:
        raise InputError(f"--singles-dir: {path} is not a bundle")
    if against:
        from .bundle import bench_against

        return bench_against(path, against, runtime.provider, batch_sizes, repeats=repeats, warn=warn, **options)
    runner = None
    if compare_torch:
        from .export import torch_runner

        runner = torch_runner(path, checkpoint_dir, repeats)
    pipeline = None
    if pipeline_dataset:
        pipeline = open_dataset(pipeline_dataset)
    elif photos > 0:
        pipeline = open_dataset(f"folder:{write_photo_folder(Path(workdir) / 'photos', photos)}")
    try:
        return bench_embed(path, runtime.provider, batch_sizes, repeats, runner, warn, photos=pipeline,
                           worker_counts=worker_counts, **options)
    except ValueError as e:
        raise InputError(str(e)) from None


def _feeding_lines(result: dict) -> list[str]:
    if "pipeline" not in result:
        return []
    p, f = result["pipeline"], result["feeding"]
    cols = [("workers", "workers", "d"), ("images_per_s", "pipeline img/s", ".0f"),
            ("per_worker", "per worker", ".0f"), ("speedup", "speedup", ".2f")]
    needed = ", ".join(f"{s} img/s: {n}" for s, n in f["workers_needed_by_model_speed"].items())
    return [f"input pipeline on {p['dataset']} ({p['images']} images, batch {p['batch_size']}, no model):",
            format_table(p["rows"], cols),
            f"model {f['model_images_per_s']:.1f} img/s -> bottleneck: {f['bottleneck']}; it needs "
            f"{f['workers_needed']} worker(s) at {f['per_worker_images_per_s']:.0f} img/s per worker",
            f"workers a model needs, by its speed: {needed}"]


def format_embed(result: dict) -> str:
    """``bench embed``'s tables (a bundle's: :func:`bench.bundle.format_bundle`)."""
    if result["benchmark"] in ("embed-bundle", "embed-against"):
        from .bundle import format_bundle

        return format_bundle(result)
    cols = [("batch_size", "batch", "d"), ("images_per_s", "onnxruntime img/s", ".2f"),
            ("fraction_of_peak", "of matmul peak", ".1%"), ("torch_images_per_s", "torch img/s", ".2f"),
            ("speedup_vs_torch", "ort/torch", ".2f")]
    peak, first = result["matmul_peak"], result["onnxruntime"][0]
    head = (f"{result['model']} on {result['provider']} ({result['precision']}), {result['flops_per_image'] / 1e9:.1f} "
            f"GFLOP/image, measured {peak['precision']} matmul peak {peak['peak'] / 1e9:.0f} GFLOP/s\n"
            f"session created in {first['session_seconds']:.2f} s; first run "
            f"{first['first_run_seconds']:.2f} s (TensorRT builds its engine there unless --trt-cache has it)")
    pre = result["preprocessing_images_per_s_per_process"]
    tail = "preprocessing per process: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in pre.items())
    return "\n".join([head, format_table(result["onnxruntime"], cols), tail] + _feeding_lines(result))
