"""``bench``: benchmarks with trustworthy figures; each bench's module measures and formats its table,
these commands only print it (and write every figure as JSON with --json)."""
from __future__ import annotations

import click

from ..common.atomic import write_json
from ..common.contract import PRECISIONS
from ..common.outputs import require_space, writable_dir
from .options import (JSON, MAX_BATCH, MAX_WORKERS, NLIST, NPROBE, PQ_M, POSITIVE, THREADS, TRT, Float, Int,
                      architecture, batch_size, int_list, provider, runtime)

MAX_DIM = 65_536  # generated vectors' dimension (the embedding's bound in the ONNX contract)


@click.group()
def bench():
    """Benchmarks with trustworthy figures: table on the terminal, everything in JSON (--json)."""


def emit(result: dict, table: str, json_path) -> None:
    click.echo(table)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


@bench.command("embed")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="An exported .onnx file.")
@runtime(provider("cpu"), THREADS, *TRT)
@click.option("--batch-sizes", default="1,8,32,128", show_default=True, callback=int_list(1, MAX_BATCH))
@click.option("--repeats", type=Int(1, 1000), default=5, show_default=True,
              help="Timed runs per batch size (after one warm-up); the median is reported.")
@click.option("--compare-torch", is_flag=True, help="Also time the source checkpoint in PyTorch eager, same device and batch.")
@click.option("--checkpoint-dir", help="With --compare-torch: where the source checkpoint is (default: found as "
                                       "verify finds it).")
@click.option("--workers", "worker_counts", default="1,2", show_default=True, callback=int_list(0, MAX_WORKERS),
              help="Worker counts whose input pipeline (decode + preprocess, no model) is timed, alternately.")
@click.option("--photos", type=Int(0, 100_000), default=384, show_default=True,
              help="Photo-sized (500x375) JPEGs generated under --workdir for the input pipeline; 0: skip it.")
@click.option("--pipeline-dataset", help="Time the input pipeline on this data set instead (e.g. folder:/srv/gallery).")
@click.option("--workdir", default="bench-embed", show_default=True, help="Where the generated photos are kept.")
@JSON
@click.option("--singles-dir", type=click.Path(file_okay=False),
              help="With a bundle: where its tasks' single files task<N>.onnx are (default: the bundle's folder).")
@click.option("--against", type=click.Path(dir_okay=False),
              help="Time --model against this file of the same task (e.g. int8 against fp32) in alternating rounds.")
def bench_embed_command(model_path, json_path, **options):
    """images/s of an export per batch size, as a fraction of the measured matmul peak, optionally vs PyTorch;
    the input pipeline per worker count, and which of the two limits embed.

    A bundle: images x tasks per second of the bundle and of its tasks' single files, timed in
    alternating rounds on the same images and threads, and their ratio."""
    from ..bench.embed import bench_embed_file, format_embed

    result = bench_embed_file(model_path, warn=lambda m: click.echo(m, err=True), **options)
    emit(result, format_embed(result), json_path)


@bench.command("evaluate")
@click.option("--models", type=Int(1, 1000), default=10, show_default=True)
@click.option("--queries", type=Int(2), default=10_000, show_default=True, help="Query and gallery size (the same split).")
@click.option("--dim", type=Int(1, MAX_DIM), default=768, show_default=True)
@click.option("--classes", type=POSITIVE, default=10, show_default=True)
@click.option("--separation", type=Float(0, 100), default=0.0, show_default=True,
              help="Class structure: each vector is its label's centre times this plus random noise (0: none).")
@click.option("--workdir", default="bench-evaluate", show_default=True, help="Where the synthetic store is written.")
@click.option("--full-map", is_flag=True, help="Evaluate with the exact mAP (evaluate --full-map).")
@click.option("--search-provider", default="numpy", show_default=True,
              help="numpy, or cpu / cuda[:N]: the onnxruntime search graph (evaluate --search-provider).")
@click.option("--search-precision", type=click.Choice(("fp32", "fp16")), default="fp32", show_default=True)
@click.option("--repeats", type=Int(1, 100), default=3, show_default=True,
              help="Rounds of products alone then evaluation, back to back; the ratio is their median.")
@JSON
def bench_evaluate_command(models, queries, dim, classes, separation, workdir, json_path, repeats, **search):
    """Time and peak memory of the compatibility evaluation on random unit vectors, its products alone, and
    the ranking's CPU time per similarity (run at --dim 768 --classes 10 and --dim 256 --classes 100)."""
    from ..bench import evaluate

    writable_dir(workdir, "--workdir")
    # each model's set: float32 [queries, dim] embeddings and int64 [queries] labels
    require_space(workdir, models * queries * (4 * dim + 8), "--workdir")
    result = evaluate.bench_evaluate(workdir, models=models, n=queries, dim=dim, classes=classes, repeats=repeats,
                                     separation=separation, **search)
    emit(result, evaluate.format_evaluate(result), json_path)


@bench.command("adapt")
@click.option("--rows", type=Int(2, 2**31 - 1), default=100_000, show_default=True, help="Generated paired fit items.")
@click.option("--dim", type=Int(1, MAX_DIM), default=768, show_default=True)
@click.option("--kinds", default="orthogonal,linear,affine", show_default=True,
              help="Adapter kinds fitted, comma-separated; the first one's adapter transforms the gallery.")
@click.option("--repeats", type=Int(1, 1000), default=5, show_default=True, help="Timed runs of the kernel (median).")
@click.option("--workdir", default="bench-adapt", show_default=True, help="Where the synthetic store is written.")
@JSON
def bench_adapt_command(rows, dim, kinds, repeats, workdir, json_path):
    """Fit time and peak memory of each adapter kind on generated pairs, and the gallery transform's FLOP/s
    as a fraction of the measured matrix-product peak."""
    from ..bench.adapt import bench_adapt, format_adapt
    from ..common.contract import ADAPTER_KINDS, check_choice

    chosen = [check_choice("--kinds", k.strip(), ADAPTER_KINDS) for k in kinds.split(",")]
    writable_dir(workdir, "--workdir")
    require_space(workdir, 3 * rows * (4 * dim + 8), "--workdir")  # old, new and the transformed gallery
    result = bench_adapt(workdir, rows=rows, dim=dim, kinds=chosen, repeats=repeats)
    emit(result, format_adapt(result), json_path)


@bench.command("index")
@click.option("--gallery", "gallery_size", type=Int(1, 2**31 - 1), default=1_000_000, show_default=True,
              help="Generated gallery vectors.")
@click.option("--queries", type=Int(1, 2**31 - 1), default=10_000, show_default=True)
@click.option("--dim", type=Int(1, MAX_DIM), default=768, show_default=True)
@click.option("--classes", type=Int(1, 2**31 - 1), default=1000, show_default=True,
              help="Clusters (and labels) of the generated data.")
@click.option("--index", "indexes", default="ivfpq", show_default=True, help="Comma-separated index kinds.")
@click.option("--depth", type=Int(1, 10_000), default=10, show_default=True,
              help="Neighbours per query (recall@1 and @depth).")
@NLIST
@NPROBE
@PQ_M
@click.option("--workdir", default="bench-index", show_default=True, help="Where the generated .npy files go (GBs).")
@JSON
def bench_index_command(gallery_size, queries, dim, classes, indexes, depth, nlist, nprobe, pq_m, workdir, json_path):
    """Exact streamed search vs FAISS indexes on a generated gallery: time, recall, memory beyond the inputs."""
    from ..bench.index import bench_index, format_index
    from ..evaluate.search.indexes import IndexParams
    from ..evaluate.search.production import production_options

    production = production_options(indexes=[indexes], params=IndexParams(nlist=nlist, nprobe=nprobe, pq_m=pq_m))
    result = bench_index(workdir, gallery=gallery_size, queries=queries, dim=dim, classes=classes,
                         kinds=production.indexes, params=production.params, depth=depth)
    emit(result, format_index(result), json_path)


@bench.command("export")
@click.option("--model", "model_name", default="vit_base_patch16_224", show_default=True, callback=architecture)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--workdir", default="bench-export", show_default=True, help="Receives checkpoint/ and task1.onnx.")
@JSON
def bench_export_command(model_name, precision, workdir, json_path):
    """Export time and file size for an architecture with random weights."""
    from ..bench.export import bench_export, format_export

    writable_dir(workdir, "--workdir")
    result = bench_export(model_name, workdir, precision)
    emit(result, format_export(result), json_path)


@bench.command("store")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="An export to run (default: a tiny stand-in export on 8x8 inputs, written to --workdir).")
@click.option("--small", type=Int(1, 2**31), default=10_000, show_default=True, help="Rows of the smaller memory run.")
@click.option("--large", type=Int(2, 2**31), default=1_000_000, show_default=True, help="Rows of the larger memory run.")
@click.option("--resume-rows", type=Int(2, 2**31), default=200_000, show_default=True,
              help="Rows of the kill-and-resume runs.")
@click.option("--shard-rows", type=Int(1, 2**31), default=65_536, show_default=True)
@batch_size(256)
@click.option("--workdir", default="bench-store", show_default=True, help="Receives the stores (replaced).")
@JSON
def bench_store_command(model_path, workdir, json_path, **sizes):
    """Peak RSS of embed on generated data at two sizes; cost of resuming after a SIGKILL at 50 %."""
    from pathlib import Path

    from ..bench.store import bench_store, format_store

    result = bench_store(model_path, Path(workdir), **sizes)
    emit(result, format_store(result), json_path)
