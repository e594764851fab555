"""``demo`` (the whole chain on a small setting) and ``doctor`` (what this host can run)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..common.contract import DISTILL_KINDS
from ..common.outputs import writable_dir
from .options import AUTO_PROVIDER, Float, data_path, download


@click.command()
@click.option("--workdir", default="demo-run", show_default=True, help="Everything the demo writes goes here.")
@data_path("Real CIFAR-100/CIFAR-10 (python layout) are used when present here.")
@download("Fetch CIFAR-100 and CIFAR-10 first (needs network).")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False),
              help="Local ViT-Tiny weights (timm .pth/.safetensors or .npz); else downloaded when the network allows.")
@click.option("--smoke", is_flag=True, help="A miniature model on 32x32 inputs: the same chain in well under a minute.")
@click.option("--distill-weight", type=Float(0), default=0.0, show_default=True,
              help="Train with feature distillation of this weight (compare with a run without it).")
@click.option("--distill-kind", type=click.Choice(DISTILL_KINDS), default="cosine", show_default=True)
@AUTO_PROVIDER
def demo(workdir, data_path, download, pretrained_weights, smoke, distill_weight, distill_kind, provider):
    """Run train -> export -> verify -> embed -> evaluate on a small setting, offline if need be."""
    from ..demo import DEMO, SMOKE, next_commands, run_demo

    writable_dir(workdir, "--workdir")
    result = run_demo(workdir, data_path, download, pretrained_weights, smoke, provider, log=click.echo,
                      distill=(distill_weight, distill_kind))
    click.echo(f"\ndemo finished in {result['seconds']:.0f} s, {result['cpu_seconds']:.0f} CPU-s "
               f"({', '.join(f'{k} {v} s' for k, v in result['times'].items())})")
    for note in result["notes"]:
        click.echo(f"NOTE: {note}")
    click.echo(f"report: {Path(workdir) / 'reports' / 'compatibility.md'}")
    click.echo(f"heatmap: {Path(workdir) / 'reports' / 'heatmap_top1.png'}")
    click.echo("\nnext, each stage on its own with the demo's files (run from this folder):")
    for line in next_commands(workdir, SMOKE if smoke else DEMO, launcher=launcher()):
        click.echo(f"  {line}")


def launcher() -> str:
    """How this process was started, as a command prefix that works from the current folder: the
    interpreter and script (``.venv/bin/python cli.py``), or the installed ``dpcompat``."""
    if not sys.argv[0].endswith(".py"):
        return Path(sys.argv[0]).name
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    return f"{shlex.quote(str(python))} {shlex.quote(sys.argv[0])}"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json):
    """Versions, onnxruntime providers (listed and actually working) and GPUs of this host."""
    import json

    from ..infer.runtime.session import doctor_report, format_doctor

    report = doctor_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_doctor(report))
