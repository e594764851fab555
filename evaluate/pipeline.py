"""From ONNX files or stored ids to validated embedding sets, then to a compatibility evaluation."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .metrics.compat import Compatibility, compatibility
from .metrics.decision import Decision, Rule, decide
from .metrics.table import deepest
from .search.backfill import backfill_order, backfilled_counts, backfilled_values, fractions
from ..infer.runtime.bundle import BundleInfo, is_bundle, read_props
from ..infer.data.datasets import dataset_key, dataset_location, legacy_dataset_key, open_dataset
from ..infer.embed import embed_model, model_targets
from ..common.contract import FILE_PRECISIONS, QUERY_OUTPUT
from ..common.provenance import notes as model_notes
from ..common.errors import InputError
from ..infer.runtime.metadata import ModelInfo
from ..infer.runtime.options import RuntimeOptions
from ..infer.store.sets import EmbeddingSet, check_comparable, check_model_id, read_set, set_path


@dataclass
class Evaluation:
    """A result with what it was computed on: the ``models`` (update order), the ``query``/``gallery``
    data, the ``protocol``, each model's ``provenance`` (``{"data", "backbone"}`` from its export's
    metadata, {} when unknown), the ``notes`` every reader must see (generated data, random backbone),
    the ``decision`` of every pair under the declared rule and each model's ``records`` (``id``,
    ``sha256`` of its file as the store recorded it, ``file``, ``task``)."""

    result: Compatibility
    models: list[str]
    query: dict
    gallery: dict
    protocol: dict
    decision: Decision
    provenance: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class DecisionOptions:
    """The decision ``rule`` and the backfill grid it searches for not-compatible pairs: f = 0,
    1/``steps``, ..., 1, items re-embedded in a random order of seed ``seed`` or the one in ``order_file``
    (as ``evaluate --backfill-steps/--backfill-seed/--backfill-order``)."""

    rule: Rule = field(default_factory=Rule)
    steps: int = 10
    seed: int = 0
    order_file: Optional[str] = None

    @classmethod
    def of(cls, metric: str, tolerance: float, steps: int, seed: int, order_file: Optional[str]) -> "DecisionOptions":
        """The options of ``evaluate``'s values (--primary-metric, --tolerance, --backfill-*); InputError
        for a metric or tolerance the rule refuses, before any work."""
        return cls(Rule(metric=metric, tolerance=tolerance), steps, seed, order_file)


def provenance_notes(provenance: Sequence[dict]) -> list[str]:
    """The banner notes that ``provenance`` (one dict per model) calls for, each once, worded as
    everywhere else (:func:`common.provenance.notes`)."""
    return list(dict.fromkeys(n for p in provenance for n in model_notes(
        {key: str(value).lower() for key, value in p.items() if key in ("data", "backbone")})))


def _prefer_bundles(files: Sequence[Path], warn: Callable[[str], None]) -> list[Path]:
    """``files`` less the single-task files whose task a bundle among them holds, exported from the
    same checkpoint (the bundle gives the same embeddings, and its frozen backbone, in one pass)."""
    bundles = {f: BundleInfo.from_props(read_props(f), str(f)) for f in files if is_bundle(f)}
    covered = {(t.task, t.checkpoint_sha256) for info in bundles.values() for t in info.tasks}

    def bundled(f: Path) -> bool:
        info = ModelInfo.from_props(read_props(f), str(f))
        return (info.task, info.checkpoint_sha256) in covered

    left = [f for f in files if bundles and f not in bundles and bundled(f)]
    if left:
        warn(f"note: {', '.join(f.name for f in left)} left out: {', '.join(f.name for f in bundles)} holds "
             "the same tasks from the same checkpoints")
    return [f for f in files if f not in left]


def model_files(models: Sequence[str], exports_dir: Optional[str], *, bundles: bool = True,
                warn: Optional[Callable[[str], None]] = None) -> list[Path]:
    """The ONNX files named, or every ``*.onnx`` in ``exports_dir`` (exactly one of the two); there,
    a bundle stands in for the single-task files of its tasks (:func:`_prefer_bundles`), or with
    ``bundles`` False is left out (for what needs single-task files)."""
    if not models and not exports_dir:
        raise InputError("no models: give ONNX files (--models a.onnx b.onnx ...), --exports-dir or --from-store")
    if models and exports_dir:
        raise InputError("give ONNX files or --exports-dir, not both")
    if exports_dir:
        if not Path(exports_dir).is_dir():
            raise InputError(f"--exports-dir {exports_dir}: not a folder")
        files = sorted(Path(exports_dir).glob("*.onnx"))
        if not files:
            raise InputError(f"--exports-dir {exports_dir}: no .onnx files there")
        warn = warn or once_to_stderr()
        if not bundles:
            left = [f for f in files if is_bundle(f)]
            if left:
                warn(f"note: {', '.join(f.name for f in left)} left out: a bundle, where single-task files are needed")
            return [f for f in files if f not in left]
        return _prefer_bundles(files, warn)
    files = [Path(m) for m in models]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such ONNX file")
    return files


def once_to_stderr() -> Callable[[str], None]:
    """A warn function that prints each distinct message once (one CPU-fallback notice, not one per model)."""
    seen: set[str] = set()

    def warn(message: str) -> None:
        if message not in seen:
            seen.add(message)
            print(message, file=sys.stderr)
    return warn


def _unique_ids(ids: Sequence[str], sources: Sequence[object]) -> None:
    seen: dict[str, object] = {}
    for model_id, source in zip(ids, sources):
        check_model_id(model_id)
        if model_id in seen:
            raise InputError(f"two models with the id {model_id!r} ({seen[model_id]} and {source}); "
                             "rename one, the id is the file name's stem")
        seen[model_id] = source


def collect_from_models(models: Sequence[Path], query_spec: str, gallery_spec: str, data_path: str | Path,
                        store: str | Path, *, runtime: RuntimeOptions = RuntimeOptions(),
                        warn: Optional[Callable[[str], None]] = None,
                        backbone: bool = True) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Query and gallery sets of every model, embedding what the store lacks with ``runtime`` (in the
    order given; :func:`evaluate_sets` puts them in task order). A bundle gives its frozen backbone's
    set (unless not ``backbone``) and every task's (see :func:`infer.embed.model_targets`)."""
    specs = list(dict.fromkeys([query_spec, gallery_spec]))
    datasets = {spec: open_dataset(spec, data_path) for spec in specs}
    sets_of = [(m, t.model_id) for m in models for t in model_targets(m, m.stem, store, datasets[query_spec].key)]
    _unique_ids([i for _, i in sets_of], [f"{m} ({i})" for m, i in sets_of])
    warn = warn or once_to_stderr()
    sets = {spec: [r.set for m in models for r in embed_model(m, datasets[spec], store, runtime=runtime, warn=warn)]
            for spec in specs}
    if not backbone:
        sets = {spec: [s for s in found if not is_backbone(s)] for spec, found in sets.items()}
    return sets[query_spec], sets[gallery_spec]


def _stored_set(store: str | Path, model_id: str, spec: str, data_path: str | Path) -> EmbeddingSet:
    """The stored set of ``model_id`` on ``spec``, refused unless its manifest names the data asked for."""
    location = dataset_location(spec, data_path)
    path = set_path(store, model_id, dataset_key(spec, data_path))
    if not path.is_dir():
        legacy = set_path(store, model_id, legacy_dataset_key(spec))
        hint = (f"; {legacy} is a set in store format 1, which does not record its data's location: run embed "
                "with its model and data once to migrate it") if (legacy / "embeddings.npy").is_file() else ""
        raise InputError(f"{path}: no stored set of {model_id} on {spec} (embed it first, or pass the ONNX files)"
                         + hint)
    stored = read_set(path)
    if stored.manifest.dataset.location != location:
        raise InputError(f"{path}: holds embeddings of {stored.manifest.dataset.location}, not of the data asked "
                         f"for, {location}")
    return stored


def collect_from_store(model_ids: Sequence[str], query_spec: str, gallery_spec: str, store: str | Path, *,
                       data_path: str | Path = "data") -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Stored query and gallery sets of ``model_ids``, in that order; no ONNX file or data needed
    (``data_path`` only places CIFAR specs, as when they were embedded)."""
    _unique_ids(model_ids, model_ids)
    if not model_ids:
        raise InputError("--from-store: no model ids (expected e.g. task1,task2,task3)")
    sets = {spec: [_stored_set(store, m, spec, data_path) for m in model_ids]
            for spec in dict.fromkeys([query_spec, gallery_spec])}
    return sets[query_spec], sets[gallery_spec]


def _describe(sets: Sequence[EmbeddingSet]) -> dict:
    m = sets[0].manifest
    # How each model embeds; stores written before the gather and query modes existed used the defaults.
    modes = {s.model_id: {"pool": s.manifest.model.pool, "selection": s.manifest.model.selection,
                          "gather": s.manifest.model.gather, "query": s.manifest.model.query,
                          "output": s.manifest.model.output} for s in sets}
    return {"spec": m.dataset.spec, "location": m.dataset.location, "fingerprint": m.dataset.fingerprint,
            "count": sets[0].count, "skipped": len(m.skipped), "sets": [str(s.path) for s in sets], "modes": modes}


def is_backbone(s: EmbeddingSet) -> bool:
    """Whether ``s`` holds a bundle's ``query`` output: the frozen backbone, unprompted, as a model."""
    return s.manifest.model.output == QUERY_OUTPUT and s.manifest.model.task == 0


def _task(s: EmbeddingSet) -> Optional[int]:
    """The task of ``s``'s model: 0 for a frozen backbone (older than every task), None when not
    recorded (task 0 of a set made without an export's metadata)."""
    task = s.manifest.model.task
    if is_backbone(s):
        return 0
    return task if isinstance(task, int) and not isinstance(task, bool) and task > 0 else None


def _version(s: EmbeddingSet) -> int:
    """Where ``s``'s precision stands among a task's files: its fp32 export, then fp16, then int8 (an
    unrecorded precision counts as fp32)."""
    return FILE_PRECISIONS.index(s.manifest.model.precision or "fp32")


def order_by_task(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet],
                  warn: Callable[[str], None]) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """The sets in update order: by the task in each model's metadata (kept as given when a model's
    task is unknown), a task's files of lower precision after its fp32 file, as its updates (so
    C[int8][fp32] is a task's int8 query model against its fp32 gallery). A changed order is reported
    through ``warn``; two models of one task and precision are refused.

    The matrix is lower-triangular by update order, so rows out of task order (a shell glob puts
    task10 before task2) would silently compare the wrong pairs.
    """
    tasks = [_task(s) for s in query]
    if None in tasks:
        return list(query), list(gallery)
    keys = [(t, _version(s)) for s, t in zip(query, tasks)]
    for key in sorted(set(keys)):
        same = [s.model_id for s, k in zip(query, keys) if k == key]
        if len(same) > 1:
            what = "frozen backbones" if key[0] == 0 else f"task {key[0]} in their metadata"
            raise InputError(f"models {' and '.join(same)} are all {what}, in {FILE_PRECISIONS[key[1]]}; "
                             "compare one model per task and precision")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if order != list(range(len(tasks))):
        warn(f"note: models put in task order {', '.join(query[i].model_id for i in order)} "
             f"(given: {', '.join(s.model_id for s in query)})")
    return [query[i] for i in order], [gallery[i] for i in order]


def decide_arrays(result: Compatibility, models: Sequence[str], sha256: Sequence[Optional[str]],
                  query: Sequence[np.ndarray], gallery: Sequence[np.ndarray], query_labels: np.ndarray,
                  gallery_labels: np.ndarray, *, k: int = 5, exclude_self: bool = False,
                  options: DecisionOptions = DecisionOptions()) -> Decision:
    """:func:`.metrics.decision.decide` for an evaluation of the arrays ``query``/``gallery`` (T arrays
    [Nq, D] / [Ng, D], as :func:`.metrics.compat.compatibility` took them): the backfill search runs
    exact search on galleries mixed in the options' order; its ends are the evaluation's own cells
    (f = 0: C[i][j], f = 1: C[i][i], by definition)."""
    n = len(gallery_labels)
    steps = options.steps
    counts = backfilled_counts(n, fractions(steps))
    order = backfill_order(n, seed=options.seed, order_file=options.order_file)

    def values(i: int, j: int, step: int) -> np.ndarray:
        if step in (0, steps):
            return result.values(options.rule.metric, i, j if step == 0 else i)
        return backfilled_values(query[i], gallery[j], gallery[i], query_labels, gallery_labels,
                                 order[:counts[step]], metric=options.rule.metric, k=k, exclude_self=exclude_self)

    described = f"the order in {options.order_file}" if options.order_file else f"a random order, seed {options.seed}"
    return decide(result, models, sha256, options.rule, values=values, steps=steps, order=described)


def evaluate_sets(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], *, k: int = 5,
                  include_self: bool = False, progress: Optional[Callable[[int, int], None]] = None,
                  notes: Sequence[str] = (), warn: Optional[Callable[[str], None]] = None,
                  options: DecisionOptions = DecisionOptions()) -> Evaluation:
    """Compatibility of the sets (same model order in both) after checking they can be compared and
    putting them in task order (:func:`order_by_task`), and every pair's decision under ``options``.

    When query and gallery are the same data, each query's own image is left out of its gallery
    unless ``include_self``. ``notes`` are added to those the models' provenance calls for.
    """
    check_comparable(query, gallery)
    query, gallery = order_by_task(query, gallery, warn or once_to_stderr())
    same = query[0].data == gallery[0].data and np.array_equal(query[0].labels, gallery[0].labels)
    exclude_self = same and not include_self
    per_query = gallery[0].count - exclude_self
    if not 1 <= k <= per_query:
        raise InputError(f"--k {k}: must be between 1 and {per_query}, the gallery size per query")
    name, places = deepest()
    if per_query < places:
        raise InputError(f"gallery {gallery[0].path}: {per_query} items per query, {name} needs at least {places}")
    backfill_order(gallery[0].count, seed=options.seed, order_file=options.order_file)  # a bad file: before the work
    arrays = [s.embeddings for s in query], [s.embeddings for s in gallery]
    result = compatibility(*arrays, query[0].labels, gallery[0].labels, k=k, exclude_self=exclude_self,
                           progress=progress)
    models = [s.model_id for s in query]
    records = [{"id": s.model_id, "sha256": s.manifest.model.sha256, "file": s.manifest.model.file,
                "task": s.manifest.model.task} for s in query]
    start = time.perf_counter()
    decision = decide_arrays(result, models, [r["sha256"] for r in records], *arrays, query[0].labels,
                             gallery[0].labels, k=k, exclude_self=exclude_self, options=options)
    result.seconds["decision"] = time.perf_counter() - start  # the backfill search of not-compatible pairs
    provenance = [dict(s.manifest.provenance or {}) for s in query]
    given = {n.split(":")[0] for n in notes}
    notes = [*(n for n in provenance_notes(provenance) if n.split(":")[0] not in given), *notes]
    protocol = {"similarity": "cosine", "k": k, "own_image_left_out": exclude_self}
    backbones = [s.model_id for s in query if is_backbone(s)]
    if backbones:  # a bundle's unprompted backbone, evaluated as the oldest model beside the tasks
        protocol["frozen_backbone"] = backbones
    return Evaluation(result=result, models=models, query=_describe(query), gallery=_describe(gallery),
                      protocol=protocol, decision=decision, provenance=provenance,
                      notes=list(dict.fromkeys(notes)), records=records)
