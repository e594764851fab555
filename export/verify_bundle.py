"""``verify`` for a bundle: every task's slice against its own checkpoint in PyTorch, and the ``query``
output against the frozen backbone's unprompted [CLS], each under the tolerances of the precision."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..common.contract import QUERY_OUTPUT
from ..infer.runtime.bundle import bundle_info, task_outputs
from ..infer.runtime.options import TensorRTOptions
from ..infer.runtime.session import create_session, run_model
from .parity import BATCH_SIZES, TOLERANCES, Forward, ParityReport, compare
from .verify import (Inputs, Queries, cached_queries, source_checkpoint, source_model, torch_forward,
                     torch_similarity)

Outputs = Callable[[np.ndarray], dict[str, np.ndarray]]


def cached_outputs(session: ort.InferenceSession) -> Outputs:
    """The session's outputs for a batch, computed once per distinct batch: every task's comparison
    reads the same runs."""
    cache: dict[tuple, dict[str, np.ndarray]] = {}

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        key = (images.shape, hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest())
        if key not in cache:
            cache[key] = run_model(session, images, [o.name for o in session.get_outputs()])
        return cache[key]

    return outputs


def _query_forwards(queries: Queries, outputs: Outputs) -> tuple[Forward, Forward]:
    """(PyTorch, bundle) forwards of the unprompted [CLS]; a query has no prompt, its index is 0 on both sides."""
    def reference(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return queries(images, "cls").numpy(), np.zeros(len(images), np.int64)

    def candidate(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return outputs(images)[QUERY_OUTPUT], np.zeros(len(images), np.int64)

    return reference, candidate


def verify_bundle(onnx_path: str | Path, checkpoint_dir: Optional[str | Path] = None, *, inputs: Inputs = Inputs(),
                  provider: str = "cpu", batch_sizes: Sequence[int] = BATCH_SIZES, threads: Optional[int] = None,
                  trt: Optional[TensorRTOptions] = None) -> list[ParityReport]:
    """One report per task of the bundle (its slice against the checkpoint its metadata names, found
    as :func:`~export.verify.source_checkpoint` finds it and checked by sha256), then one for
    ``query`` against the frozen backbone.

    Nothing is computed twice: the bundle runs once per distinct batch for every report, and the
    frozen backbone's query pass in PyTorch (the same for every task: the bundle's export checked that
    the checkpoints share the backbone, and each is the file it was exported from) once per distinct
    batch, with the first task's model, for every task and the ``query`` report. So the whole costs
    less than verifying the T single files: T + 1 passes per image on each side, not 2T."""
    start = time.perf_counter()
    session, used = create_session(onnx_path, provider, threads=threads, trt=trt)
    info = bundle_info(session, onnx_path)
    c = info.common
    checkpoints = [source_checkpoint(onnx_path, t, checkpoint_dir) for t in info.tasks]
    images = inputs.load(c)
    outputs = cached_outputs(session)
    tolerances = TOLERANCES[c.precision]
    context = {"onnx": str(onnx_path), "model": c.model, "pool": c.pool, "gather": c.gather, "query": c.query,
               "provider": used, "inputs": inputs.describe(), "count": len(images),
               "batch_sizes": list(batch_sizes)}
    reports, queries = [], None
    for position, (task, checkpoint) in enumerate(zip(info.tasks, checkpoints)):
        model = source_model(checkpoint, onnx_path, task)
        queries = queries or cached_queries(model)
        report = compare(torch_forward(model, c.selection, c.pool, gather=c.gather, query=c.query, queries=queries),
                         lambda x, p=position: task_outputs(outputs(x), p), images, tolerances,
                         torch_similarity(model, query=c.query, queries=queries), top_k=c.top_k, selection=c.selection,
                         precision=c.precision, batch_sizes=batch_sizes,
                         batch_dependent=c.selection != "per-sample" or c.gather != "per-sample")
        report.context = {**context, "checkpoint": str(checkpoint), "task": task.task,
                          "output": f"embedding[:, {position}]"}
        reports.append(report)
    reference, candidate = _query_forwards(queries, outputs)
    report = compare(reference, candidate, images, tolerances, torch_similarity(model, queries=queries),
                     selection="per-sample",
                     precision=c.precision, batch_sizes=batch_sizes)
    report.context = {**context, "checkpoint": f"the frozen backbone of {checkpoint}", "task": "backbone",
                      "output": QUERY_OUTPUT, "pool": "cls", "query": "cls",
                      "seconds": round(time.perf_counter() - start, 2)}
    reports.append(report)
    return reports
