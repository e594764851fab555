"""``verify`` of any export, a task's file or a bundle, as the ``verify`` command and the demo run it:
the reports, their JSON form and the lines printed for them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..common.atomic import write_json
from ..common.errors import InputError
from ..infer.runtime.bundle import is_bundle
from ..infer.runtime.options import RuntimeOptions
from .parity import BATCH_SIZES, ParityReport, format_table
from .verify import Inputs, verify_export
from .verify_bundle import verify_bundle


def export_path(task: Optional[int], onnx_path: Optional[str], export_dir: str | Path) -> Path:
    """The file ``verify`` checks: ``--onnx PATH``, or ``--task N`` as ``<export_dir>/task<N>.onnx``;
    when that is missing, the error points to a ``*/exports`` folder below the working directory that
    holds it (the demo's ``demo-run/exports``)."""
    if (task is None) == (onnx_path is None):
        raise InputError("give exactly one of --task N or --onnx PATH")
    if task is None:
        return Path(onnx_path)
    path = Path(export_dir) / f"task{task}.onnx"
    if not path.is_file():
        nearby = [p.parent for p in sorted(Path().glob(f"*/exports/{path.name}"))
                  if p.parent.resolve() != Path(export_dir).resolve()]  # the demo's demo-run/exports, say
        hint = (f"; {path.name} is in {nearby[0]}: pass --export-dir {nearby[0]}" if nearby else
                f" (run: python cli.py export --task {task})")
        raise InputError(f"{path}: no such ONNX file{hint}")
    return path


def verify_file(onnx_path: str | Path, checkpoint_dir: Optional[str | Path] = None, *, inputs: Inputs = Inputs(),
                runtime: RuntimeOptions = RuntimeOptions(provider="cpu"), batch_sizes: Sequence[int] = BATCH_SIZES,
                report: Optional[str | Path] = None) -> list[ParityReport]:
    """Verify ``onnx_path`` against its source checkpoint(s) (found as
    :func:`~export.verify.source_checkpoint` finds them) at ``batch_sizes``: one report for a task's
    file, one per task and one for the frozen backbone's ``query`` for a bundle. The session is opened
    with ``runtime``'s provider, threads and TensorRT settings. With ``report``, the reports are also
    written there as JSON (:func:`reports_dict`)."""
    session = dict(provider=runtime.provider, threads=runtime.threads, trt=runtime.trt, batch_sizes=batch_sizes)
    if is_bundle(onnx_path):
        reports = verify_bundle(onnx_path, checkpoint_dir, inputs=inputs, **session)
    else:
        reports = [verify_export(onnx_path, None, checkpoint_dir, inputs, **session)]
    if report is not None:
        write_json(report, reports_dict(reports))
    return reports


def reports_dict(reports: list[ParityReport]) -> dict:
    """A task's file: its report; a bundle: ``{"passed", "reports": [...]}``."""
    if len(reports) == 1:
        return reports[0].to_dict()
    return {"passed": all(r.passed for r in reports), "reports": [r.to_dict() for r in reports]}


def format_reports(reports: list[ParityReport]) -> str:
    """What was compared, then the table, for every report."""
    lines = []
    for report in reports:
        c = report.context
        lines.append(f"{c['onnx']} ({c['model']}, task {c['task']}{', ' + c['output'] if 'output' in c else ''}, "
                     f"{report.precision}, {report.selection}, pool {c['pool']}, gather {c['gather']}, "
                     f"query {c['query']}) vs {c['checkpoint']} on {c['provider']}: {c['count']} {c['inputs']}, "
                     f"batch sizes {', '.join(map(str, c['batch_sizes']))}")
        lines.append(format_table(report))
    return "\n".join(lines)


def chosen_inputs(*, images_dir: Optional[str], dataset: Optional[str], data_path: str, limit: int,
                  random_count: Optional[int], seed: int) -> Inputs:
    """``verify``'s images: ``--images`` or ``--dataset`` (at most ``limit``), else ``--random N``
    random ones (``limit`` of them without ``--random``)."""
    if random_count is not None and (images_dir or dataset):
        raise InputError("--random cannot be combined with --images or --dataset")
    return Inputs(images_dir=images_dir, dataset=dataset, data_path=data_path,
                  count=random_count if random_count is not None else limit, seed=seed)
