"""``evaluate`` as two calls: :func:`run_evaluation` (the exact matrix and its reports, from ONNX files
or stored sets) and :func:`run_production` (indexes, backfilling, reduced precision on the same sets).
The command line builds an :class:`EvaluateOptions` from its options and prints what these return."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from ..common.cifar import download_named
from ..common.errors import InputError
from ..common.outputs import writable_dir
from ..infer.runtime.bundle import is_bundle
from ..infer.runtime.options import RuntimeOptions
from ..infer.runtime.session import check_provider
from ..infer.store.sets import EmbeddingSet
from ..infer.data.datasets import dataset_location, open_dataset
from ..infer.embed import embed_model
from .adapt.collect import check_fit_locations, evaluate_rows, load_adapters, refuse_adapted_sets, row_inputs
from .decide import DecisionOptions
from .pipeline import (Evaluation, adapted_file, collect_from_models, collect_from_store, evaluate_sets, model_files,
                       once_to_stderr, order_by_task)
from .metrics.table import METRICS, metric
from .report.writer import check_out_dir, write_reports
from .search.device import open_search
from .search.production import ProductionOptions


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``evaluate`` reads, computes and writes (the command's options, one field each).

    The models: ``model_files`` (ONNX files), every file in ``exports_dir``, or the stored ids of
    ``from_store`` (comma-separated). ``query`` / ``gallery`` (default: the query) are data set
    specs under ``data_path`` (fetched first with ``download``); ``store`` is read and filled;
    ``out`` is replaced by the report folder. ``no_backbone``: a bundle's tasks without its frozen
    backbone. ``projections``: ``pca``, ``tsne`` or both, comma-separated (None: none).
    ``precision_exports``: folders of fp16/int8 exports mirroring the models' files. ``full_map``: add
    the exact mAP over the whole gallery (opt-in: it sorts every similarity row). ``search_provider``,
    ``search_precision``: where the similarity products and the ranking's inputs run
    (:func:`.search.device.open_search`; default: the runtime's provider).
    ``primary_metric`` (None: top-1, or self-top1 on unlabelled data) and ``tolerance``: the decision
    rule (:mod:`.metrics.decision`); ``label_free``: the label-free metrics beside the label metrics on
    labelled data (on unlabelled data they are the only ones, :mod:`.metrics.unlabelled`). ``adapters``: a
    folder whose ``*.adapter.npz`` files each add an adapted row (:mod:`.adapt.rows`); a model file
    with a query adapter inside, among the models, adds one too (it is not a model of the matrix).
    """

    model_files: tuple[str, ...] = ()
    exports_dir: Optional[str] = None
    from_store: Optional[str] = None
    query: str = "cifar10:test"
    gallery: Optional[str] = None
    data_path: str = "data"
    download: bool = False
    store: str = "embeddings"
    out: str = "reports"
    k: int = 5
    include_self: bool = False
    no_backbone: bool = False
    full_map: bool = False
    search_provider: Optional[str] = None
    search_precision: str = "fp32"
    projections: Optional[str] = None
    projection_sample: int = 2000
    precision_exports: tuple[str, ...] = ()
    production: ProductionOptions = field(default_factory=ProductionOptions)
    runtime: RuntimeOptions = RuntimeOptions()
    primary_metric: Optional[str] = None
    tolerance: float = 0.01
    label_free: bool = False
    adapters: Optional[str] = None

    def decision(self) -> DecisionOptions:
        """The decision rule and the backfill grid it searches (--backfill-steps/-seed/-order); InputError
        for a metric or tolerance the rule refuses, before any work."""
        p = self.production
        return DecisionOptions.of(self.primary_metric, self.tolerance, p.backfill_steps, p.backfill_seed,
                                  p.backfill_order, label_free=self.label_free, full_map=self.full_map)

    def check(self, what: str, labelled: bool, same_items: bool) -> None:
        """Refuse data ``what`` before any work: what :meth:`DecisionOptions.check` refuses, and unlabelled
        data for the parts of evaluate that measure or colour by labels."""
        self.decision().check(what, labelled, same_items)
        if self.adapters is not None and self.primary_metric and not metric(self.primary_metric).labels:
            raise InputError(f"--adapters: adapted rows are judged by a label metric, and --primary-metric "
                             f"{self.primary_metric} is label-free: choose one of {', '.join(METRICS)}")
        asked = [name for name, on in (("--index", self.production.indexes), ("--backfill", self.production.backfill),
                                       ("--gallery-precision", self.production.gallery_precisions),
                                       ("--precision-exports", self.precision_exports), ("--full-map", self.full_map),
                                       ("--projections", self.projections), ("--adapters", self.adapters)) if on]
        if not labelled and asked:
            raise InputError(f"{what}: unlabelled data; {', '.join(asked)} measure(s) label metrics or colour by "
                             "label: leave them out (the label-free metrics are in the main report)")


@dataclass
class EvaluationRun:
    """An exact evaluation with what it was computed from: the ``query`` and ``gallery`` sets (task
    order), the ONNX ``files`` of the matrix's models (none with ``from_store``) and the report files
    ``written``."""

    options: EvaluateOptions
    evaluation: Evaluation
    query: list[EmbeddingSet]
    gallery: list[EmbeddingSet]
    files: list[Path]
    written: list[Path]


@contextmanager
def cell_bar(desc: str, *, disable: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, and the ``progress(done, total)`` callback that moves it."""
    with tqdm(desc=desc, unit="cell", disable=disable, file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def _sets(opts: EvaluateOptions, gallery: str) -> tuple[list[EmbeddingSet], list[EmbeddingSet], list[Path],
                                                       list[EmbeddingSet]]:
    """Query and gallery sets (stored, or embedded from the ONNX files), the files, and the query sets
    of the model files with a query adapter inside (adapted rows, not models of the matrix)."""
    if opts.from_store is not None:
        if opts.model_files or opts.exports_dir:
            raise InputError("--from-store evaluates stored sets only: drop the ONNX files / --exports-dir")
        ids = [m.strip() for m in opts.from_store.split(",") if m.strip()]
        q, g = collect_from_store(ids, opts.query, gallery, opts.store, data_path=opts.data_path, check=opts.check)
        refuse_adapted_sets([*q, *g])
        return q, g, [], []
    files = model_files(opts.model_files, opts.exports_dir, bundles=not opts.precision_exports)
    writable_dir(opts.store, "--store")
    adapted = [f for f in files if adapted_file(f)]
    files = [f for f in files if f not in adapted]
    if not files:
        raise InputError(f"{adapted[0]}: a model with a query adapter inside is evaluated beside its source and "
                         "target models; name their files too")
    if opts.precision_exports and any(map(is_bundle, files)):
        raise InputError("--precision-exports compares single-task files: name them (--models exports/task*.onnx)")
    if opts.download:
        download_named(opts.data_path, opts.query, gallery)
    q, g = collect_from_models(files, opts.query, gallery, opts.data_path, opts.store, runtime=opts.runtime,
                               backbone=not opts.no_backbone, check=opts.check)
    queries = open_dataset(opts.query, opts.data_path)
    return q, g, files, [embed_model(f, queries, opts.store, runtime=opts.runtime)[0].set for f in adapted]


def run_evaluation(opts: EvaluateOptions) -> EvaluationRun:
    """Check the options, collect the sets, evaluate them and write the report folder ``opts.out``
    (with ``projections.png`` when asked for), adapted rows included. Every check that needs no data
    comes before any work; the adapters' models and leakage guard before the evaluation."""
    if opts.precision_exports and opts.from_store is not None:
        raise InputError("--precision-exports embeds with ONNX files: it cannot be combined with --from-store")
    decision = opts.decision()
    writable_dir(opts.out, "--out")
    check_out_dir(opts.out)
    check_provider(opts.runtime.provider)  # an explicit GPU request is refused even when no model will run
    search = open_search(opts.search_provider, opts.runtime.provider, precision=opts.search_precision,
                         threads=opts.runtime.threads)
    methods = None
    if opts.projections is not None:
        from .study.projections import parse_methods

        methods = parse_methods(opts.projections)
    adapters = load_adapters(opts.adapters) if opts.adapters is not None else []
    if adapters:
        check_fit_locations(adapters, {role: dataset_location(spec, opts.data_path) for role, spec in
                                       (("query", opts.query), ("gallery", opts.gallery or opts.query))})
    q, g, files, adapted = _sets(opts, opts.gallery or opts.query)
    q, g = order_by_task(q, g, once_to_stderr())
    inputs = row_inputs(adapters, adapted, q, g, store=opts.store)
    with cell_bar("cells", disable=not opts.runtime.progress) as progress:
        ev = evaluate_sets(q, g, k=opts.k, include_self=opts.include_self, progress=progress, options=decision,
                           search=search)
    ev.adapters = evaluate_rows(ev, q, g, inputs, decision)
    written = write_reports(ev, opts.out)
    if methods:
        from .report.html import write_html
        from .study.projections import write_projections

        written.append(write_projections([s.embeddings for s in q], q[0].labels, ev.models, opts.out,
                                         methods=methods, sample=opts.projection_sample, notes=ev.notes))
        write_html(opts.out)  # again, with the projections
    return EvaluationRun(opts, ev, q, g, files, written)


def run_production(run: EvaluationRun) -> list[Path]:
    """Indexes, backfilling and reduced precision on ``run``'s sets, as its options ask (production.json/.md
    and backfill figures in the same folder); returns the files written (none when nothing was asked)."""
    from .report.labels import caption
    from .report.production import write_production
    from .search.production import collect_precision_sets, evaluate_production, precision_rows

    opts, ev = run.options, run.evaluation
    production = opts.production
    if not (production.wanted or opts.precision_exports):
        return []
    exclude_self, k = ev.protocol["own_image_left_out"], ev.protocol["k"]
    with cell_bar("index cells", disable=not opts.runtime.progress or not production.indexes) as progress:
        result = evaluate_production(run.query, run.gallery, ev.result, ev.models, production, opts.store, k=k,
                                     exclude_self=exclude_self, progress=progress)
    rows = []
    if opts.precision_exports:
        by_id = {f.stem: f for f in run.files}
        sets, speeds = collect_precision_sets([by_id[s.model_id] for s in run.query], opts.precision_exports,
                                              run.query, opts.query, opts.data_path, opts.store,
                                              runtime=opts.runtime)
        rows = precision_rows(run.query, run.gallery, sets, speeds, k=k, exclude_self=exclude_self)
    return write_production(result, opts.out, notes=ev.notes, caption=caption(ev), precision_rows=rows)
