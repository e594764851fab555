"""``export`` as one call: the chosen tasks' files (fp32 and fp16 traced; int8 quantised from an fp32
export traced into a temporary folder beside the output) or one bundle of them."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..common.contract import DEFAULT_OPSET, QUANTIZED_PRECISIONS
from ..common.errors import InputError
from ..common.outputs import writable_dir
from ..infer.data.base import Dataset
from ..infer.data.datasets import open_dataset
from .onnx_export import ExportResult, TaskExporter, select_checkpoints
from .quantize import QuantizeResult, quantize_int8


@dataclass(frozen=True)
class ExportOptions:
    """What ``export`` writes: ``tasks`` (None: every checkpoint in ``checkpoint_dir``) as
    ``task<N>.onnx`` in ``output_dir``, or with ``bundle_name`` one bundle of them there. ``calibration``
    (a data set spec under ``data_path``) and ``calibration_count`` calibrate ``precision`` int8; the
    other fields are :func:`~export.onnx_export.export_task`'s."""

    tasks: Optional[tuple[int, ...]] = None
    checkpoint_dir: str = "output/checkpoint"
    output_dir: str = "exports"
    selection: str = "per-sample"
    pool: str = "cls"
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    calibration: Optional[str] = None
    calibration_count: int = 64
    data_path: str = "data"
    gather: str = "per-sample"
    query: str = "cls"
    bundle_name: Optional[str] = None


def chosen_tasks(task: Optional[int], tasks: Optional[Sequence[int]], all_tasks: Optional[bool]) -> Optional[tuple]:
    """``--task N``, ``--tasks 1,3,5`` or ``--all`` (None: every task), exactly one of them."""
    if sum(x is not None and x is not False for x in (task, tasks, all_tasks)) != 1:
        raise InputError("give exactly one of --task N, --tasks 1,3,5 or --all")
    return None if all_tasks else ((task,) if task is not None else tuple(tasks))


def _onnx_name(name: str) -> str:
    if Path(name).name != name or not name.endswith(".onnx") or name == ".onnx":
        raise InputError(f"--bundle-name {name!r}: expected a file name ending in .onnx (the folder is --output-dir)")
    return name


def export_int8(checkpoint: Path, out: Path, dataset: Dataset, *, count: int, task: int,
                exporter: TaskExporter) -> QuantizeResult:
    """Export ``checkpoint`` with ``exporter`` (fp32) into a temporary folder beside ``out``, then quantise
    it to int8 at ``out``, calibrated on ``count`` images of ``dataset``; ``seconds`` covers both steps."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fp32.") as tmp:
        fp32 = exporter.export(checkpoint, Path(tmp) / out.name, task)
        q = quantize_int8(fp32.path, out, dataset, count=count)
    return replace(q, seconds=fp32.seconds + q.seconds)


def export_checkpoints(opts: ExportOptions) -> Iterator[tuple[str, ExportResult | QuantizeResult]]:
    """Export as ``opts`` says, every option checked before the first file: yields (what the file holds,
    ``task N`` or a bundle's ``tasks 1, 2, 3``; its result) as each file is written."""
    quantized = opts.precision in QUANTIZED_PRECISIONS
    if quantized != bool(opts.calibration):
        raise InputError("--precision int8 needs --calibration SPEC (and only int8 takes it)")
    if opts.bundle_name and quantized:
        raise InputError("--bundle is traced in fp32 or fp16; quantise single-task files (--task N --precision int8)")
    dataset = open_dataset(opts.calibration, opts.data_path) if quantized else None
    name = _onnx_name(opts.bundle_name) if opts.bundle_name else None
    writable_dir(opts.output_dir, "--output-dir")
    chosen = select_checkpoints(opts.checkpoint_dir, opts.tasks)
    modes = dict(selection=opts.selection, pool=opts.pool, opset=opts.opset, gather=opts.gather, query=opts.query)
    if name:
        from .bundle import export_bundle

        yield f"tasks {', '.join(map(str, chosen))}", export_bundle(chosen, Path(opts.output_dir) / name, precision=opts.precision, **modes)
        return
    exporter = TaskExporter(precision="fp32" if quantized else opts.precision, **modes)  # one trace per backbone
    for t, ckpt in chosen.items():
        out = Path(opts.output_dir) / f"task{t}.onnx"
        if quantized:
            yield f"task {t}", export_int8(ckpt, out, dataset, count=opts.calibration_count, task=t, exporter=exporter)
        else:
            yield f"task {t}", exporter.export(ckpt, out, t)


def describe_export(which: str, r: ExportResult | QuantizeResult) -> str:
    """The line ``export`` prints for a file written (``which``: what it holds, as yielded above)."""
    if isinstance(r, QuantizeResult):
        return (f"{which}: {r.path} (int8, {r.file_bytes / 1e6:.1f} MB, {r.seconds:.1f} s); vs fp32 on "
                f"{r.images} calibration images: cosine mean {r.mean_cosine:.5f}, min {r.min_cosine:.5f}, same "
                f"e-prompt {r.prompt_agreement:.1%}")
    return (f"{which}: {r.path} ({r.file_bytes / 1e6:.1f} MB, {r.size_ratio:.3f} x the unique parameter bytes, "
            f"{r.seconds:.1f} s)")
