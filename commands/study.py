"""``audit`` and ``inspect``: the study's tools (data overlap, what a model file is)."""
from __future__ import annotations

from pathlib import Path

import click

from ..common.errors import InputError
from .options import AUTO_PROVIDER, QUIET, THREADS, TRT, Float, Int, batch_size, data_path, runtime, workers


@click.command()
@click.argument("specs", nargs=-1, required=True)
@data_path()
@click.option("--model", type=click.Path(dir_okay=False), help="An export: also find near-duplicates by cosine.")
@click.option("--feature", type=click.Choice(("auto", "embedding", "query")), default="auto", show_default=True,
              help="Model output compared; auto = the frozen-backbone 'query' output if the export has one.")
@click.option("--threshold", type=Float(-1, 1), default=0.95, show_default=True,
              help="Cosine at or above which a pair is a near-duplicate.")
@click.option("--k", type=Int(1, 10_000), default=5, show_default=True, help="Nearest neighbours examined per item.")
@click.option("--within/--no-within", default=None, help="Also audit each set against itself (default: only with one spec).")
@click.option("--store", default="embeddings", show_default=True, help="Embedding store (read, and filled when missing).")
@click.option("--out", default="audit", show_default=True, help="Folder for audit.json, audit.csv, contact_sheet.png.")
@click.option("--sheet-pairs", type=Int(0, 1000), default=24, show_default=True, help="Pairs shown on the contact sheet.")
@runtime(AUTO_PROVIDER, THREADS, *TRT, workers(), batch_size(), QUIET)
@click.pass_context
def audit(ctx, specs, out, sheet_pairs, **options):
    """Duplicates between data sets: exact (pixel and byte hashes) and, with --model, near (cosine).

    SPECS: two or more data sets (every two are compared), or one (audited against itself).
    Exit code 0: no pair found; 1: pairs found; 2: bad input.
    """
    from ..evaluate.study.audit import run_audit
    from ..evaluate.study.audit_report import format_audit, write_audit

    result = run_audit(specs, **options)
    written = write_audit(result, out, sheet_count=sheet_pairs)
    click.echo(format_audit(result))
    click.echo(f"wrote {', '.join(str(p) for p in written)}")
    ctx.exit(1 if result.found else 0)


@click.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--depth", type=Int(0, 100), default=3, show_default=True,
              help="Module levels in a checkpoint's table (torchinfo).")
def inspect_command(path, as_json, depth):
    """What a model is: a checkpoint (.pth, needs torch) or an ONNX export (.onnx, torch-free).

    Architecture, per-layer table (output shape, parameters, trainable or frozen), prompt against
    backbone parameters, FLOPs per image; for an export also its metadata, inputs and outputs.
    """
    import json

    from ..infer.runtime.summary import format_inspection

    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    if Path(path).suffix.lower() == ".onnx":
        from ..infer.runtime.summary import inspect_onnx
        report = inspect_onnx(path)
    else:
        from ..export.summary import inspect_checkpoint
        report = inspect_checkpoint(path, depth=depth)
    click.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))
