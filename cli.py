"""dpcompat command line: train, export, verify, embed, evaluate, demo, bench, doctor.

Each command parses its options, calls the library and prints. Bad input raises ``InputError``,
which becomes one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import math
import re
import sys
from contextlib import contextmanager
from pathlib import Path

if not __package__:
    # `python cli.py` (or torchrun cli.py) from a checkout: run as dpcompat.cli (PEP 366) on this checkout's code.
    import runpy

    runpy.run_path(str(Path(__file__).resolve().with_name("checkout.py")))["import_checkout"]()
    __package__ = "dpcompat"

import click

from .common.contract import (DISTILL_KINDS, FILE_PRECISIONS, GATHERS, POOLS, PRECISIONS, PROVIDERS, QUANTIZED_PRECISIONS,
                              QUERIES, SELECTIONS, parse_provider)
from .common.errors import InputError
from .common.outputs import require_space, writable_dir, writable_file


def _usage_line(e: click.UsageError) -> str:
    """click's usage error as our one line: ``--option: what is wrong``."""
    if isinstance(e, click.BadParameter) and e.param is not None:
        name = e.param.opts[0] if e.param.opts else e.param.human_readable_name
        if isinstance(e, click.MissingParameter):
            return f"{name}: required"
        return f"{name}{' ' if isinstance(e, _BadValue) else ': '}{e.message.rstrip('.')}"
    if isinstance(e, click.NoSuchOption):
        hint = f" (did you mean {', '.join(e.possibilities)}?)" if e.possibilities else ""
        return f"{e.option_name}: no such option{hint}"
    return e.format_message().rstrip(".")


class _Group(click.Group):
    """Every user-caused failure -- our InputError, click's usage errors, a file the OS will not
    write -- becomes one line ``error: ...`` on stderr and exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            click.echo(f"error: {_usage_line(e)}", err=True)
            raise click.exceptions.Exit(2) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.UsageError, InputError, OSError) as e:
            message = _error_line(e)
            if message is None or ctx.meta.get("debug"):
                raise
        click.echo(f"error: {message}", err=True)
        ctx.exit(2)


def _error_line(e: Exception) -> str | None:
    """The one line for a user-caused failure; None for an OSError that names no file (a bug)."""
    if isinstance(e, click.UsageError):
        return _usage_line(e)
    if isinstance(e, InputError):
        return str(e)
    if e.filename is None:
        return None
    from .common.outputs import os_reason

    return f"{e.filename}: {os_reason(e)}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train DualPrompt models, export them to ONNX and measure backward compatibility."""
    ctx.meta["debug"] = debug


# ---- options shared by the commands that run an export ----


def _provider_option(default: str, help_text: str = ""):
    def check(ctx, param, value):
        parse_provider(value)  # an InputError here is one line and exit code 2, before any work
        return value
    return click.option("--provider", default=default, show_default=True, callback=check,
                        metavar="|".join(PROVIDERS) + "|cuda:N|tensorrt:N",
                        help="onnxruntime execution provider; cuda:N / tensorrt:N for GPU N. " + help_text)


_PROVIDER = _provider_option("auto", "auto = CUDA when it really initialises, else CPU (said on stderr). "
                                     "Never a silent fallback.")
_WORKERS = click.option("--workers", type=int, help="Processes that decode and preprocess images while the model "
                                                    "runs (default: the usable cores; 0 or 1: in this process).")


def _runtime_options(command):
    """--threads and the TensorRT options, for every command that opens a session on an export."""
    options = [
        click.option("--threads", type=int, help="onnxruntime intra-op threads (default: the cores this process "
                                                 "may use, from its CPU affinity mask)."),
        click.option("--trt-fp16", is_flag=True, help="TensorRT: allow fp16 kernels."),
        click.option("--trt-cache", type=click.Path(file_okay=False),
                     help="TensorRT: keep built engines in this folder, so later runs skip the build."),
        click.option("--trt-workspace", type=float, help="TensorRT: GPU memory (GiB) it may use to build engines."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _trt(trt_fp16, trt_cache, trt_workspace):
    from .infer.runtime.device import TensorRTOptions

    return TensorRTOptions(fp16=trt_fp16, cache=Path(trt_cache) if trt_cache else None, workspace_gib=trt_workspace)


def _fetch_data(download: bool, data_path: str, *specs: str | None) -> None:
    """With ``--download``, fetch the CIFAR sets the data set specs name into ``data_path``."""
    from .common.cifar import FOLDERS, download_cifar

    if not download:
        return
    for kind in sorted({spec.partition(":")[0] for spec in specs if spec} & set(FOLDERS)):
        download_cifar(data_path, kind)


_DOWNLOAD = click.option("--download", is_flag=True, help="Fetch CIFAR-10/100 into --data-path first when missing "
                                                          "(the official tarball, md5-checked).")

# ---- commands: train ----

_GATHER = click.option("--gather", type=click.Choice(GATHERS), default="per-sample", show_default=True,
                       help="E-prompt gather; reference reproduces the public reference's, whose key/value roles "
                            "depend on the batch position (for reproducing its numbers only).")
_QUERY = click.option("--query", type=click.Choice(QUERIES), default="cls", show_default=True,
                      help="Prompt-selection query: the frozen [CLS] after the final norm (the paper), or notebook, "
                           "the max over the embedded tokens that the original study's notebook used.")


def _non_negative(ctx, param, value):
    if not (value >= 0 and value != float("inf")):
        raise InputError(f"--{param.name.replace('_', '-')} {value}: must be a finite number >= 0")
    return value


class _BadValue(click.BadParameter):
    """A refused option value; the message starts with the value: ``--k 0: expected ...``."""

    def __init__(self, value, reason: str):
        super().__init__(f"{value}: {reason}")


class _Int(click.ParamType):
    """An integer from ``minimum`` to ``maximum`` (inclusive; None: unbounded)."""

    name = "integer"

    def __init__(self, minimum: int, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise _BadValue(value, "not an integer") from None
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            bound = f"{self.minimum} to {self.maximum}" if self.maximum is not None else f">= {self.minimum}"
            raise _BadValue(value, f"expected an integer {bound}")
        return number


class _PositiveFloat(click.ParamType):
    """A finite number above zero (click's FloatRange lets NaN through)."""

    name = "number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _BadValue(value, "not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise _BadValue(value, "expected a finite number above 0")
        return number


POSITIVE = _Int(1)
NON_NEGATIVE = _Int(0)
MAX_BATCH = 4096  # images per inference batch: 2.3 GiB of float32 input at 224 x 224
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _int_list(minimum: int, maximum: int | None = None):
    """Callback parsing ``1,3,5``: one or more distinct integers from ``minimum`` to ``maximum``."""
    each = _Int(minimum, maximum)

    def parse(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",")]
        if not any(items) or not all(items):
            raise _BadValue(value, "expected one or more comma-separated integers, e.g. 1,3,5")
        try:
            numbers = tuple(each.convert(v, param, ctx) for v in items)
        except _BadValue as e:
            raise _BadValue(value, e.message) from None
        if len(set(numbers)) < len(numbers):
            raise _BadValue(value, "names a value more than once")
        return numbers

    return parse


def _json_file(ctx, param, value):
    return value and writable_file(value, param.opts[0])


def _device(ctx, param, value):
    if not _DEVICE.match(value):
        raise _BadValue(value, "expected auto, cpu, cuda or cuda:N")
    return value


@cli.command()
@click.option("--data-path", default="data", show_default=True, help="Folder holding cifar-100-python/.")
@click.option("--download", is_flag=True, help="Fetch CIFAR-100 (the official tarball, md5-checked) if it is not under --data-path.")
@click.option("--output-dir", default="output", show_default=True, help="Writes checkpoint/task{N}_checkpoint.pth and metrics.jsonl.")
@click.option("--model", default="vit_base_patch16_224", show_default=True, help="timm ViT name, e.g. vit_tiny_patch16_224.")
@click.option("--input-size", type=POSITIVE, help="Image size (default: from the model name).")
@click.option("--patch-size", type=POSITIVE, help="Override the model's patch size (small experiments).")
@click.option("--embed-dim", type=POSITIVE, help="Override the model's width (small experiments).")
@click.option("--depth", type=POSITIVE, help="Override the model's number of blocks (small experiments).")
@click.option("--num-heads", type=POSITIVE, help="Override the model's attention heads (small experiments).")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True, help="Start from pretrained backbone weights.")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False), help="Local timm .pth/.safetensors or original .npz.")
@click.option("--num-tasks", type=POSITIVE, default=10, show_default=True, help="Tasks; must divide the number of classes.")
@click.option("--epochs", type=POSITIVE, default=5, show_default=True)
@click.option("--batch-size", type=POSITIVE, default=24, show_default=True, help="Per-device batch size.")
@click.option("--lr", type=_PositiveFloat(), default=0.03, show_default=True, help="Base learning rate, scaled by batch-size / 256.")
@click.option("--limit-per-class", type=POSITIVE, help="Use only the first N train and test images of each class.")
@click.option("--pool-size", type=POSITIVE, default=10, show_default=True, help="E-prompt pool size.")
@click.option("--prompt-length", type=POSITIVE, default=5, show_default=True, help="E-prompt length.")
@click.option("--top-k", type=POSITIVE, default=1, show_default=True, help="E-prompts chosen per sample.")
@click.option("--g-prompt-length", type=POSITIVE, default=5, show_default=True)
@click.option("--g-prompt-layers", default="0,1", show_default=True, callback=_int_list(0))
@click.option("--e-prompt-layers", default="2,3,4", show_default=True, callback=_int_list(0))
@click.option("--selection", type=click.Choice(SELECTIONS), default="per-sample", show_default=True,
              help="Prompt selection when evaluating; batchwise is the reference's batch-dependent behaviour.")
@_GATHER
@click.option("--distill-weight", default=0.0, show_default=True, callback=_non_negative,
              help="λ of a feature-distillation term from the model after the previous task (0: none).")
@click.option("--distill-kind", type=click.Choice(DISTILL_KINDS), default="cosine", show_default=True,
              help="cosine: λ(1 - cos(f_t(x), f_t-1(x))), the original study's; bct: BCT's influence loss "
                   "(the previous task's classifier on the new embedding).")
@click.option("--device", default="auto", show_default=True, callback=_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=NON_NEGATIVE, default=2, show_default=True, help="Data-loading worker processes.")
@click.option("--seed", type=NON_NEGATIVE, default=42, show_default=True)
@click.option("--resume", is_flag=True, help="Continue after the last complete task checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_path, download, output_dir, model, input_size, patch_size, embed_dim, depth, num_heads, pretrained, pretrained_weights, num_tasks, epochs,
          batch_size, lr, limit_per_class, pool_size, prompt_length, top_k, g_prompt_length, g_prompt_layers,
          e_prompt_layers, selection, gather, distill_weight, distill_kind, device, workers, seed, resume, quiet):
    """Train DualPrompt on Split CIFAR-100; one reference-layout checkpoint per task.

    Multi-GPU or multi-node: torchrun --nproc-per-node 8 cli.py train ...
    """
    from .train.loop import TrainOptions, train as run_training

    writable_dir(output_dir, "--output-dir")
    opts = TrainOptions(data_path=data_path, output_dir=output_dir, download=download, num_tasks=num_tasks,
                        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit_per_class=limit_per_class,
                        device=device, workers=workers, resume=resume, quiet=quiet, selection=selection, gather=gather,
                        distill_weight=distill_weight, distill_kind=distill_kind,
                        pretrained=pretrained, pretrained_weights=pretrained_weights)
    arch = dict(model=model, img_size=input_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                num_heads=num_heads, pool_size=pool_size, prompt_length=prompt_length, top_k=top_k,
                g_prompt_length=g_prompt_length, g_prompt_layers=g_prompt_layers, e_prompt_layers=e_prompt_layers)
    run_training(opts, arch, log=click.echo)


@cli.command()
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True,
              help="Every task{N}_checkpoint.pth there (1..T) is evaluated.")
@click.option("--data-path", default="data", show_default=True, help="Folder holding cifar-100-python/.")
@click.option("--out", default="accuracy", show_default=True, help="Writes accuracy.json, accuracy.csv, accuracy_heatmap.png.")
@click.option("--batch-size", type=int, help="Evaluation batch size (default: the checkpoints' args.batch_size).")
@click.option("--selection", type=click.Choice(SELECTIONS),
              help="Prompt selection (default: batchwise when the checkpoints' args.batchwise_prompt is set).")
@click.option("--gather", type=click.Choice(GATHERS),
              help="E-prompt gather (default: the one train recorded, else per-sample); reference = the public "
                   "reference's, key/value roles by batch position.")
@_QUERY
@click.option("--limit-per-class", type=int, help="First N test images per class (default: the checkpoints' own).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--bf16/--fp32", default=True, show_default=True,
              help="On CUDA: bf16 autocast as train evaluates, or float32 as the reference evaluates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def accuracy(checkpoint_dir, data_path, out, batch_size, selection, gather, query, limit_per_class, device, bf16, quiet):
    """Accuracy matrix, average accuracy and forgetting of saved task checkpoints on Split CIFAR-100.

    Several GPUs: torchrun --nproc-per-node 8 cli.py accuracy ...
    """
    from .train.accuracy import AccuracyOptions, evaluate_checkpoints, format_table

    result = evaluate_checkpoints(AccuracyOptions(
        checkpoint_dir=checkpoint_dir, data_path=data_path, out=out, batch_size=batch_size, selection=selection,
        gather=gather, query=query, limit_per_class=limit_per_class, device=device, bf16=bf16, quiet=quiet))
    if result.written:
        click.echo(format_table(result))
        click.echo(f"wrote {', '.join(str(p) for p in result.written)}")

# ---- commands: export ----

_DATASET_HELP = "cifar10:train|test, cifar100:train|test (under --data-path) or folder:PATH (one sub-folder per class)."


def _chosen_tasks(task, tasks, all_tasks):
    if sum(x is not None and x is not False for x in (task, tasks, all_tasks)) != 1:
        raise InputError("give exactly one of --task N, --tasks 1,3,5 or --all")
    return None if all_tasks else ([task] if task is not None else list(tasks))


@cli.command("export")
@click.option("--task", type=POSITIVE, help="Task number to export (task{N}_checkpoint.pth).")
@click.option("--tasks", callback=_int_list(1), help="Comma-separated task numbers, e.g. 1,3,5.")
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
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (18 or newer; 20 needs onnxruntime >= 1.17).")
@click.option("--calibration", help="int8: the data set whose images calibrate the activation ranges. " + _DATASET_HELP)
@click.option("--calibration-count", default=64, show_default=True, help="int8: calibration images (spread over the set).")
@click.option("--data-path", default="data", show_default=True, help="int8: folder holding the calibration set.")
@_GATHER
@_QUERY
@click.option("--bundle", is_flag=True, help="One file for all the chosen tasks, the frozen backbone stored and run "
                                             "once: embedding [N, T, D], prompt_index [N, T], query [N, D].")
@click.option("--bundle-name", default="tasks.onnx", show_default=True, help="--bundle: file name in --output-dir.")
def export_command(task, tasks, all_tasks, checkpoint_dir, output_dir, selection, pool, precision, opset,
                   calibration, calibration_count, data_path, gather, query, bundle, bundle_name):
    """Export task feature extractors to ONNX for hosts with onnxruntime and no PyTorch."""
    import tempfile

    from .export.onnx_export import export_task, select_checkpoints

    quantized = precision in QUANTIZED_PRECISIONS
    if quantized != bool(calibration):
        raise InputError("--precision int8 needs --calibration SPEC (and only int8 takes it)")
    if bundle and quantized:
        raise InputError("--bundle is traced in fp32 or fp16; quantise single-task files (--task N --precision int8)")
    dataset = _calibration_set(calibration, calibration_count, data_path) if quantized else None
    out_name = _onnx_name(bundle_name) if bundle else None
    writable_dir(output_dir, "--output-dir")
    chosen = select_checkpoints(checkpoint_dir, _chosen_tasks(task, tasks, all_tasks))
    if bundle:
        from .export.bundle import export_bundle

        r = export_bundle(chosen, Path(output_dir) / out_name, selection=selection, pool=pool, precision=precision,
                          opset=opset, gather=gather, query=query)
        click.echo(f"tasks {', '.join(map(str, chosen))}: {r.path} ({r.file_bytes / 1e6:.1f} MB, {r.size_ratio:.3f} x "
                   f"the unique parameter bytes, {r.seconds:.1f} s)")
        return
    for t, ckpt in chosen.items():
        out = Path(output_dir) / f"task{t}.onnx"
        if not quantized:
            r = export_task(ckpt, out, selection, pool, precision, opset, task=t, gather=gather, query=query)
            click.echo(f"task {t}: {r.path} ({r.file_bytes / 1e6:.1f} MB, {r.size_ratio:.3f} x the unique parameter "
                       f"bytes, {r.seconds:.1f} s)")
            continue
        from .export.quantize import quantize_int8

        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fp32.") as tmp:
            fp32 = export_task(ckpt, Path(tmp) / out.name, selection, pool, "fp32", opset, task=t, gather=gather,
                               query=query)
            q = quantize_int8(fp32.path, out, dataset, count=calibration_count)
        click.echo(f"task {t}: {q.path} (int8, {q.file_bytes / 1e6:.1f} MB, {fp32.seconds + q.seconds:.1f} s); vs fp32 on "
                   f"{q.images} calibration images: cosine mean {q.mean_cosine:.5f}, min {q.min_cosine:.5f}, same "
                   f"e-prompt {q.prompt_agreement:.1%}")


def _onnx_name(name: str) -> str:
    if Path(name).name != name or not name.endswith(".onnx") or name == ".onnx":
        raise InputError(f"--bundle-name {name!r}: expected a file name ending in .onnx (the folder is --output-dir)")
    return name


def _calibration_set(spec, count, data_path):
    from .infer.data.datasets import open_dataset

    if count < 1:
        raise InputError(f"--calibration-count {count}: must be at least 1")
    return open_dataset(spec, data_path)


@cli.command("verify")
@click.option("--task", type=POSITIVE, help="Verify <export-dir>/task{N}.onnx against task{N}_checkpoint.pth.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An exported file; its metadata names the checkpoint.")
@click.option("--checkpoint-dir", help="Where the source checkpoint is (default: output/checkpoint, else beside the "
                                       "export: <dir>/checkpoint, <dir>/../output/checkpoint, <dir>/../checkpoint).")
@click.option("--export-dir", default="exports", show_default=True, help="Where --task looks for task{N}.onnx.")
@click.option("--images", "images_dir", type=click.Path(), help="A folder: every jpg/jpeg/png/webp below it.")
@click.option("--dataset", help="A data set: cifar10:test, cifar100:test, folder:PATH, ...")
@click.option("--data-path", default="data", show_default=True, help="Folder holding the CIFAR folders.")
@_DOWNLOAD
@click.option("--limit", type=_Int(2), default=64, show_default=True, help="At most this many images from --images or --dataset.")
@click.option("--random", "random_count", type=_Int(2), help="N random images (the default: 64).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of --random.")
@_provider_option("cpu")
@_runtime_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.pass_context
def verify_command(ctx, task, onnx_path, checkpoint_dir, export_dir, images_dir, dataset, data_path, download, limit,
                   random_count, seed, provider, threads, trt_fp16, trt_cache, trt_workspace, report_path):
    """Check an export against its PyTorch checkpoint at batch sizes 1, 7 and 32.

    A bundle: every task against its checkpoint and the query output against the frozen backbone;
    --report then holds {"passed", "reports": [...]}.

    Exit code 0: within tolerance; 1: parity failure; 2: bad input.
    """
    from .export.parity import format_table
    from .export.verify import Inputs, verify_export
    from .common.atomic import write_json
    from .infer.runtime.bundle import is_bundle

    if (task is None) == (onnx_path is None):
        raise InputError("give exactly one of --task N or --onnx PATH")
    if random_count is not None and (images_dir or dataset):
        raise InputError("--random cannot be combined with --images or --dataset")
    if report_path:
        writable_file(report_path, "--report")
    if task is not None:
        onnx_path = Path(export_dir) / f"task{task}.onnx"
        if not onnx_path.is_file():
            raise InputError(f"{onnx_path}: no such ONNX file (run: python cli.py export --task {task})")
    _fetch_data(download, data_path, dataset)
    inputs = Inputs(images_dir=images_dir, dataset=dataset, data_path=data_path,
                    count=random_count if random_count is not None else limit, seed=seed)
    runtime = dict(threads=threads, trt=_trt(trt_fp16, trt_cache, trt_workspace))
    if is_bundle(onnx_path):
        from .export.verify_bundle import verify_bundle

        reports = verify_bundle(onnx_path, checkpoint_dir, inputs=inputs, provider=provider, **runtime)
    else:
        reports = [verify_export(onnx_path, None, checkpoint_dir, inputs, provider, **runtime)]
    for report in reports:
        c = report.context
        click.echo(f"{c['onnx']} ({c['model']}, task {c['task']}{', ' + c['output'] if 'output' in c else ''}, "
                   f"{report.precision}, {report.selection}, pool {c['pool']}, gather {c['gather']}, query {c['query']}) "
                   f"vs {c['checkpoint']} on {c['provider']}: {c['count']} {c['inputs']}")
        click.echo(format_table(report))
    passed = all(r.passed for r in reports)
    if report_path:
        write_json(report_path, reports[0].to_dict() if len(reports) == 1 else
                   {"passed": passed, "reports": [r.to_dict() for r in reports]})
    ctx.exit(0 if passed else 1)


# ---- commands: infer ----

_DATASET_HELP = ("cifar10:train|test, cifar100:train|test (under --data-path), folder:PATH (one sub-folder per class), "
                 "npz:PATH[:train|val|test] (MedMNIST layout) or generated:N (N generated 8x8 images, for benchmarks).")


@cli.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Exported ONNX file, e.g. exports/task3.onnx.")
@click.option("--dataset", required=True, help=_DATASET_HELP)
@click.option("--data-path", default="data", show_default=True, help="Folder holding cifar-10-batches-py/ or cifar-100-python/.")
@_DOWNLOAD
@click.option("--store", default="embeddings", show_default=True,
              help="Writes <store>/<model-id>/<data-key>/ (the key names the data's resolved location).")
@click.option("--model-id", help="Store name of the model (default: the file stem, e.g. task3).")
@_PROVIDER
@_runtime_options
@_WORKERS
@click.option("--batch-size", type=_Int(1, MAX_BATCH), default=64, show_default=True)
@click.option("--shard-rows", default=65_536, show_default=True,
              help="Rows per shard file: memory is bounded by one shard, and a killed run resumes after the last complete one.")
@click.option("--force", is_flag=True, help="Recompute even when the store holds this model's set of this data.")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out (listed in the manifest) instead of stopping.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (and --workers); ray: an actor pool on a Ray cluster (extra [ray]).")
@click.option("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster).")
@click.option("--actors", default=2, show_default=True, help="--engine ray: onnxruntime sessions running at once.")
@click.option("--gpus-per-actor", default=0.0, show_default=True, help="--engine ray: GPUs each actor reserves.")
def embed(model, dataset, data_path, download, store, model_id, provider, threads, trt_fp16, trt_cache, trt_workspace, workers,
          batch_size, shard_rows, force, skip_bad, quiet, engine, ray_address, actors, gpus_per_actor):
    """Embed a data set with one exported model into the embedding store (onnxruntime only).

    A bundle (export --bundle) writes, in one pass over the images, one set per task,
    <model-id>.task<N>, and one for its frozen backbone, <model-id>.backbone; --batch-size and
    --shard-rows then count the rows of all of them (images x tasks).
    """
    from .infer.data.datasets import open_dataset
    from .infer.embed import Engine, embed_model
    from .infer.engines.ray import RayOptions

    ray = None
    if engine == "ray":
        ray = RayOptions(address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor)
        ray.check()
    elif ray_address or gpus_per_actor:
        raise InputError("--ray-address and --gpus-per-actor need --engine ray")

    writable_dir(store, "--store")
    _fetch_data(download, data_path, dataset)
    results = embed_model(model, open_dataset(dataset, data_path), store, model_id=model_id, provider=provider,
                          batch_size=batch_size, shard_rows=shard_rows, force=force, skip_bad=skip_bad,
                          progress=not quiet,
                          engine=Engine(workers=workers, threads=threads,
                                        trt=_trt(trt_fp16, trt_cache, trt_workspace), ray=ray))
    for r in results:
        _report_set(r)


def _report_set(r) -> None:
    if r.reused:
        click.echo(f"reused {r.set.path} ({r.set.count} x {r.set.dim}; same model file and data; --force recomputes)")
        return
    skipped = len(r.set.manifest.skipped)
    click.echo(f"wrote {r.set.path}: {r.set.count} x {r.set.dim} in {len(r.set.manifest.shards)} shard(s) on "
               f"{r.provider} in {r.seconds:.1f} s"
               + (f" ({r.resumed_rows} rows resumed from an interrupted run)" if r.resumed_rows else "")
               + (f", {skipped} unreadable image(s) skipped (listed in manifest.json)" if skipped else ""))


@cli.command()
@click.argument("model_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--models", "models_flag", is_flag=True,
              help="The ONNX files follow (put in the task order of their metadata): --models exports/*.onnx.")
@click.option("--exports-dir", type=click.Path(file_okay=False), help="Every .onnx file there (ordered by task, as --models are).")
@click.option("--from-store", help="Comma-separated stored model ids (task1,task2,...): no ONNX files needed.")
@click.option("--query", default="cifar10:test", show_default=True, help="Query data set. " + _DATASET_HELP)
@click.option("--gallery", help="Gallery data set (default: the query set; each query's own image is then left out).")
@click.option("--data-path", default="data", show_default=True, help="Folder holding CIFAR's folders.")
@_DOWNLOAD
@click.option("--store", default="embeddings", show_default=True, help="Embedding store (read, and filled when missing).")
@click.option("--out", default="reports", show_default=True,
              help="Report folder (compatibility.{json,csv,md} and figures), replaced as a whole.")
@click.option("--k", type=POSITIVE, default=5, show_default=True, help="Neighbours of the kNN majority vote.")
@click.option("--include-self", is_flag=True, help="Keep each query's own image in its gallery (the original study's protocol).")
@_PROVIDER
@_runtime_options
@_WORKERS
@click.option("--batch-size", type=_Int(1, MAX_BATCH), default=64, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out when embedding.")
@click.option("--projections", help="Also draw 2-D projections of the query embeddings: pca, tsne or pca,tsne "
                                    "(needs scikit-learn, the 'analysis' extra).")
@click.option("--projection-sample", default=2000, show_default=True, help="Items projected (a seeded sample).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--index", "indexes", multiple=True, help="Also search through FAISS indexes: flat, hnsw, ivf, "
              "ivfpq (comma-separated or repeated; needs the [faiss] extra). Writes production.json/.md.")
@click.option("--index-depth", default=100, show_default=True, help="K: neighbours each index search returns.")
@click.option("--nlist", type=int, help="IVF lists (default: sqrt(gallery size), at least 39 vectors per list).")
@click.option("--nprobe", default=16, show_default=True, help="IVF lists scanned per query.")
@click.option("--pq-m", type=int, help="PQ sub-vectors (default: the largest divisor of the dimension <= dim/8).")
@click.option("--pq-bits", type=int, help="Bits per PQ code (default: 8, fewer for galleries under 256 items).")
@click.option("--hnsw-m", default=32, show_default=True, help="HNSW links per node.")
@click.option("--ef-construction", default=100, show_default=True, help="HNSW candidates while building.")
@click.option("--ef-search", default=64, show_default=True, help="HNSW candidates while searching.")
@click.option("--backfill", is_flag=True, help="Backfilling curves: every metric as the old gallery is re-embedded.")
@click.option("--backfill-pairs", help="NEW:OLD model ids, comma-separated (default: each model vs the first and vs the previous).")
@click.option("--backfill-steps", default=10, show_default=True, help="f = 0, 1/steps, ..., 1.")
@click.option("--backfill-seed", default=0, show_default=True, help="Seed of the random re-embedding order.")
@click.option("--backfill-order", type=click.Path(dir_okay=False), help="Re-embedding order: gallery row numbers, one per line.")
@click.option("--gallery-precision", "gallery_precisions", multiple=True,
              help="Also store the galleries as fp16 and/or int8 (scalar-quantised) and report the metric change.")
@click.option("--precision-exports", multiple=True, type=click.Path(file_okay=False),
              help="A folder of fp16 or int8 exports with the models' file names: a query-precision row per model.")
@click.option("--no-backbone", is_flag=True, help="A bundle's tasks only, without its frozen backbone's row and column.")
def evaluate(model_files, models_flag, exports_dir, from_store, query, gallery, data_path, download, store, out, k,
             include_self, provider, threads, trt_fp16, trt_cache, trt_workspace, workers, batch_size, skip_bad, quiet,
             projections, projection_sample, indexes, index_depth, nlist, nprobe, pq_m, pq_bits, hnsw_m,
             ef_construction, ef_search, backfill, backfill_pairs, backfill_steps, backfill_seed, backfill_order,
             gallery_precisions, precision_exports, no_backbone):
    """Backward compatibility of every newer model's queries against every older model's gallery.

    Writes compatibility.json/.csv/.md and figures (rows: query model, columns: gallery model); the
    models are put in the order of the task in their metadata. With --index, --backfill,
    --gallery-precision or --precision-exports also production.json/.md.
    """
    production = _production_options(
        indexes=indexes, depth=index_depth, backfill=backfill, backfill_pairs=backfill_pairs,
        params=dict(nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_bits=pq_bits, hnsw_m=hnsw_m,
                    ef_construction=ef_construction, ef_search=ef_search),
        backfill_steps=backfill_steps, backfill_seed=backfill_seed, backfill_order=backfill_order,
        gallery_precisions=gallery_precisions)
    if precision_exports and from_store is not None:
        raise InputError("--precision-exports embeds with ONNX files: it cannot be combined with --from-store")
    from .evaluate.pipeline import (collect_from_models, collect_from_store, evaluate_sets, model_files as find_models,
                                    once_to_stderr, order_by_task)
    from .evaluate.report.writer import check_out_dir, summary, write_reports
    from .infer.runtime.bundle import is_bundle
    from .infer.runtime.session import check_provider

    gallery = gallery or query
    writable_dir(out, "--out")
    check_out_dir(out)
    check_provider(provider)  # an explicit GPU request is refused here even when no model will run
    if projections is not None:
        from .evaluate.study.projections import parse_methods
        projections = parse_methods(projections)
    if from_store is not None:
        if model_files or exports_dir:
            raise InputError("--from-store evaluates stored sets only: drop the ONNX files / --exports-dir")
        q, g = collect_from_store([m.strip() for m in from_store.split(",") if m.strip()], query, gallery, store,
                                  data_path=data_path)
    else:
        files = find_models(model_files, exports_dir, bundles=not precision_exports)
        if precision_exports and any(map(is_bundle, files)):
            raise InputError("--precision-exports compares single-task files: name them (--models exports/task*.onnx)")
        writable_dir(store, "--store")
        _fetch_data(download, data_path, query, gallery)
        q, g = collect_from_models(files, query, gallery, data_path, store, provider=provider,
                                   batch_size=batch_size, skip_bad=skip_bad, progress=not quiet, backbone=not no_backbone,
                                   workers=workers, threads=threads, trt=_trt(trt_fp16, trt_cache, trt_workspace))
    q, g = order_by_task(q, g, once_to_stderr())
    with _cell_bar("cells", disable=quiet) as progress:
        ev = evaluate_sets(q, g, k=k, include_self=include_self, progress=progress)
    written = write_reports(ev, out)
    if projections:
        from .evaluate.study.projections import write_projections
        written.append(write_projections([s.embeddings for s in q], q[0].labels, ev.models, out, methods=projections,
                                         sample=projection_sample))
    click.echo(summary(ev))
    click.echo(f"reports: {', '.join(str(p) for p in written)}")
    if production.wanted or precision_exports:
        _evaluate_production(q, g, ev, production, files if precision_exports else [], precision_exports, store,
                             data_path, query, out, provider=provider, batch_size=batch_size, skip_bad=skip_bad,
                             quiet=quiet)


@contextmanager
def _cell_bar(desc: str, *, disable: bool):
    """A progress bar on stderr, and the ``progress(done, total)`` callback that moves it."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit="cell", disable=disable, file=sys.stderr) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def _production_options(*, indexes, gallery_precisions, params, **options):
    """evaluate's production options, checked (FAISS importable when an index is asked for)."""
    from .evaluate.search.indexes import IndexParams
    from .evaluate.search.production import ProductionOptions

    def split(values):
        return tuple(v.strip() for value in values for v in value.split(",") if v.strip())

    production = ProductionOptions(indexes=split(indexes), gallery_precisions=split(gallery_precisions),
                                   params=IndexParams(**params), **options)
    production.check()
    if production.indexes:
        from .evaluate.search.indexes import faiss_module

        faiss_module()
    return production


def _evaluate_production(q, g, ev, production, files, precision_exports, store, data_path, query_spec, out, *,
                         provider, batch_size, skip_bad, quiet):
    """Indexes, backfilling and reduced precision (evaluate's production.json/.md and backfill figures)."""
    from .evaluate.search.production import collect_precision_sets, evaluate_production, precision_rows
    from .evaluate.report.production import write_production

    exclude_self = ev.protocol["own_image_left_out"]
    with _cell_bar("index cells", disable=quiet or not production.indexes) as progress:
        result = evaluate_production(q, g, ev.result, ev.models, production, store, k=ev.protocol["k"],
                                     exclude_self=exclude_self, progress=progress)
    rows = []
    if precision_exports:
        by_id = {f.stem: f for f in files}
        sets, speeds = collect_precision_sets([by_id[s.model_id] for s in q], precision_exports, q, query_spec, data_path, store,
                                              provider=provider, batch_size=batch_size, skip_bad=skip_bad,
                                              progress=not quiet)
        rows = precision_rows(q, g, sets, speeds, k=ev.protocol["k"], exclude_self=exclude_self)
    written = write_production(result, out, precision_rows=rows)
    click.echo(f"production reports: {', '.join(str(p) for p in written)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json):
    """Versions, onnxruntime providers (listed and actually working) and GPUs of this host."""
    import json

    from .infer.runtime.session import doctor_report, format_doctor

    report = doctor_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_doctor(report))

# ---- commands: study (audit, inspect) ----


@cli.command()
@click.argument("specs", nargs=-1, required=True)
@click.option("--data-path", default="data", show_default=True, help="Folder holding CIFAR's folders.")
@click.option("--model", type=click.Path(dir_okay=False), help="An export: also find near-duplicates by cosine.")
@click.option("--feature", type=click.Choice(("auto", "embedding", "query")), default="auto", show_default=True,
              help="Model output compared; auto = the frozen-backbone 'query' output if the export has one.")
@click.option("--threshold", default=0.95, show_default=True, help="Cosine at or above which a pair is a near-duplicate.")
@click.option("--k", default=5, show_default=True, help="Nearest neighbours examined per item.")
@click.option("--within/--no-within", default=None, help="Also audit each set against itself (default: only with one spec).")
@click.option("--store", default="embeddings", show_default=True, help="Embedding store (read, and filled when missing).")
@click.option("--out", default="audit", show_default=True, help="Folder for audit.json, audit.csv, contact_sheet.png.")
@click.option("--sheet-pairs", default=24, show_default=True, help="Pairs shown on the contact sheet.")
@_PROVIDER
@click.option("--batch-size", default=64, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def audit(ctx, specs, data_path, model, feature, threshold, k, within, store, out, sheet_pairs, provider, batch_size,
          quiet):
    """Duplicates between data sets: exact (pixel and byte hashes) and, with --model, near (cosine).

    SPECS: two or more data sets (every two are compared), or one (audited against itself).
    Exit code 0: no pair found; 1: pairs found; 2: bad input.
    """
    from .evaluate.study.audit import run_audit
    from .evaluate.study.audit_report import audit_dict, write_audit

    result = run_audit(specs, data_path, model=model, feature=feature, threshold=threshold, k=k, within=within,
                       store=store, provider=provider, batch_size=batch_size, progress=not quiet)
    written = write_audit(result, out, sheet_count=sheet_pairs)
    for c in audit_dict(result)["comparisons"]:
        near = f", {c['near_duplicates']} near (cosine >= {threshold})" if model else ""
        top = f", closest cosine {c['max_cosine']:.4f}" if c["max_cosine"] is not None else ""
        click.echo(f"{c['left']} vs {c['right']}: {c['pixel_duplicates']} same pixels, "
                   f"{c['byte_duplicates']} same bytes{near}{top}")
    click.echo(f"wrote {', '.join(str(p) for p in written)}")
    ctx.exit(1 if result.found else 0)


@cli.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--depth", default=3, show_default=True, help="Module levels in a checkpoint's table (torchinfo).")
def inspect_command(path, as_json, depth):
    """What a model is: a checkpoint (.pth, needs torch) or an ONNX export (.onnx, torch-free).

    Architecture, per-layer table (output shape, parameters, trainable or frozen), prompt against
    backbone parameters, FLOPs per image; for an export also its metadata, inputs and outputs.
    """
    import json

    from .infer.runtime.summary import format_inspection

    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    if Path(path).suffix.lower() == ".onnx":
        from .infer.runtime.summary import inspect_onnx
        report = inspect_onnx(path)
    else:
        from .export.summary import inspect_checkpoint
        report = inspect_checkpoint(path, depth=depth)
    click.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


# ---- commands: demo ----


@cli.command()
@click.option("--workdir", default="demo-run", show_default=True, help="Everything the demo writes goes here.")
@click.option("--data-path", default="data", show_default=True,
              help="Real CIFAR-100/CIFAR-10 (python layout) are used when present here.")
@click.option("--download", is_flag=True, help="Fetch CIFAR-100 and CIFAR-10 first (needs network).")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False),
              help="Local ViT-Tiny weights (timm .pth/.safetensors or .npz); else downloaded when the network allows.")
@click.option("--smoke", is_flag=True, help="A miniature model on 32x32 inputs: the same chain in well under a minute.")
@click.option("--distill-weight", default=0.0, show_default=True, callback=_non_negative,
              help="Train with feature distillation of this weight (compare with a run without it).")
@click.option("--distill-kind", type=click.Choice(DISTILL_KINDS), default="cosine", show_default=True)
@_PROVIDER
def demo(workdir, data_path, download, pretrained_weights, smoke, distill_weight, distill_kind, provider):
    """Run train -> export -> verify -> embed -> evaluate on a small setting, offline if need be."""
    import time

    from .demo import run_demo

    writable_dir(workdir, "--workdir")
    start = time.perf_counter()
    result = run_demo(workdir, data_path, download, pretrained_weights, smoke, provider, log=click.echo,
                      distill=(distill_weight, distill_kind))
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s "
               f"({', '.join(f'{k} {v} s' for k, v in result['times'].items())})")
    for note in result["notes"]:
        click.echo(f"NOTE: {note}")
    click.echo(f"report: {Path(workdir) / 'reports' / 'compatibility.md'}")
    click.echo(f"heatmap: {Path(workdir) / 'reports' / 'heatmap_top1.png'}")

# ---- commands: bench ----


@cli.group()
def bench():
    """Benchmarks with trustworthy figures: table on the terminal, everything in JSON (--json)."""


def _emit(result: dict, table: str, json_path) -> None:
    from .common.atomic import write_json

    click.echo(table)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


@bench.command("embed")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="An exported .onnx file.")
@_provider_option("cpu")
@_runtime_options
@click.option("--batch-sizes", default="1,8,32,128", show_default=True, callback=_int_list(1, MAX_BATCH))
@click.option("--repeats", type=POSITIVE, default=5, show_default=True, help="Timed runs per batch size (after one warm-up); the median is reported.")
@click.option("--compare-torch", is_flag=True, help="Also time the source checkpoint in PyTorch eager, same device and batch.")
@click.option("--checkpoint-dir", help="With --compare-torch: where the source checkpoint is (default: found as "
                                       "verify finds it).")
@click.option("--workers", "worker_counts", default="1,2", show_default=True, callback=_int_list(0, 256),
              help="Worker counts whose input pipeline (decode + preprocess, no model) is timed, alternately.")
@click.option("--photos", default=384, show_default=True,
              help="Photo-sized (500x375) JPEGs generated under --workdir for the input pipeline; 0: skip it.")
@click.option("--pipeline-dataset", help="Time the input pipeline on this data set instead (e.g. folder:/srv/gallery).")
@click.option("--workdir", default="bench-embed", show_default=True, help="Where the generated photos are kept.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_json_file, help="Write every figure as JSON here.")
@click.option("--singles-dir", type=click.Path(file_okay=False),
              help="With a bundle: where its tasks' single files task<N>.onnx are (default: the bundle's folder).")
def bench_embed_command(model_path, provider, threads, trt_fp16, trt_cache, trt_workspace, batch_sizes, repeats,
                        compare_torch, checkpoint_dir, worker_counts, photos, pipeline_dataset, workdir, json_path,
                        singles_dir):
    """images/s of an export per batch size, as a fraction of the measured matmul peak, optionally vs PyTorch;
    the input pipeline per worker count, and which of the two limits embed.

    A bundle: images x tasks per second of the bundle and of its tasks' single files, timed in
    alternating rounds on the same images and threads, and their ratio."""
    from .common.synthetic import write_photo_folder
    from .bench.embed import bench_embed
    from .common.tables import format_table
    from .infer.runtime.bundle import is_bundle
    from .infer.data.datasets import open_dataset

    if is_bundle(model_path):
        if compare_torch:
            raise InputError("--compare-torch: time one task's single file against PyTorch, not a bundle")
        _bench_bundle(model_path, provider, batch_sizes, repeats, singles_dir or Path(model_path).parent, json_path,
                      threads=threads, trt=_trt(trt_fp16, trt_cache, trt_workspace))
        return
    if singles_dir:
        raise InputError(f"--singles-dir: {model_path} is not a bundle")

    if not worker_counts or min(worker_counts) < 0:
        raise InputError(f"--workers {worker_counts}: give one or more worker counts, each 0 or more")
    if compare_torch and checkpoint_dir is not None:
        from .train.checkpoint import checkpoint_folder

        checkpoint_folder(checkpoint_dir)
    pipeline = None
    if pipeline_dataset:
        pipeline = open_dataset(pipeline_dataset)
    elif photos > 0:
        pipeline = open_dataset(f"folder:{write_photo_folder(Path(workdir) / 'photos', photos)}")

    runner = None
    if compare_torch:
        from .bench.export import torch_throughput
        from .export.verify import source_checkpoint

        def torch_runner(info, device, sizes):
            ckpt = source_checkpoint(model_path, info, checkpoint_dir)
            if not ckpt.is_file():
                raise InputError(f"{ckpt}: the source checkpoint of {model_path} is needed for --compare-torch")
            return torch_throughput(ckpt, info, device, sizes, repeats)
        runner = torch_runner

    try:
        result = bench_embed(model_path, provider, batch_sizes, repeats, runner, warn=lambda m: click.echo(m, err=True),
                             threads=threads, trt=_trt(trt_fp16, trt_cache, trt_workspace), photos=pipeline,
                             worker_counts=worker_counts)
    except ValueError as e:
        raise InputError(str(e)) from None
    cols = [("batch_size", "batch", "d"), ("images_per_s", "onnxruntime img/s", ".2f"),
            ("fraction_of_peak", "of matmul peak", ".1%"), ("torch_images_per_s", "torch img/s", ".2f"),
            ("speedup_vs_torch", "ort/torch", ".2f")]
    peak = result["matmul_peak"]
    head = (f"{model_path} on {result['provider']} ({result['precision']}), {result['flops_per_image'] / 1e9:.1f} "
            f"GFLOP/image, measured {peak['precision']} matmul peak {peak['peak'] / 1e9:.0f} GFLOP/s\n"
            f"session created in {result['onnxruntime'][0]['session_seconds']:.2f} s; first run "
            f"{result['onnxruntime'][0]['first_run_seconds']:.2f} s (TensorRT builds its engine there unless --trt-cache has it)")
    pre = result["preprocessing_images_per_s_per_process"]
    tail = "preprocessing per process: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in pre.items())
    _emit(result, "\n".join([head, format_table(result["onnxruntime"], cols), tail] + _feeding_lines(result)), json_path)


def _feeding_lines(result: dict) -> list[str]:
    from .common.tables import format_table

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


def _bench_bundle(model_path, provider, batch_sizes, repeats, singles_dir, json_path, *, threads, trt):
    from .common.tables import format_table
    from .bench.bundle import bench_bundle

    result = bench_bundle(model_path, singles_dir, provider, batch_sizes, repeats=repeats,
                          warn=lambda m: click.echo(m, err=True), threads=threads, trt=trt)
    cols = [("batch_size", "batch", "d"), ("bundle_images_tasks_per_s", "bundle img x tasks/s", ".2f"),
            ("singles_images_tasks_per_s", f"{len(result['tasks'])} single files img x tasks/s", ".2f"),
            ("ratio", "bundle / singles", ".2f")]
    head = (f"{model_path} (tasks {', '.join(map(str, result['tasks']))}) vs their single files on "
            f"{result['provider']} ({result['precision']})")
    _emit(result, "\n".join([head, format_table(result["rows"], cols)]), json_path)


@bench.command("evaluate")
@click.option("--models", type=POSITIVE, default=10, show_default=True)
@click.option("--queries", type=_Int(2), default=10_000, show_default=True, help="Query and gallery size (the same split).")
@click.option("--dim", type=POSITIVE, default=768, show_default=True)
@click.option("--classes", type=POSITIVE, default=10, show_default=True)
@click.option("--workdir", default="bench-evaluate", show_default=True, help="Where the synthetic store is written.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_json_file)
def bench_evaluate_command(models, queries, dim, classes, workdir, json_path):
    """Time and peak memory of the compatibility evaluation on random unit vectors."""
    from .bench.evaluate import bench_evaluate
    from .common.tables import format_table

    writable_dir(workdir, "--workdir")
    # each model's set: float32 [queries, dim] embeddings and int64 [queries] labels
    require_space(workdir, models * queries * (4 * dim + 8), "--workdir")
    result = bench_evaluate(workdir, models=models, n=queries, dim=dim, classes=classes)
    cols = [("models", "models", "d"), ("queries", "queries x gallery", "d"), ("dim", "dim", "d"),
            ("cells", "cells", "d"), ("seconds", "evaluate s", ".1f"), ("products_seconds", "products alone s", ".1f"),
            ("ratio_to_products", "ratio", ".2f"), ("peak_extra_mib", "peak extra MiB", ".0f"),
            ("max_rss_mib", "max RSS MiB", ".0f")]
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["stages"].items())
    _emit(result, format_table([result], cols) + f"\nstages: {stages} ({result['resamples']} bootstrap resamples)",
          json_path)


@bench.command("index")
@click.option("--gallery", "gallery_size", default=1_000_000, show_default=True, help="Generated gallery vectors.")
@click.option("--queries", default=10_000, show_default=True)
@click.option("--dim", default=768, show_default=True)
@click.option("--classes", default=1000, show_default=True, help="Clusters (and labels) of the generated data.")
@click.option("--index", "indexes", default="ivfpq", show_default=True, help="Comma-separated index kinds.")
@click.option("--depth", default=10, show_default=True, help="Neighbours per query (recall@1 and @depth).")
@click.option("--nlist", type=int, help="IVF lists (default: sqrt(gallery)).")
@click.option("--nprobe", default=16, show_default=True)
@click.option("--pq-m", type=int, help="PQ sub-vectors (default: dim / 8).")
@click.option("--workdir", default="bench-index", show_default=True, help="Where the generated .npy files go (GBs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def bench_index_command(gallery_size, queries, dim, classes, indexes, depth, nlist, nprobe, pq_m, workdir, json_path):
    """Exact streamed search vs FAISS indexes on a generated gallery: time, recall, memory beyond the inputs."""
    from .bench.index import bench_index
    from .evaluate.search.indexes import IndexParams, check_kinds, faiss_module
    from .common.tables import format_table

    kinds = tuple(k.strip() for k in indexes.split(",") if k.strip())
    params = IndexParams(nlist=nlist, nprobe=nprobe, pq_m=pq_m)
    check_kinds(kinds, params)
    faiss_module()
    result = bench_index(workdir, gallery=gallery_size, queries=queries, dim=dim, classes=classes, kinds=kinds,
                         params=params, depth=depth)
    cols = [("kind", "method", "s"), ("build_seconds", "build s", ".1f"), ("build_cpu_seconds", "build CPU s", ".1f"),
            ("search_seconds", "search s", ".1f"), ("search_cpu_seconds", "search CPU s", ".1f"),
            ("recall@1", "recall@1", ".4f"), (f"recall@{depth}", f"recall@{depth}", ".4f"), ("top1", "top1", ".4f"),
            ("peak_extra_mib", "peak extra MiB", ".0f")]
    head = (f"{gallery_size} x {dim} gallery, {queries} queries, inputs {result['input_bytes'] / 2**30:.2f} GiB "
            "(memory-mapped; not counted)")
    _emit(result, head + "\n" + format_table(result["methods"], cols), json_path)


@bench.command("export")
@click.option("--model", "model_name", default="vit_base_patch16_224", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--workdir", default="bench-export", show_default=True, help="Receives checkpoint/ and task1.onnx.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_json_file)
def bench_export_command(model_name, precision, workdir, json_path):
    """Export time and file size for an architecture with random weights."""
    from .bench.export import bench_export
    from .common.tables import format_table

    writable_dir(workdir, "--workdir")
    result = bench_export(model_name, workdir, precision)
    cols = [("seconds", "export s", ".1f"), ("file_bytes", "file bytes", ",d"),
            ("unique_parameter_bytes", "parameter bytes", ",d"), ("size_ratio", "ratio", ".4f")]
    _emit(result, f"{model_name} ({precision})\n" + format_table([result], cols), json_path)


@bench.command("store")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="An export to run (default: a tiny stand-in export on 8x8 inputs, written to --workdir).")
@click.option("--small", default=10_000, show_default=True, help="Rows of the smaller memory run.")
@click.option("--large", default=1_000_000, show_default=True, help="Rows of the larger memory run.")
@click.option("--resume-rows", default=200_000, show_default=True, help="Rows of the kill-and-resume runs.")
@click.option("--shard-rows", default=65_536, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workdir", default="bench-store", show_default=True, help="Receives the stores (replaced).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def bench_store_command(model_path, small, large, resume_rows, shard_rows, batch_size, workdir, json_path):
    """Peak RSS of embed on generated data at two sizes; cost of resuming after a SIGKILL at 50 %."""
    import shutil

    from .common.tables import format_table
    from .bench.store import bench_store

    shutil.rmtree(workdir, ignore_errors=True)
    if model_path is None:
        from .common.contract import FORMAT_VERSION
        from .export.tiny import write_tiny_model
        from .infer.runtime.metadata import ModelInfo, Preprocessing

        info = ModelInfo(format_version=FORMAT_VERSION, task=1, checkpoint="none", checkpoint_sha256="0" * 64,
                         model="tiny-stand-in", embedding_dim=16, input_size=8, top_k=1, pool="cls",
                         selection="per-sample", precision="fp32", preprocessing=Preprocessing(resize=8, crop=8),
                         versions={}, provenance={"data": "generated", "backbone": "random"})
        model_path = write_tiny_model(Path(workdir) / "tiny.onnx", info)
    result = bench_store(Path(model_path), Path(workdir), small=small, large=large, resume_rows=resume_rows,
                         shard_rows=shard_rows, batch_size=batch_size)
    r = result["resume"]
    table = format_table(result["memory"], [("rows", "rows", ",d"), ("seconds", "embed s", ".1f"),
                                            ("max_rss_mib", "max RSS MiB", ".1f")])
    _emit(result, f"{table}\nRSS at {large:,} / (RSS at {small:,} + labels {result['labels_mib_at_large']:.1f} MiB): "
                  f"{result['rss_ratio']:.3f}\nresume after SIGKILL at 50 % of {r['rows']:,} rows: "
                  f"{r['killed_s']:.1f} s + {r['resumed_s']:.1f} s vs {r['uninterrupted_s']:.1f} s uninterrupted = "
                  f"{r['ratio']:.3f}; rows embedded {r['rows_computed']:,} = {r['work_ratio']:.3f} x; "
                  f"shards identical: {r['identical']}", json_path)


def main() -> None:
    cli(prog_name=Path(sys.argv[0]).name)  # `cli.py` from a checkout, `dpcompat` when installed


if __name__ == "__main__":
    main()
