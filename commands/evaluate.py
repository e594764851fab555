"""``evaluate``: backward compatibility of every newer model's queries against every older model's gallery,
and where production search happens (indexes, backfilling, reduced precision)."""
from __future__ import annotations

import click

from .options import (AUTO_PROVIDER, DATASET_HELP, NLIST, NPROBE, PQ_M, QUIET, SEED, THREADS, TRT, Float, Int, batch_size,
                      data_path, download, grouped, runtime, skip_bad, workers)

# FAISS takes these as 32-bit integers; beyond the bounds they are only memory and time
PRODUCTION = (
    click.option("--index", "indexes", multiple=True, help="Also search through FAISS indexes: flat, hnsw, ivf, "
                 "ivfpq (comma-separated or repeated; needs the [faiss] extra). Writes production.json/.md."),
    click.option("--index-depth", type=Int(5, 10_000), default=100, show_default=True,
                 help="K: neighbours each index search returns."),
    NLIST, NPROBE, PQ_M,
    click.option("--pq-bits", type=Int(1, 16), help="Bits per PQ code (default: 8, fewer for galleries under 256 items)."),
    click.option("--hnsw-m", type=Int(2, 512), default=32, show_default=True, help="HNSW links per node."),
    click.option("--ef-construction", type=Int(1, 2**16), default=100, show_default=True,
                 help="HNSW candidates while building."),
    click.option("--ef-search", type=Int(1, 2**16), default=64, show_default=True, help="HNSW candidates while searching."),
    click.option("--backfill", is_flag=True, help="Backfilling curves: every metric as the old gallery is re-embedded."),
    click.option("--backfill-pairs", help="NEW:OLD model ids, comma-separated (default: each model vs the first and "
                                          "vs the previous)."),
    click.option("--backfill-steps", type=Int(1, 1000), default=10, show_default=True, help="f = 0, 1/steps, ..., 1."),
    click.option("--backfill-seed", type=SEED, default=0, show_default=True, help="Seed of the random re-embedding order."),
    click.option("--backfill-order", type=click.Path(dir_okay=False),
                 help="Re-embedding order: gallery row numbers, one per line."),
    click.option("--gallery-precision", "gallery_precisions", multiple=True,
                 help="Also store the galleries as fp16 and/or int8 (scalar-quantised) and report the metric change."))


MLFLOW = (
    click.option("--mlflow", "mlflow_uri", is_flag=False, flag_value="", metavar="[URI]",
                 help="Also log the evaluation as one MLflow run (the [mlflow] extra): to tracking URI, or bare, to "
                      "MLflow's default (MLFLOW_TRACKING_URI, else its local store here). Put it after the model files "
                      "or give it a URI."),
    click.option("--mlflow-experiment", help="MLflow experiment of the run (default: MLflow's Default)."),
    click.option("--mlflow-run-name", help="Name of the MLflow run (default: one MLflow makes up)."))


def mlflow_options(mlflow_uri, mlflow_experiment, mlflow_run_name):
    """The MLflow group's values as the library's MlflowTarget, checked before any work (None: no --mlflow)."""
    from ..evaluate.report.mlflow_log import mlflow_target

    return mlflow_target(mlflow_uri, experiment=mlflow_experiment, run_name=mlflow_run_name)


def production_options(indexes, index_depth, nlist, nprobe, pq_m, pq_bits, hnsw_m, ef_construction, ef_search,
                       gallery_precisions, **backfill):
    """The production group's values as the library's ProductionOptions (checked)."""
    from ..evaluate.search.indexes import IndexParams
    from ..evaluate.search.production import production_options as build

    params = IndexParams(nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_bits=pq_bits, hnsw_m=hnsw_m,
                         ef_construction=ef_construction, ef_search=ef_search)
    return build(indexes=indexes, gallery_precisions=gallery_precisions, depth=index_depth, params=params, **backfill)


@click.command()
@click.argument("model_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--models", "models_flag", is_flag=True,
              help="The ONNX files follow (put in the task order of their metadata): --models exports/*.onnx.")
@click.option("--exports-dir", type=click.Path(file_okay=False), help="Every .onnx file there (ordered by task, as --models are).")
@click.option("--from-store", help="Comma-separated stored model ids (task1,task2,...): no ONNX files needed.")
@click.option("--query", default="cifar10:test", show_default=True, help="Query data set. " + DATASET_HELP)
@click.option("--gallery", help="Gallery data set (default: the query set; each query's own image is then left out).")
@data_path()
@download()
@click.option("--store", default="embeddings", show_default=True, help="Embedding store (read, and filled when missing).")
@click.option("--out", default="reports", show_default=True,
              help="Report folder (compatibility.{json,csv,md} and figures), replaced as a whole.")
@click.option("--k", type=Int(1, 10_000), default=5, show_default=True, help="Neighbours of the kNN majority vote.")
@click.option("--include-self", is_flag=True, help="Keep each query's own image in its gallery (the original study's protocol).")
@runtime(AUTO_PROVIDER, THREADS, *TRT, workers(), batch_size(), skip_bad("Leave unreadable images out when embedding."),
         QUIET)
@click.option("--projections", help="Also draw 2-D projections of the query embeddings: pca, tsne or pca,tsne "
                                    "(needs scikit-learn, the 'analysis' extra).")
@click.option("--projection-sample", type=Int(3, 1_000_000), default=2000, show_default=True,
              help="Items projected (a seeded sample).")
@grouped("production", production_options, *PRODUCTION)
@click.option("--precision-exports", multiple=True, type=click.Path(file_okay=False),
              help="A folder of fp16 or int8 exports with the models' file names: a query-precision row per model.")
@click.option("--no-backbone", is_flag=True, help="A bundle's tasks only, without its frozen backbone's row and column.")
@click.option("--full-map", is_flag=True, help="Also the exact mAP over the whole gallery (sorts every similarity "
                                               "row; the default metrics rank each row's first R places only).")
@click.option("--search-provider", help="Where the similarity products and the ranking's inputs run: numpy (BLAS), "
                                        "cpu or cuda[:N] (an onnxruntime graph). Default: --provider's device "
                                        "(numpy on the CPU).")
@click.option("--search-precision", type=click.Choice(("fp32", "fp16")), default="fp32", show_default=True,
              help="The graph's products in float16 (cpu or cuda search only).")
@click.option("--primary-metric", help="The metric the decision rule judges every pair by (the others are evidence); "
                                      "default: top1, or self-top1 on unlabelled data.")
@click.option("--label-free", is_flag=True, help="Also compute the label-free metrics (self-top1, self-top5, overlap@k) "
                                                 "on labelled data; on unlabelled data they are the only ones.")
@click.option("--tolerance", type=Float(0.0), default=0.01, show_default=True,
              help="The rule's margin: a candidate may lose at most this much of the primary metric (0 to below 1).")
@click.option("--adapters", type=click.Path(file_okay=False),
              help="A folder of *.adapter.npz files (python cli.py adapt): each adds its adapted pair as a row of "
                   "its own, judged by the same rule, with its learning curve.")
@grouped("mlflow", mlflow_options, *MLFLOW)
def evaluate(models_flag, mlflow, **options):
    """Backward compatibility of every newer model's queries against every older model's gallery.

    Writes compatibility.json/.csv/.md, figures and report.html, led by each pair's decision under the rule
    (models in task order); with --index, --backfill or --*-precision* also production.json/.md; with
    --mlflow, one MLflow run. A model file with a query adapter inside (adapt --export) is an adapted row,
    as --adapters files are.
    """
    from ..evaluate.report.writer import summary
    from ..evaluate.run import EvaluateOptions, run_evaluation, run_production

    run = run_evaluation(EvaluateOptions(**options))
    click.echo(summary(run.evaluation))
    click.echo(f"reports: {', '.join(str(p) for p in run.written)}")
    written = run_production(run)
    if written:
        click.echo(f"production reports: {', '.join(str(p) for p in written)}")
    if mlflow is not None:
        from ..evaluate.report.mlflow_log import log_report_folder

        logged = log_report_folder(run.options.out, mlflow)
        click.echo(f"mlflow: run {logged.run_id} (experiment {logged.experiment_id}) at {logged.tracking_uri}")
