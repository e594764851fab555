"""Benchmarks that need no torch: the machine, its measured matrix-product peak, FLOPs per image,
onnxruntime throughput and preprocessing throughput."""
from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from .datasets import Dataset
from .device import TensorRTOptions
from .metadata import ModelInfo, Preprocessing
from .preprocess import preprocess_batch
from .device import session_device_id
from .session import create_session, list_gpus, model_info
from .workers import batch_source

# c = a @ b with dynamic [m, k] x [k, n], opset 13 (made with onnx.helper; bytes, since production
# hosts have no onnx package). Byte 37 and its two repeats hold the element type: 1 float32, 10 float16.
_MATMUL = (b'\x08\x07\x12\x00:`\n\x11\n\x01a\n\x01b\x12\x01c"\x06MatMul\x12\x06matmulZ\x15\n\x01a\x12\x10\n\x0e'
           b'\x08\x01\x12\n\n\x03\x12\x01m\n\x03\x12\x01kZ\x15\n\x01b\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12\x01k'
           b'\n\x03\x12\x01nb\x15\n\x01c\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12\x01m\n\x03\x12\x01nB\x04\n\x00\x10\r')
_DTYPES = {"fp32": (np.float32, b"\x08\x01"), "fp16": (np.float16, b"\x08\n")}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def machine_info() -> dict:
    """CPU model, usable cores, memory, GPUs and package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpus, _ = list_gpus()
    versions = {}
    for pkg in ("numpy", "onnxruntime-gpu", "onnxruntime", "torch", "timm", "onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "versions": versions,
            "gpus": [{"name": g.name, "memory_gib": round(g.memory_bytes / 2**30, 1)} for g in gpus]}


def median_seconds(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(provider: str = "cpu", precision: str = "fp32", sizes: Sequence[int] | None = None,
                repeats: int = 5) -> dict:
    """Measured FLOP/s of n x n x n matrix products in onnxruntime on ``provider`` (inputs bound on
    the device for a GPU) and, on the CPU, through numpy's BLAS too. ``peak`` is the best of them.
    ``sizes`` default: 2048 and 4096 on the CPU, 8192 and 16384 on a GPU."""
    dtype, marker = _DTYPES[precision]
    session, used = create_session(_MATMUL.replace(b"\x08\x01", marker), provider)
    rng = np.random.default_rng(0)
    runs = []
    for n in sizes or ((2048, 4096) if used == "cpu" else (8192, 16384)):
        a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
        engines = {"onnxruntime": _bound_runner(session, {"a": a, "b": b}, ["c"]) if used != "cpu" else
                   (lambda: session.run(["c"], {"a": a, "b": b}))}
        if used == "cpu":
            engines["numpy"] = lambda: a @ b
        for engine, run in engines.items():
            runs.append({"engine": engine, "n": n,
                         "flops": 2.0 * n**3 / median_seconds(run, warmup=2, repeats=repeats)})
    return {"provider": used, "precision": precision, "runs": runs, "peak": max(r["flops"] for r in runs)}


def _bound_runner(session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> Callable:
    """A run with inputs copied to the GPU once and outputs left there: the model's time alone."""
    binding, device_id = session.io_binding(), session_device_id(session)
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", device_id))
    for name in outputs:
        binding.bind_output(name, "cuda", device_id)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def dualprompt_flops(arch: dict, pool: str = "cls") -> float:
    """FLOPs (2 per multiply-add) per image of the exported graph's two passes.

    ``arch`` is an export's ``architecture`` metadata (img_size, patch_size, embed_dim, depth,
    mlp_ratio, g_prompt_length, g_prompt_layers, prompt_length, top_k, e_prompt_layers). As in the
    graph, the last block of the query pass (and of the prompted pass when ``pool`` is 'cls')
    computes keys and values for every token but everything else for the [CLS] token only.
    """
    patches = (arch["img_size"] // arch["patch_size"]) ** 2
    n, d, hidden = patches + 1, arch["embed_dim"], int(arch["embed_dim"] * arch["mlp_ratio"])
    prefix = {i: arch["g_prompt_length"] for i in arch["g_prompt_layers"]}
    prefix.update({i: arch["prompt_length"] * arch["top_k"] for i in arch["e_prompt_layers"]})
    total = 0.0
    for prefixes, cls_only in (({}, True), (prefix, pool == "cls")):
        total += 2.0 * patches * 3 * arch["patch_size"] ** 2 * d
        for i in range(arch["depth"]):
            keys = n + prefixes.get(i, 0)
            rows = 1 if cls_only and i == arch["depth"] - 1 else n  # tokens past the key/value projection
            total += 2.0 * n * d * 2 * d + 2.0 * rows * d * (d + d + 2 * hidden) + 4.0 * rows * keys * d
    return total


def onnx_throughput(path: str | Path, provider: str, batch_sizes: Sequence[int], repeats: int = 5,
                    warn: Callable[[str], None] = _stderr, *, threads: int | None = None,
                    trt: TensorRTOptions | None = None) -> tuple[ModelInfo, str, list[dict]]:
    """images/s of the exported model at each batch size (warm-up, then the median of ``repeats``).
    Each row also has ``first_run_seconds``, the warm-up run: where TensorRT builds its engine for a
    new input shape (unless its cache has one). The first row's ``session_seconds`` times the
    session's creation."""
    t0 = time.perf_counter()
    session, used = create_session(path, provider, warn, threads=threads, trt=trt)
    session_seconds = time.perf_counter() - t0
    info = model_info(session, path)
    rng = np.random.default_rng(0)
    rows = []
    for bs in batch_sizes:
        images = rng.random((bs, 3, info.input_size, info.input_size), dtype=np.float32)
        outputs = [EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT]
        run = _bound_runner(session, {INPUT_NAME: images}, outputs) if used != "cpu" else \
            (lambda: session.run(outputs, {INPUT_NAME: images}))
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        seconds = median_seconds(run, warmup=0, repeats=repeats)
        rows.append({"batch_size": bs, "seconds": seconds, "images_per_s": bs / seconds, "first_run_seconds": first})
    rows[0]["session_seconds"] = session_seconds
    return info, used, rows


def preprocess_throughput(info: ModelInfo, source_size: tuple[int, int], count: int = 64) -> float:
    """images/s of the numpy/Pillow eval transform in one process, for RGB images of ``source_size``."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (source_size[1], source_size[0], 3), dtype=np.uint8))
              for _ in range(count)]
    return count / median_seconds(lambda: preprocess_batch(images, info.preprocessing), warmup=1, repeats=3)


def pipeline_throughput(dataset: Dataset, spec: Preprocessing, worker_counts: Sequence[int], *,
                        batch_size: int = 32, repeats: int = 3) -> list[dict]:
    """images/s of decoding + preprocessing ``dataset`` through :func:`infer.workers.batch_source`
    (no model) for each worker count; the counts alternate run by run (1, 2, 1, 2, ...), so a change
    in the machine's load hits every count alike; one untimed pass first (file cache, imports).
    Each row: ``workers``, ``seconds`` (median), ``images_per_s``, ``per_worker`` (images/s divided by
    the processes decoding, 1 for 0 or 1 worker), ``speedup`` (over the first count)."""
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
    rows = []
    for w in worker_counts:
        seconds = statistics.median(times[w])
        rows.append({"workers": w, "seconds": seconds, "images_per_s": len(dataset) / seconds,
                     "per_worker": len(dataset) / seconds / max(w, 1), "runs": times[w]})
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


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, heading, format spec)."""
    cells = [[h for _, h, _ in columns]] + [[format(r[k], f) if k in r else "-" for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
