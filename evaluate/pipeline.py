"""From ONNX files or stored ids to validated embedding sets, then to a compatibility evaluation."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence


from .adapt.rows import AdaptedRow
from .decide import DataCheck, DecisionOptions, decide_arrays
from .metrics.compat import Compatibility, compatibility
from .metrics.decision import Decision
from .metrics.ranking import retrieval_outcomes
from .metrics.table import deepest, metric as table_metric
from .metrics.unlabelled import require_same_items
from .search.backfill import backfill_order
from ..infer.runtime.bundle import BundleInfo, is_bundle, read_props
from ..infer.data.base import CIFAR_KINDS
from ..infer.data.datasets import dataset_key, dataset_location, legacy_dataset_key, open_dataset, spec_describes
from ..infer.embed import embed_model, model_targets
from ..common.contract import FILE_PRECISIONS, QUERY_OUTPUT
from ..common.provenance import notes as model_notes
from ..common.errors import InputError
from ..infer.runtime.metadata import ADAPTER_KEY, ModelInfo
from ..infer.runtime.options import RuntimeOptions
from ..infer.store.sets import EmbeddingSet, check_comparable, check_model_id, read_manifest, read_set, set_path


@dataclass
class Evaluation:
    """A result with what it was computed on: the ``models`` (update order), the ``query``/``gallery``
    data, the ``protocol``, each model's ``provenance`` (``{"data", "backbone"}`` from its export's
    metadata, {} when unknown), the ``notes`` every reader must see (generated data, random backbone),
    the ``decision`` of every pair under the declared rule, each model's ``records`` (``id``,
    ``sha256`` of its file as the store recorded it, ``file``, ``task``) and the ``adapters``' rows
    (pairs searched through an adapter, outside the matrix: :mod:`.adapt.rows`)."""

    result: Compatibility
    models: list[str]
    query: dict
    gallery: dict
    protocol: dict
    decision: Decision
    provenance: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    adapters: list[AdaptedRow] = field(default_factory=list)


def _named(s: EmbeddingSet) -> str:
    """A stored set as error lines name it: its data spec and folder."""
    return f"{s.manifest.dataset.spec} ({s.path})"


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

    left = [f for f in files if bundles and f not in bundles and not adapted_file(f) and bundled(f)]
    if left:
        warn(f"note: {', '.join(f.name for f in left)} left out: {', '.join(f.name for f in bundles)} holds "
             "the same tasks from the same checkpoints")
    return [f for f in files if f not in left]


def adapted_file(path: Path) -> bool:
    """Whether the ONNX file ``path`` holds a query adapter (``adapt --export``): a model in another
    model's space, which evaluate reports as an adapted row, not as a model of the matrix."""
    return ADAPTER_KEY in read_props(path)


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
                        warn: Optional[Callable[[str], None]] = None, backbone: bool = True,
                        check: Optional[DataCheck] = None) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Query and gallery sets of every model, embedding what the store lacks with ``runtime`` (in the
    order given; :func:`evaluate_sets` puts them in task order). A bundle gives its frozen backbone's
    set (unless not ``backbone``) and every task's (see :func:`infer.embed.model_targets`). ``check``
    refuses data the evaluation cannot use, before any embedding (default: :meth:`DecisionOptions.check`)."""
    specs = list(dict.fromkeys([query_spec, gallery_spec]))
    datasets = {spec: open_dataset(spec, data_path) for spec in specs}
    for spec, dataset in datasets.items():
        (check or DecisionOptions().check)(spec, dataset.labelled, query_spec == gallery_spec)
    sets_of = [(m, t.model_id) for m in models for t in model_targets(m, m.stem, store, datasets[query_spec].key)]
    _unique_ids([i for _, i in sets_of], [f"{m} ({i})" for m, i in sets_of])
    warn = warn or once_to_stderr()
    sets = {spec: [r.set for m in models for r in embed_model(m, datasets[spec], store, runtime=runtime, warn=warn)]
            for spec in specs}
    if not backbone:
        sets = {spec: [s for s in found if not is_backbone(s)] for spec, found in sets.items()}
    return sets[query_spec], sets[gallery_spec]


def _held_locations(store: str | Path, model_id: str) -> list[str]:
    """'location (spec)' of every set the store holds for ``model_id`` (those whose manifest reads)."""
    folder = Path(store) / model_id
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            try:
                data = read_manifest(path).dataset
            except InputError:
                continue
            found.append(f"{data.location} ({data.spec})")
    return found


def _missing_set(path: Path, store: str | Path, model_id: str, spec: str, location: str) -> InputError:
    """Why there is no stored set of ``model_id`` on ``spec`` at ``path``: the location looked for, and
    the locations the store holds for that model (a CIFAR spec's depends on --data-path)."""
    held = _held_locations(store, model_id)
    where = (f"the store holds {model_id} on {'; '.join(held)[:600]}" if held else
             f"the store holds no set of {model_id}")
    hint = " (--data-path decides where a CIFAR spec points: give the one it was embedded with)" \
        if spec.split(":")[0] in CIFAR_KINDS and held else ""
    return InputError(f"{path}: no stored set of {model_id} on {spec} at {location}; {where}{hint}; embed it first, "
                      "or pass the ONNX files")


def _stored_set(store: str | Path, model_id: str, spec: str, data_path: str | Path) -> EmbeddingSet:
    """The stored set of ``model_id`` on ``spec``, refused unless its manifest names the data asked for:
    its location, and a spec that names that location (an edited spec would mislabel the report)."""
    location = dataset_location(spec, data_path)
    path = set_path(store, model_id, dataset_key(spec, data_path))
    if not path.is_dir():
        legacy = set_path(store, model_id, legacy_dataset_key(spec))
        if (legacy / "embeddings.npy").is_file():
            raise InputError(f"{path}: no stored set of {model_id} on {spec}; {legacy} is a set in store format 1, "
                             "which does not record its data's location: run embed with its model and data once to "
                             "migrate it")
        raise _missing_set(path, store, model_id, spec, location)
    stored = read_set(path)
    data = stored.manifest.dataset
    if data.location != location:
        raise InputError(f"{path}: holds embeddings of {data.location}, not of the data asked for, {location}")
    if not spec_describes(data.spec, location):
        raise InputError(f"{path}: its manifest names the data {data.spec[:100]!r}, which is not {spec} at "
                         f"{location}: the manifest was edited; embed recomputes the set")
    return stored


def collect_from_store(model_ids: Sequence[str], query_spec: str, gallery_spec: str, store: str | Path, *,
                       data_path: str | Path = "data",
                       check: Optional[DataCheck] = None) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Stored query and gallery sets of ``model_ids``, in that order; no ONNX file or data needed
    (``data_path`` only places CIFAR specs, as when they were embedded). ``check``: as for
    :func:`collect_from_models`."""
    _unique_ids(model_ids, model_ids)
    if not model_ids:
        raise InputError("--from-store: no model ids (expected e.g. task1,task2,task3)")
    sets = {spec: [_stored_set(store, m, spec, data_path) for m in model_ids]
            for spec in dict.fromkeys([query_spec, gallery_spec])}
    for s in (s for found in sets.values() for s in found):
        (check or DecisionOptions().check)(_named(s), s.labelled, query_spec == gallery_spec)
    return sets[query_spec], sets[gallery_spec]


def _describe(sets: Sequence[EmbeddingSet]) -> dict:
    m = sets[0].manifest
    # How each model embeds; stores written before the gather and query modes existed used the defaults.
    modes = {s.model_id: {"pool": s.manifest.model.pool, "selection": s.manifest.model.selection,
                          "gather": s.manifest.model.gather, "query": s.manifest.model.query,
                          "output": s.manifest.model.output} for s in sets}
    return {"spec": m.dataset.spec, "location": m.dataset.location, "fingerprint": m.dataset.fingerprint,
            "count": sets[0].count, "skipped": len(m.skipped), "labelled": sets[0].labelled,
            "sets": [str(s.path) for s in sets], "modes": modes}


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


LABEL_FREE_PROTOCOL = ("label-free metrics on the same items as queries and gallery: self-retrieval's target is the "
                       "item's own gallery entry (never left out); overlap@k's neighbourhoods leave the item out")


def _checked(query: EmbeddingSet, gallery: EmbeddingSet, *, k: int, include_self: bool,
             options: DecisionOptions) -> tuple[DecisionOptions, list[str], bool]:
    """(the options with the data's primary metric, the metrics to compute, whether each query's own
    image is left out of its gallery for the label metrics), after refusing what cannot be computed."""
    labelled = query.labelled and gallery.labelled
    options, names = options.for_data(_named(query if not query.labelled else gallery), labelled)
    same = query.same_items(gallery)
    exclude_self = same and not include_self and labelled
    if any(table_metric(n).labels for n in names):
        per_query = gallery.count - exclude_self
        if not 1 <= k <= per_query:
            raise InputError(f"--k {k}: must be between 1 and {per_query}, the gallery size per query")
        name, places = deepest()
        if per_query < places:
            raise InputError(f"gallery {gallery.path}: {per_query} items per query, {name} needs at least {places}")
    if not all(table_metric(n).labels for n in names):
        require_same_items(_named(query), same)
        places = max(k + 1, *(table_metric(n).places for n in names))
        if gallery.count < places:
            raise InputError(f"gallery {gallery.path}: {gallery.count} items; the label-free metrics with --k {k} "
                             f"need at least {places} (k neighbours besides each item, self-top5's five places)")
    return options, names, exclude_self


def evaluate_sets(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], *, k: int = 5,
                  include_self: bool = False, progress: Optional[Callable[[int, int], None]] = None,
                  notes: Sequence[str] = (), warn: Optional[Callable[[str], None]] = None,
                  options: DecisionOptions = DecisionOptions(), search=None) -> Evaluation:
    """Compatibility of the sets (same model order in both) after checking they can be compared and
    putting them in task order (:func:`order_by_task`), and every pair's decision under ``options``.

    When query and gallery are the same data, each query's own image is left out of its gallery
    unless ``include_self``. ``notes`` are added to those the models' provenance calls for.
    ``search``: where the label metrics' similarities are computed and ranked, a
    ``evaluate.search.device.DeviceSearch`` (None: numpy on the CPU); the protocol records it (the
    label-free metrics rank with numpy).
    """
    check_comparable(query, gallery)
    query, gallery = order_by_task(query, gallery, warn or once_to_stderr())
    options, names, exclude_self = _checked(query[0], gallery[0], k=k, include_self=include_self, options=options)
    backfill_order(gallery[0].count, seed=options.seed, order_file=options.order_file)  # a bad file: before the work
    arrays = [s.embeddings for s in query], [s.embeddings for s in gallery]
    result = compatibility(*arrays, query[0].labels, gallery[0].labels, k=k, exclude_self=exclude_self,
                           progress=progress, metrics=names,
                           search=search.retrieval_outcomes if search else retrieval_outcomes)
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
    protocol = {"similarity": "cosine", "k": k, "own_image_left_out": exclude_self, "labelled": query[0].labelled,
                "metrics": names, "search": f"onnxruntime {search.used} {search.precision}"
                if search and any(table_metric(n).labels for n in names) else "numpy fp32"}
    if not all(table_metric(n).labels for n in names):
        protocol["label_free"] = LABEL_FREE_PROTOCOL
    backbones = [s.model_id for s in query if is_backbone(s)]
    if backbones:  # a bundle's unprompted backbone, evaluated as the oldest model beside the tasks
        protocol["frozen_backbone"] = backbones
    return Evaluation(result=result, models=models, query=_describe(query), gallery=_describe(gallery),
                      protocol=protocol, decision=decision, provenance=provenance,
                      notes=list(dict.fromkeys(notes)), records=records)
