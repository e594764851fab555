"""dpcompat command line: train, export, verify, embed, evaluate, demo, bench, doctor.

Each command parses its options, calls the library and prints. Bad input raises ``InputError``,
which becomes one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # `python cli.py` (or torchrun cli.py) from a checkout: run as dpcompat.cli (PEP 366) on this checkout's code.
    import runpy

    runpy.run_path(str(Path(__file__).resolve().with_name("checkout.py")))["import_checkout"]()
    __package__ = "dpcompat"

import click

from .common.contract import DISTILL_KINDS, GATHERS, POOLS, PRECISIONS, PROVIDERS, QUERIES, SELECTIONS
from .common.errors import InputError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as e:
            if ctx.meta.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train DualPrompt models, export them to ONNX and measure backward compatibility."""
    ctx.meta["debug"] = debug


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


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")


@cli.command()
@click.option("--data-path", default="data", show_default=True, help="Folder holding cifar-100-python/.")
@click.option("--download", is_flag=True, help="Fetch CIFAR-100 with torchvision if it is not under --data-path.")
@click.option("--output-dir", default="output", show_default=True, help="Writes checkpoint/task{N}_checkpoint.pth and metrics.jsonl.")
@click.option("--model", default="vit_base_patch16_224", show_default=True, help="timm ViT name, e.g. vit_tiny_patch16_224.")
@click.option("--input-size", type=int, help="Image size (default: from the model name).")
@click.option("--patch-size", type=int, help="Override the model's patch size (small experiments).")
@click.option("--embed-dim", type=int, help="Override the model's width (small experiments).")
@click.option("--depth", type=int, help="Override the model's number of blocks (small experiments).")
@click.option("--num-heads", type=int, help="Override the model's attention heads (small experiments).")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True, help="Start from pretrained backbone weights.")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False), help="Local timm .pth/.safetensors or original .npz.")
@click.option("--num-tasks", default=10, show_default=True, help="Tasks; must divide the number of classes.")
@click.option("--epochs", default=5, show_default=True)
@click.option("--batch-size", default=24, show_default=True, help="Per-device batch size.")
@click.option("--lr", default=0.03, show_default=True, help="Base learning rate, scaled by batch-size / 256.")
@click.option("--limit-per-class", type=int, help="Use only the first N train and test images of each class.")
@click.option("--pool-size", default=10, show_default=True, help="E-prompt pool size.")
@click.option("--prompt-length", default=5, show_default=True, help="E-prompt length.")
@click.option("--top-k", default=1, show_default=True, help="E-prompts chosen per sample.")
@click.option("--g-prompt-length", default=5, show_default=True)
@click.option("--g-prompt-layers", default="0,1", show_default=True, callback=_int_list)
@click.option("--e-prompt-layers", default="2,3,4", show_default=True, callback=_int_list)
@click.option("--selection", type=click.Choice(SELECTIONS), default="per-sample", show_default=True,
              help="Prompt selection when evaluating; batchwise is the reference's batch-dependent behaviour.")
@_GATHER
@click.option("--distill-weight", default=0.0, show_default=True, callback=_non_negative,
              help="λ of a feature-distillation term from the model after the previous task (0: none).")
@click.option("--distill-kind", type=click.Choice(DISTILL_KINDS), default="cosine", show_default=True,
              help="cosine: λ(1 - cos(f_t(x), f_t-1(x))), the original study's; bct: BCT's influence loss "
                   "(the previous task's classifier on the new embedding).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", default=2, show_default=True, help="Data-loading worker processes.")
@click.option("--seed", default=42, show_default=True)
@click.option("--resume", is_flag=True, help="Continue after the last complete task checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_path, download, output_dir, model, input_size, patch_size, embed_dim, depth, num_heads, pretrained, pretrained_weights, num_tasks, epochs,
          batch_size, lr, limit_per_class, pool_size, prompt_length, top_k, g_prompt_length, g_prompt_layers,
          e_prompt_layers, selection, gather, distill_weight, distill_kind, device, workers, seed, resume, quiet):
    """Train DualPrompt on Split CIFAR-100; one reference-layout checkpoint per task.

    Multi-GPU or multi-node: torchrun --nproc-per-node 8 cli.py train ...
    """
    from .train.loop import TrainOptions, train as run_training

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


def _chosen_tasks(task, tasks, all_tasks):
    if sum(x is not None and x is not False for x in (task, tasks, all_tasks)) != 1:
        raise InputError("give exactly one of --task N, --tasks 1,3,5 or --all")
    return None if all_tasks else ([task] if task is not None else list(tasks))


@cli.command("export")
@click.option("--task", type=int, help="Task number to export (task{N}_checkpoint.pth).")
@click.option("--tasks", callback=_int_list, help="Comma-separated task numbers, e.g. 1,3,5.")
@click.option("--all", "all_tasks", is_flag=True, default=None, help="Every task*_checkpoint.pth in --checkpoint-dir.")
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True)
@click.option("--output-dir", default="exports", show_default=True, help="Writes task{N}.onnx here.")
@click.option("--selection", type=click.Choice(SELECTIONS), default="per-sample", show_default=True,
              help="Prompt selection in the graph; batchwise is the reference's batch-dependent inference "
                   "(every image gets its batch's most frequent prompt).")
@click.option("--pool", type=click.Choice(POOLS), default="cls", show_default=True,
              help="Embedding: [CLS] after the final norm, or the mean of all tokens (the original study's report).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp16: half-precision weights and compute; input and output stay float32.")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (18 or newer; 20 needs onnxruntime >= 1.17).")
@_GATHER
@_QUERY
def export_command(task, tasks, all_tasks, checkpoint_dir, output_dir, selection, pool, precision, opset, gather, query):
    """Export task feature extractors to ONNX for hosts with onnxruntime and no PyTorch."""
    from .export.onnx_export import export_task, select_checkpoints

    chosen = select_checkpoints(checkpoint_dir, _chosen_tasks(task, tasks, all_tasks))
    for t, ckpt in chosen.items():
        r = export_task(ckpt, Path(output_dir) / f"task{t}.onnx", selection, pool, precision, opset, task=t,
                        gather=gather, query=query)
        click.echo(f"task {t}: {r.path} ({r.file_bytes / 1e6:.1f} MB, {r.size_ratio:.3f} x the unique parameter "
                   f"bytes, {r.seconds:.1f} s)")


@cli.command("verify")
@click.option("--task", type=int, help="Verify <export-dir>/task{N}.onnx against task{N}_checkpoint.pth.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An exported file; its metadata names the checkpoint.")
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True)
@click.option("--export-dir", default="exports", show_default=True, help="Where --task looks for task{N}.onnx.")
@click.option("--images", "images_dir", type=click.Path(), help="A folder: every jpg/jpeg/png/webp below it.")
@click.option("--dataset", help="A data set: cifar10:test, cifar100:test, folder:PATH, ...")
@click.option("--data-path", default="data", show_default=True, help="Folder holding the CIFAR folders.")
@click.option("--limit", default=64, show_default=True, help="At most this many images from --images or --dataset.")
@click.option("--random", "random_count", type=int, help="N random images (the default: 64).")
@click.option("--seed", default=0, show_default=True, help="Seed of --random.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.pass_context
def verify_command(ctx, task, onnx_path, checkpoint_dir, export_dir, images_dir, dataset, data_path, limit,
                   random_count, seed, provider, report_path):
    """Check an export against its PyTorch checkpoint at batch sizes 1, 7 and 32.

    Exit code 0: within tolerance; 1: parity failure; 2: bad input.
    """
    from .export.parity import format_table
    from .export.verify import Inputs, verify_export
    from .common.atomic import write_json
    from .train.checkpoint import checkpoint_path

    if (task is None) == (onnx_path is None):
        raise InputError("give exactly one of --task N or --onnx PATH")
    if random_count is not None and (images_dir or dataset):
        raise InputError("--random cannot be combined with --images or --dataset")
    ckpt = None
    if task is not None:
        onnx_path = Path(export_dir) / f"task{task}.onnx"
        if not onnx_path.is_file():
            raise InputError(f"{onnx_path}: no such ONNX file (run: python cli.py export --task {task})")
        ckpt = checkpoint_path(checkpoint_dir, task)
    inputs = Inputs(images_dir=images_dir, dataset=dataset, data_path=data_path,
                    count=random_count if random_count is not None else limit, seed=seed)
    report = verify_export(onnx_path, ckpt, checkpoint_dir, inputs, provider)
    c = report.context
    click.echo(f"{c['onnx']} ({c['model']}, task {c['task']}, {report.precision}, {report.selection}, pool {c['pool']}, "
               f"gather {c['gather']}, query {c['query']}) "
               f"vs {c['checkpoint']} on {c['provider']}: {c['count']} {c['inputs']}")
    click.echo(format_table(report))
    if report_path:
        try:
            write_json(report_path, report.to_dict())
        except OSError as e:
            raise InputError(f"{report_path}: cannot write ({e.strerror or e})") from None
    ctx.exit(0 if report.passed else 1)


# ---- commands: infer ----

_PROVIDER = click.option("--provider", type=click.Choice(PROVIDERS), default="auto",
                         show_default=True, help="onnxruntime execution provider; auto = CUDA when it really "
                                                 "initialises, else CPU (said on stderr). Never a silent fallback.")
_DATASET_HELP = "cifar10:train|test, cifar100:train|test (under --data-path) or folder:PATH (one sub-folder per class)."


@cli.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Exported ONNX file, e.g. exports/task3.onnx.")
@click.option("--dataset", required=True, help=_DATASET_HELP)
@click.option("--data-path", default="data", show_default=True, help="Folder holding cifar-10-batches-py/ or cifar-100-python/.")
@click.option("--store", default="embeddings", show_default=True, help="Writes <store>/<model-id>/<dataset>-<split>/.")
@click.option("--model-id", help="Store name of the model (default: the file stem, e.g. task3).")
@_PROVIDER
@click.option("--batch-size", default=64, show_default=True)
@click.option("--force", is_flag=True, help="Recompute even when the store holds this model's set of this data.")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out (listed in the manifest) instead of stopping.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(model, dataset, data_path, store, model_id, provider, batch_size, force, skip_bad, quiet):
    """Embed a data set with one exported model into the embedding store (onnxruntime only)."""
    from .infer.datasets import open_dataset
    from .infer.embed import embed_dataset

    r = embed_dataset(model, open_dataset(dataset, data_path), store, model_id=model_id, provider=provider,
                      batch_size=batch_size, force=force, skip_bad=skip_bad, progress=not quiet)
    if r.reused:
        click.echo(f"reused {r.set.path} ({r.set.count} x {r.set.dim}; same model file and data; --force recomputes)")
    else:
        skipped = len(r.set.manifest["skipped"])
        click.echo(f"wrote {r.set.path}: {r.set.count} x {r.set.dim} on {r.provider} in {r.seconds:.1f} s"
                   + (f", {skipped} unreadable image(s) skipped (listed in manifest.json)" if skipped else ""))


@cli.command()
@click.argument("model_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--models", "models_flag", is_flag=True,
              help="The ONNX files follow, oldest first: --models exports/task1.onnx ... exports/task10.onnx.")
@click.option("--exports-dir", type=click.Path(file_okay=False), help="Every .onnx file there, ordered by task.")
@click.option("--from-store", help="Comma-separated stored model ids (task1,task2,...): no ONNX files needed.")
@click.option("--query", default="cifar10:test", show_default=True, help="Query data set. " + _DATASET_HELP)
@click.option("--gallery", help="Gallery data set (default: the query set; each query's own image is then left out).")
@click.option("--data-path", default="data", show_default=True, help="Folder holding CIFAR's folders.")
@click.option("--store", default="embeddings", show_default=True, help="Embedding store (read, and filled when missing).")
@click.option("--out", default="reports", show_default=True, help="Folder for compatibility.{json,csv,md} and heatmaps.")
@click.option("--k", default=5, show_default=True, help="Neighbours of the kNN majority vote.")
@click.option("--include-self", is_flag=True, help="Keep each query's own image in its gallery (the original study's protocol).")
@_PROVIDER
@click.option("--batch-size", default=64, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out when embedding.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(model_files, models_flag, exports_dir, from_store, query, gallery, data_path, store, out, k,
             include_self, provider, batch_size, skip_bad, quiet):
    """Backward compatibility of every newer model's queries against every older model's gallery.

    Writes compatibility.json/.csv/.md and heatmaps (rows: query model, columns: gallery model).
    """
    from .evaluate.pipeline import collect_from_models, collect_from_store, evaluate_sets, model_files as find_models
    from .evaluate.report import summary, write_reports
    from tqdm import tqdm

    gallery = gallery or query
    if from_store is not None:
        if model_files or exports_dir:
            raise InputError("--from-store evaluates stored sets only: drop the ONNX files / --exports-dir")
        q, g = collect_from_store([m.strip() for m in from_store.split(",") if m.strip()], query, gallery, store)
    else:
        files = find_models(model_files, exports_dir)
        q, g = collect_from_models(files, query, gallery, data_path, store, by_task=bool(exports_dir),
                                   provider=provider, batch_size=batch_size, skip_bad=skip_bad, progress=not quiet)
    with tqdm(desc="cells", unit="cell", disable=quiet, file=sys.stderr) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        ev = evaluate_sets(q, g, k=k, include_self=include_self, progress=progress)
    written = write_reports(ev.result, ev.models, ev.query, ev.gallery, ev.protocol, out)
    click.echo(summary(ev.result, ev.models, ev.query, ev.gallery, ev.protocol))
    click.echo(f"reports: {', '.join(str(p) for p in written)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json):
    """Versions, onnxruntime providers (listed and actually working) and GPUs of this host."""
    import json

    from .infer.session import doctor_report, format_doctor

    report = doctor_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_doctor(report))

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
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True)
@click.option("--batch-sizes", default="1,8,32,128", show_default=True, callback=_int_list)
@click.option("--repeats", default=5, show_default=True, help="Timed runs per batch size (after one warm-up); the median is reported.")
@click.option("--compare-torch", is_flag=True, help="Also time the source checkpoint in PyTorch eager, same device and batch.")
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure as JSON here.")
def bench_embed_command(model_path, provider, batch_sizes, repeats, compare_torch, checkpoint_dir, json_path):
    """images/s of an export per batch size, as a fraction of the measured matmul peak, optionally vs PyTorch."""
    from .infer.bench import bench_embed, format_table

    runner = None
    if compare_torch:
        from .export.bench import torch_throughput

        def torch_runner(info, device, sizes):
            ckpt = Path(checkpoint_dir) / info.checkpoint
            if not ckpt.is_file():
                raise InputError(f"{ckpt}: the source checkpoint of {model_path} is needed for --compare-torch")
            return torch_throughput(ckpt, info, device, sizes, repeats)
        runner = torch_runner

    try:
        result = bench_embed(model_path, provider, batch_sizes, repeats, runner,
                             warn=lambda m: click.echo(m, err=True))
    except ValueError as e:
        raise InputError(str(e)) from None
    cols = [("batch_size", "batch", "d"), ("images_per_s", "onnxruntime img/s", ".2f"),
            ("fraction_of_peak", "of matmul peak", ".1%"), ("torch_images_per_s", "torch img/s", ".2f"),
            ("speedup_vs_torch", "ort/torch", ".2f")]
    peak = result["matmul_peak"]
    head = (f"{model_path} on {result['provider']} ({result['precision']}), {result['flops_per_image'] / 1e9:.1f} "
            f"GFLOP/image, measured {peak['precision']} matmul peak {peak['peak'] / 1e9:.0f} GFLOP/s")
    pre = result["preprocessing_images_per_s_per_process"]
    tail = "preprocessing per process: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in pre.items())
    _emit(result, "\n".join([head, format_table(result["onnxruntime"], cols), tail]), json_path)


@bench.command("evaluate")
@click.option("--models", default=10, show_default=True)
@click.option("--queries", default=10_000, show_default=True, help="Query and gallery size (the same split).")
@click.option("--dim", default=768, show_default=True)
@click.option("--classes", default=10, show_default=True)
@click.option("--workdir", default="bench-evaluate", show_default=True, help="Where the synthetic store is written.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def bench_evaluate_command(models, queries, dim, classes, workdir, json_path):
    """Time and peak memory of the compatibility evaluation on random unit vectors."""
    from .evaluate.bench import bench_evaluate
    from .infer.bench import format_table

    result = bench_evaluate(workdir, models, queries, dim, classes)
    cols = [("models", "models", "d"), ("queries", "queries x gallery", "d"), ("dim", "dim", "d"),
            ("cells", "cells", "d"), ("seconds", "evaluate s", ".1f"), ("peak_extra_mib", "peak extra MiB", ".0f"),
            ("max_rss_mib", "max RSS MiB", ".0f")]
    _emit(result, format_table([result], cols), json_path)


@bench.command("export")
@click.option("--model", "model_name", default="vit_base_patch16_224", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--workdir", default="bench-export", show_default=True, help="Receives checkpoint/ and task1.onnx.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def bench_export_command(model_name, precision, workdir, json_path):
    """Export time and file size for an architecture with random weights."""
    from .export.bench import bench_export
    from .infer.bench import format_table

    result = bench_export(model_name, workdir, precision)
    cols = [("seconds", "export s", ".1f"), ("file_bytes", "file bytes", ",d"),
            ("unique_parameter_bytes", "parameter bytes", ",d"), ("size_ratio", "ratio", ".4f")]
    _emit(result, f"{model_name} ({precision})\n" + format_table([result], cols), json_path)


def main() -> None:
    cli(prog_name="cli.py")


if __name__ == "__main__":
    main()
