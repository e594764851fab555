"""How fast onnxruntime runs here: the measured matrix-product peak and an export's images/s per batch size."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from ...common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from .device import session_device_id
from .options import TensorRTOptions
from .metadata import ModelInfo
from .limits import ORT_ERRORS, run_failure
from .session import create_session, model_info

# c = a @ b with dynamic [m, k] x [k, n], opset 13 (made with onnx.helper; bytes, since production
# hosts have no onnx package). Byte 37 and its two repeats hold the element type: 1 float32, 10 float16.
_MATMUL = (b'\x08\x07\x12\x00:`\n\x11\n\x01a\n\x01b\x12\x01c"\x06MatMul\x12\x06matmulZ\x15\n\x01a\x12\x10\n\x0e'
           b'\x08\x01\x12\n\n\x03\x12\x01m\n\x03\x12\x01kZ\x15\n\x01b\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12\x01k'
           b'\n\x03\x12\x01nb\x15\n\x01c\x12\x10\n\x0e\x08\x01\x12\n\n\x03\x12\x01m\n\x03\x12\x01nB\x04\n\x00\x10\r')
_DTYPES = {"fp32": (np.float32, b"\x08\x01"), "fp16": (np.float16, b"\x08\n")}




def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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
        try:
            run()
        except (*ORT_ERRORS, MemoryError) as e:  # a graph that fails or asks for too much memory: one line
            raise run_failure(session, e) from None
        first = time.perf_counter() - t0
        seconds = median_seconds(run, warmup=0, repeats=repeats)
        rows.append({"batch_size": bs, "seconds": seconds, "images_per_s": bs / seconds, "first_run_seconds": first})
    rows[0]["session_seconds"] = session_seconds
    return info, used, rows
