"""``embed``: a data set through an export into the embedding store (onnxruntime only)."""
from __future__ import annotations

import click

from ..common.cifar import download_named
from ..common.outputs import writable_dir
from .options import (AUTO_PROVIDER, DATASET_HELP, QUIET, RAY, THREADS, TRT, Int, batch_size, data_path, download,
                      runtime, skip_bad, workers)


@click.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Exported ONNX file, e.g. exports/task3.onnx.")
@click.option("--dataset", required=True, help=DATASET_HELP)
@data_path("Folder holding cifar-10-batches-py/ or cifar-100-python/.")
@download()
@click.option("--store", default="embeddings", show_default=True,
              help="Writes <store>/<model-id>/<data-key>/ (the key names the data's resolved location).")
@click.option("--model-id", help="Store name of the model (default: the file stem, e.g. task3).")
@runtime(AUTO_PROVIDER, THREADS, *TRT, workers(), batch_size(),
         skip_bad("Leave unreadable images out (listed in the manifest) instead of stopping."), QUIET, *RAY)
@click.option("--shard-rows", type=Int(1, 2**31), default=65_536, show_default=True,
              help="Rows per shard file: memory is bounded by one shard, and a killed run resumes after the last complete one.")
@click.option("--force", is_flag=True, help="Recompute even when the store holds this model's set of this data.")
def embed(model, dataset, data_path, download, store, model_id, runtime, shard_rows, force):
    """Embed a data set with one exported model into the embedding store (onnxruntime only).

    A bundle (export --bundle) writes, in one pass over the images, one set per task,
    <model-id>.task<N>, and one for its frozen backbone, <model-id>.backbone; --batch-size and
    --shard-rows then count the rows of all of them (images x tasks).
    """
    from ..infer.data.datasets import open_dataset
    from ..infer.embed import describe_result, embed_model

    writable_dir(store, "--store")
    if download:
        download_named(data_path, dataset)
    results = embed_model(model, open_dataset(dataset, data_path), store, runtime=runtime, model_id=model_id,
                          shard_rows=shard_rows, force=force)
    for r in results:
        click.echo(describe_result(r))

