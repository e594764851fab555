"""dpcompat command line: train, export, verify, embed, evaluate, demo, bench, doctor.

Each command parses its options, calls the library and prints. Bad input raises ``InputError``,
which becomes one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import sys
from pathlib import Path

# This checkout's train/ export/ infer/ evaluate/ must win over unrelated installed distributions
# with the same top-level names (Hugging Face's `evaluate`), also under `python -P` / PYTHONSAFEPATH.
_ROOT = str(Path(__file__).resolve().parent)
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import click  # noqa: E402

from infer.errors import InputError  # noqa: E402


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
@click.option("--selection", type=click.Choice(["per-sample", "batchwise"]), default="per-sample", show_default=True,
              help="Prompt selection when evaluating; batchwise is the reference's batch-dependent behaviour.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", default=2, show_default=True, help="Data-loading worker processes.")
@click.option("--seed", default=42, show_default=True)
@click.option("--resume", is_flag=True, help="Continue after the last complete task checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_path, download, output_dir, model, input_size, patch_size, embed_dim, depth, num_heads, pretrained, pretrained_weights, num_tasks, epochs,
          batch_size, lr, limit_per_class, pool_size, prompt_length, top_k, g_prompt_length, g_prompt_layers,
          e_prompt_layers, selection, device, workers, seed, resume, quiet):
    """Train DualPrompt on Split CIFAR-100; one reference-layout checkpoint per task.

    Multi-GPU or multi-node: torchrun --nproc-per-node 8 cli.py train ...
    """
    from train.loop import TrainOptions, train as run_training

    opts = TrainOptions(data_path=data_path, output_dir=output_dir, download=download, num_tasks=num_tasks,
                        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit_per_class=limit_per_class,
                        device=device, workers=workers, resume=resume, quiet=quiet, selection=selection,
                        pretrained=pretrained, pretrained_weights=pretrained_weights)
    arch = dict(model=model, img_size=input_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                num_heads=num_heads, pool_size=pool_size, prompt_length=prompt_length, top_k=top_k,
                g_prompt_length=g_prompt_length, g_prompt_layers=g_prompt_layers, e_prompt_layers=e_prompt_layers)
    run_training(opts, arch, log=click.echo)

# ---- commands: export ----

# ---- commands: infer ----

# ---- commands: demo ----

# ---- commands: bench ----


def main() -> None:
    cli(prog_name="cli.py")


if __name__ == "__main__":
    main()
