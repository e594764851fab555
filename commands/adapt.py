"""``adapt``: fit a compatibility adapter between two models' stored embeddings of the same fit items,
and ship it (an ONNX file, the transformed gallery)."""
from __future__ import annotations

import click

from ..common.contract import ADAPTER_DIRECTIONS, ADAPTER_KINDS
from .options import DATASET_HELP, SEED, Float, Int, data_path


@click.command()
@click.option("--deployed", required=True, help="Stored model id of the deployed (older) model, whose gallery is indexed.")
@click.option("--candidate", required=True, help="Stored model id of the candidate (newer) model.")
@click.option("--fit-data", required=True, help="The fit items: a data set both models embedded into --store, "
                                                 "disjoint from the evaluation's query and gallery data. " + DATASET_HELP)
@click.option("--kind", type=click.Choice(ADAPTER_KINDS), default="orthogonal", show_default=True,
              help="orthogonal: a rotation (Procrustes; equal dimensions, keeps cosine geometry); linear / affine: "
                   "ridge least squares (affine with a bias).")
@click.option("--direction", type=click.Choice(ADAPTER_DIRECTIONS), default="query", show_default=True,
              help="query: the candidate's queries into the deployed space (nothing stored changes); gallery: the "
                   "deployed gallery into the candidate's space (one matrix product per stored vector).")
@click.option("--ridge", type=Float(0), help="Relative ridge strength of linear/affine (default: chosen on a held-out "
                                             "tenth of the fit items).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the held-out split.")
@click.option("--store", default="embeddings", show_default=True, help="Embedding store holding the fit sets.")
@data_path()
@click.option("--out", help="Adapter file, ending in .adapter.npz (default: adapters/<source>-to-<target>.adapter.npz).")
@click.option("--export", type=click.Path(dir_okay=False),
              help="Also write ONNX: a query adapter inside the candidate's model file (--model), a gallery adapter alone.")
@click.option("--model", type=click.Path(dir_okay=False),
              help="With --export and --direction query: the candidate's single-task export the fit set was embedded with.")
@click.option("--apply", is_flag=True, help="With --direction gallery: write the deployed gallery (--gallery) "
                                            "transformed as a stored set, shard by shard.")
@click.option("--gallery", help="With --apply: the deployed model's gallery data set (stored in --store). " + DATASET_HELP)
@click.option("--gallery-id", help="With --apply: store id of the transformed gallery (default: <source>-to-<target>).")
@click.option("--shard-rows", type=Int(1, 2**31), help="With --apply: rows per shard (default: the gallery's).")
def adapt(**options):
    """Fit an adapter from two stored sets of the same items (numpy only, float64), write it as an
    .adapter.npz, and optionally as ONNX (--export) or as a transformed gallery (--apply).

    The report judges it with: evaluate ... --adapters DIR."""
    from ..evaluate.adapt.run import AdaptOptions, describe, run_adapt

    click.echo(describe(run_adapt(AdaptOptions(**options), warn=lambda m: click.echo(m, err=True))))
