"""``export`` and ``verify``: ONNX files from checkpoints, and their parity with PyTorch."""
from __future__ import annotations

import click

from ..common.cifar import download_named
from ..common.contract import DEFAULT_OPSET, FILE_PRECISIONS, MIN_OPSET, POOLS, SELECTIONS
from .options import (GATHER, NON_NEGATIVE, POSITIVE, QUERY, THREADS, TRT, Int, data_path, download, int_list,
                      json_file, provider, runtime)

CALIBRATION_HELP = "cifar10:train|test, cifar100:train|test (under --data-path) or folder:PATH (one sub-folder per class)."


@click.command("export")
@click.option("--task", type=POSITIVE, help="Task number to export (task{N}_checkpoint.pth).")
@click.option("--tasks", callback=int_list(1), help="Comma-separated task numbers, e.g. 1,3,5.")
@click.option("--all", "all_tasks", is_flag=True, default=None, help="Every task*_checkpoint.pth in --checkpoint-dir.")
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True)
@click.option("--output-dir", default="exports", show_default=True, help="Writes task{N}.onnx here.")
@click.option("--selection", type=click.Choice(SELECTIONS), default="per-sample", show_default=True,
              help="Prompt selection in the graph; batchwise is the reference's batch-dependent inference "
                   "(every image gets its batch's most frequent prompt).")
@click.option("--pool", type=click.Choice(POOLS), default="cls", show_default=True,
              help="Embedding: [CLS] after the final norm, or the mean of all tokens (the original study's report).")
@click.option("--precision", type=click.Choice(FILE_PRECISIONS), default="fp32", show_default=True,
              help="fp16: half-precision weights and compute; int8: static quantisation of the fp32 export "
                   "calibrated on --calibration images. Input and output stay float32.")
# the newest opset this exporter writes is the installed onnx package's, checked when exporting
@click.option("--opset", type=Int(MIN_OPSET, 99), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (18 or newer; 20 needs onnxruntime >= 1.17).")
@click.option("--calibration", help="int8: the data set whose images calibrate the activation ranges. " + CALIBRATION_HELP)
# onnxruntime's calibrator keeps every activation of every calibration image (export/quantize.py)
@click.option("--calibration-count", type=Int(1, 10_000), default=64, show_default=True,
              help="int8: calibration images (spread over the set).")
@data_path("int8: folder holding the calibration set.")
@GATHER
@QUERY
@click.option("--bundle", is_flag=True, help="One file for all the chosen tasks, the frozen backbone stored and run "
                                             "once: embedding [N, T, D], prompt_index [N, T], query [N, D].")
@click.option("--bundle-name", default="tasks.onnx", show_default=True, help="--bundle: file name in --output-dir.")
def export_command(task, tasks, all_tasks, bundle, bundle_name, **options):
    """Export task feature extractors to ONNX for hosts with onnxruntime and no PyTorch."""
    from ..export.run import ExportOptions, chosen_tasks, describe_export, export_checkpoints

    opts = ExportOptions(tasks=chosen_tasks(task, tasks, all_tasks), bundle_name=bundle_name if bundle else None,
                         **options)
    for which, result in export_checkpoints(opts):
        click.echo(describe_export(which, result))


@click.command("verify")
@click.option("--task", type=POSITIVE, help="Verify <export-dir>/task{N}.onnx against task{N}_checkpoint.pth.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An exported file; its metadata names the checkpoint.")
@click.option("--checkpoint-dir", help="Where the source checkpoint is (default: output/checkpoint, else beside the "
                                       "export: <dir>/checkpoint, <dir>/../output/checkpoint, <dir>/../checkpoint).")
@click.option("--export-dir", default="exports", show_default=True, help="Where --task looks for task{N}.onnx.")
@click.option("--images", "images_dir", type=click.Path(), help="A folder: every jpg/jpeg/png/webp below it.")
@click.option("--dataset", help="A data set: cifar10:test, cifar100:test, folder:PATH, ...")
@data_path("Folder holding the CIFAR folders.")
@download()
@click.option("--limit", type=Int(2), default=64, show_default=True, help="At most this many images from --images or --dataset.")
@click.option("--random", "random_count", type=Int(2), help="N random images (the default: 64).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of --random.")
@runtime(provider("cpu"), THREADS, *TRT)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), callback=json_file,
              help="Also write the report as JSON here.")
@click.pass_context
def verify_command(ctx, task, onnx_path, checkpoint_dir, export_dir, images_dir, dataset, data_path, download, limit,
                   random_count, seed, runtime, report_path):
    """Check an export against its PyTorch checkpoint at batch sizes 1, 7 and 32.

    A bundle: every task against its checkpoint and the query output against the frozen backbone;
    --report then holds {"passed", "reports": [...]}.

    Exit code 0: within tolerance; 1: parity failure; 2: bad input.
    """
    from ..export.verify_file import chosen_inputs, export_path, format_reports, verify_file

    path = export_path(task, onnx_path, export_dir)
    inputs = chosen_inputs(images_dir=images_dir, dataset=dataset, data_path=data_path, limit=limit,
                           random_count=random_count, seed=seed)
    if download:
        download_named(data_path, dataset)
    reports = verify_file(path, checkpoint_dir, inputs=inputs, runtime=runtime, report=report_path)
    click.echo(format_reports(reports))
    ctx.exit(0 if all(r.passed for r in reports) else 1)
