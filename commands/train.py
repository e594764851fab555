"""``train`` and ``accuracy``: the PyTorch stage."""
from __future__ import annotations

import click

from ..common.contract import DISTILL_KINDS, SELECTIONS, GATHERS
from ..common.outputs import writable_dir
from .options import (GATHER, POSITIVE, QUERY, QUIET, SEED, Float, Int,
                      architecture, batch_size, data_path, device, download, int_list, workers)

# train's option -> the architecture keyword of DualPromptConfig.from_name
ARCH = {"model": "model", "input_size": "img_size", "patch_size": "patch_size", "embed_dim": "embed_dim",
        "depth": "depth", "num_heads": "num_heads", "pool_size": "pool_size", "prompt_length": "prompt_length",
        "top_k": "top_k", "g_prompt_length": "g_prompt_length", "g_prompt_layers": "g_prompt_layers",
        "e_prompt_layers": "e_prompt_layers"}
MAX_SIZE, MAX_WIDTH, MAX_BLOCKS, MAX_PROMPTS = 4096, 16_384, 1024, 10_000  # train.model's bounds on a config

CIFAR100 = "Folder holding cifar-100-python/."


@click.command()
@data_path(CIFAR100)
@download("Fetch CIFAR-100 (the official tarball, md5-checked) if it is not under --data-path.")
@click.option("--output-dir", default="output", show_default=True, help="Writes checkpoint/task{N}_checkpoint.pth and metrics.jsonl.")
@click.option("--model", default="vit_base_patch16_224", show_default=True, callback=architecture,
              help="timm ViT name, e.g. vit_tiny_patch16_224.")
@click.option("--input-size", type=Int(1, MAX_SIZE), help="Image size (default: from the model name).")
@click.option("--patch-size", type=Int(1, MAX_SIZE), help="Override the model's patch size (small experiments).")
@click.option("--embed-dim", type=Int(1, MAX_WIDTH), help="Override the model's width (small experiments).")
@click.option("--depth", type=Int(1, MAX_BLOCKS), help="Override the model's number of blocks (small experiments).")
@click.option("--num-heads", type=Int(1, MAX_BLOCKS), help="Override the model's attention heads (small experiments).")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True, help="Start from pretrained backbone weights.")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False), help="Local timm .pth/.safetensors or original .npz.")
@click.option("--num-tasks", type=Int(1, 1000), default=10, show_default=True, help="Tasks; must divide the number of classes.")
@click.option("--epochs", type=Int(1, 10_000), default=5, show_default=True)
@batch_size(24, "Per-device batch size.")
@click.option("--lr", type=Float(0, above=True), default=0.03, show_default=True, help="Base learning rate, scaled by batch-size / 256.")
@click.option("--limit-per-class", type=POSITIVE, help="Use only the first N train and test images of each class.")
@click.option("--pool-size", type=Int(1, MAX_PROMPTS), default=10, show_default=True, help="E-prompt pool size.")
@click.option("--prompt-length", type=Int(1, MAX_PROMPTS), default=5, show_default=True, help="E-prompt length.")
@click.option("--top-k", type=Int(1, MAX_PROMPTS), default=1, show_default=True, help="E-prompts chosen per sample.")
@click.option("--g-prompt-length", type=Int(1, MAX_PROMPTS), default=5, show_default=True)
@click.option("--g-prompt-layers", default="0,1", show_default=True, callback=int_list(0, MAX_BLOCKS - 1))
@click.option("--e-prompt-layers", default="2,3,4", show_default=True, callback=int_list(0, MAX_BLOCKS - 1))
@click.option("--selection", type=click.Choice(SELECTIONS), default="per-sample", show_default=True,
              help="Prompt selection when evaluating; batchwise is the reference's batch-dependent behaviour.")
@GATHER
@click.option("--distill-weight", type=Float(0), default=0.0, show_default=True,
              help="λ of a feature-distillation term from the model after the previous task (0: none).")
@click.option("--distill-kind", type=click.Choice(DISTILL_KINDS), default="cosine", show_default=True,
              help="cosine: λ(1 - cos(f_t(x), f_t-1(x))), the original study's; bct: BCT's influence loss "
                   "(the previous task's classifier on the new embedding).")
@click.option("--device", default="auto", show_default=True, callback=device, help="auto, cpu, cuda or cuda:N.")
@workers(2, "Data-loading worker processes.")
@click.option("--seed", type=SEED, default=42, show_default=True)
@click.option("--resume", is_flag=True, help="Continue after the last complete task checkpoint.")
@QUIET
def train(**options):
    """Train DualPrompt on Split CIFAR-100; one reference-layout checkpoint per task.

    Multi-GPU or multi-node: torchrun --nproc-per-node 8 cli.py train ...
    """
    from ..train.loop import TrainOptions, train as run_training

    writable_dir(options["output_dir"], "--output-dir")
    arch = {key: options.pop(name) for name, key in ARCH.items()}
    run_training(TrainOptions(**options), arch, log=click.echo)


@click.command()
@click.option("--checkpoint-dir", default="output/checkpoint", show_default=True,
              help="Every task{N}_checkpoint.pth there (1..T) is evaluated.")
@data_path(CIFAR100)
@click.option("--out", default="accuracy", show_default=True, help="Writes accuracy.json, accuracy.csv, accuracy_heatmap.png.")
@batch_size(None, "Evaluation batch size (default: the checkpoints' args.batch_size).")
@click.option("--selection", type=click.Choice(SELECTIONS),
              help="Prompt selection (default: batchwise when the checkpoints' args.batchwise_prompt is set).")
@click.option("--gather", type=click.Choice(GATHERS),
              help="E-prompt gather (default: the one train recorded, else per-sample); reference = the public "
                   "reference's, key/value roles by batch position.")
@QUERY
@click.option("--limit-per-class", type=POSITIVE, help="First N test images per class (default: the checkpoints' own).")
@click.option("--device", default="auto", show_default=True, callback=device, help="auto, cpu, cuda or cuda:N.")
@click.option("--bf16/--fp32", default=True, show_default=True,
              help="On CUDA: bf16 autocast as train evaluates, or float32 as the reference evaluates.")
@QUIET
def accuracy(**options):
    """Accuracy matrix, average accuracy and forgetting of saved task checkpoints on Split CIFAR-100.

    Several GPUs: torchrun --nproc-per-node 8 cli.py accuracy ...
    """
    from ..train.accuracy import AccuracyOptions, evaluate_checkpoints, format_table

    result = evaluate_checkpoints(AccuracyOptions(**options))
    if result.written:
        click.echo(format_table(result))
        click.echo(f"wrote {', '.join(str(p) for p in result.written)}")
