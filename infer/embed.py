"""Embed a data set with an exported model into the embedding store (see :mod:`infer.store.sets`).

The loop is three swappable parts: a batch source (:func:`infer.data.workers.batch_source`: decode and
preprocess in worker processes), an engine that runs the model (:func:`infer.engines.local.run_local` in this process, or
:func:`infer.engines.ray.embed_with_ray` on Ray actors), and :class:`~infer.store.shards.ShardWriter` (one
shard of ``shard_rows`` items at a time, so memory does not grow with the data set, and a killed run
resumes after its last complete shard). Batches never cross a shard boundary.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import onnxruntime as ort
import PIL
from tqdm import tqdm

from ..common.contract import BUNDLE_TASKS_KEY, EMBEDDING_OUTPUT, QUERY_OUTPUT
from ..common.digest import file_sha256
from ..common.errors import InputError, shown
from ..common.faults import fault_point
from ..common.locks import locked
from .runtime.bundle import BundleInfo, bundle_info, bundle_set_ids, read_props
from .data.base import Dataset
from .store.manifest import DEFAULT_SHARD_ROWS, STORE_FORMAT, DataRecord, Manifest, ModelRecord
from .runtime.metadata import ModelInfo, Preprocessing
from .runtime.options import RuntimeOptions
from .store.migrate import migrate_legacy
from .runtime.session import check_provider, create_session, model_info
from .store.shards import ShardWriter, resumable, tidy, writer_lock
from .engines.local import View, run_local
from .store.reuse import stored_match
from .store.sets import EmbeddingSet, check_model_id, read_manifest, set_path
from .data.workers import Embedded, batch_source

@dataclass
class EmbedResult:
    """``set`` as stored; ``reused`` when an existing set matched; ``provider`` used (None if reused);
    ``resumed_rows`` taken over from an interrupted run."""

    set: EmbeddingSet
    reused: bool
    provider: Optional[str]
    seconds: float
    resumed_rows: int = 0


def describe_result(r: EmbedResult) -> str:
    """One line on a set written or reused (what ``embed`` prints)."""
    if r.reused:
        return f"reused {r.set.path} ({r.set.count} x {r.set.dim}; same model file and data; --force recomputes)"
    skipped = len(r.set.manifest.skipped)
    return (f"wrote {r.set.path}: {r.set.count} x {r.set.dim} in {len(r.set.manifest.shards)} shard(s) on "
            f"{r.provider} in {r.seconds:.1f} s"
            + (f" ({r.resumed_rows} rows resumed from an interrupted run)" if r.resumed_rows else "")
            + (f", {skipped} unreadable image(s) skipped (listed in manifest.json)" if skipped else ""))


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def versions() -> dict[str, Optional[str]]:
    """Versions of what computes an embedding here."""
    try:
        own = importlib.metadata.version("dpcompat")
    except importlib.metadata.PackageNotFoundError:
        own = None
    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
            "pillow": PIL.__version__, "dpcompat": own}


def _outputs(model: Path, session: ort.InferenceSession, preprocessing: Preprocessing, dataset: Dataset,
             first: int, *, runtime: RuntimeOptions, shard_rows: int, views: Sequence[View]) -> Iterator[Embedded]:
    """Model outputs of rows ``first`` onwards, in order, in batches of ``runtime.batch_size`` images
    that never cross a shard boundary."""
    if runtime.ray is None:
        batches = batch_source(dataset, preprocessing, batch_size=runtime.batch_size, workers=runtime.workers,
                               skip_bad=runtime.skip_bad, start=first, align=shard_rows)
        return run_local(session, batches, views)
    from .engines.ray import embed_with_ray

    return (replace(e, embeddings=e.embeddings[:, None])
            for e in embed_with_ray(model, dataset, runtime=runtime, start=first, align=shard_rows))


def shards_of(outputs: Iterator[Embedded], dataset: Dataset, first: int, *, shard_rows: int, dim: int,
              model: Path, views: Sequence[str], on_batch: Callable[[int], object] = lambda n: None,
              on_provider: Callable[[str], object] = lambda p: None,
              ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    """Complete shards from an output stream of ``len(views)`` outputs (named ``views``): (embeddings
    float32 [kept, views, D] L2-normalised, labels int64 [kept] or None for unlabelled data, skipped
    item names) per ``shard_rows`` rows from row ``first``; the last may be shorter."""
    n, shape = len(dataset), (len(views), dim)
    end = min(first + shard_rows, n)
    out, kept, skipped = np.empty((end - first, *shape), np.float32), [], []
    for batch in outputs:
        if len(batch.rows):
            good = batch.rows.tolist()
            out[len(kept):len(kept) + len(good)] = _normalised(batch.embeddings, good, dim, views, model, dataset)
            kept.extend(good)
        skipped.extend(batch.skipped)
        if batch.provider:
            on_provider(batch.provider)
        on_batch(batch.size)
        fault_point("embed.batch")
        if batch.start + batch.size == end:
            yield out[:len(kept)], dataset.labels[kept] if dataset.labelled else None, tuple(skipped)
            first, end = end, min(end + shard_rows, n)
            out, kept, skipped = np.empty((end - first, *shape), np.float32), [], []


def _normalised(out: np.ndarray, items: list[int], dim: int, views: Sequence[str], model: Path,
                dataset: Dataset) -> np.ndarray:
    """L2-normalised rows [B, views, D] of a batch's outputs [B, views, D], or InputError naming the
    first bad item and output."""
    if out.shape != (len(items), len(views), dim):
        got = [out.shape[0], *out.shape[2:]]
        raise InputError(f"{model}: '{views[0]}' output is {got} for a batch of {len(items)}, "
                         f"metadata says dimension {dim}")
    norms = np.linalg.norm(out.astype(np.float64), axis=2)
    bad = np.argwhere(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        row, view = bad[0]
        what = "zeros" if np.isfinite(out[row, view]).all() else "NaN or Inf"
        raise InputError(f"{model}: '{views[view]}' is {what} for {shown(dataset.item_name(items[row]))}; "
                         "nothing stored")
    return (out / norms[..., None]).astype(np.float32)


def _refuse_unreadable(dataset: Dataset) -> None:
    """InputError, before any work, when items are known not to be readable images (missing, not an
    image, too large: found while fingerprinting files)."""
    bad = dataset.unreadable_items()
    if bad:
        name, reason = bad[0]
        raise InputError(f"{shown(dataset.spec)}: {shown(name)}: unreadable image ({reason}; {len(bad)} such item(s) in all); fix "
                         "the data, or leave them out with --skip-bad")


def _refuse_transformed(path: Path) -> None:
    """InputError if the set at ``path`` is a gallery transformed by an adapter: embed never replaces one."""
    try:
        transformed = path.is_dir() and read_manifest(path).transformed
    except InputError:
        return  # unreadable: recomputed like any broken set
    if transformed:
        raise InputError(f"{path}: holds a gallery transformed by an adapter, not a model's embeddings; embed this "
                         "model under another --model-id")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Target:
    """One set an embed run writes: ``view`` of the model's outputs, stored under ``model_id`` at ``path``;
    ``backbone``: a bundle's ``query`` output, the frozen backbone evaluated as a model of its own."""

    view: View
    model_id: str
    path: Path
    backbone: bool = False


def _manifest(target: Target, model: Path, sha256: str, info: ModelInfo, dataset: Dataset, provider: str,
              batch_size: int) -> Manifest:
    """The manifest of a set computed now (its shards are filled in by the writer). ``info``: what the
    model file says of the task whose output ``target`` stores (a bundle's ``query``: the backbone's)."""
    record = ModelRecord(id=target.model_id, file=str(model), sha256=sha256, task=info.task,
                         checkpoint_sha256=info.checkpoint_sha256, architecture=info.model,
                         embedding_dim=info.embedding_dim, input_size=info.input_size, top_k=info.top_k,
                         pool=info.pool, selection=info.selection, precision=info.precision,
                         export_versions=info.versions, output=target.view.name, gather=info.gather,
                         query=info.query, adapter=info.adapter)
    if target.backbone:  # the frozen backbone's own [CLS]: no task, no checkpoint, no prompt choice of its own
        record = replace(record, task=0, checkpoint_sha256=None, top_k=None, pool="cls", selection=None, query="cls")
    data = DataRecord(spec=dataset.spec, location=dataset.location, name=dataset.name, split=dataset.split,
                      fingerprint=dataset.fingerprint, size=len(dataset))
    return Manifest(model=record, dataset=data, preprocessing=asdict(info.preprocessing),
                    provenance=dict(info.provenance), provider=provider, batch_size=batch_size, versions=versions(),
                    created=_now())


def _prepare(store: str | Path, path: Path) -> None:
    """Create the set's model folder, or InputError naming ``--store`` when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(writer_lock(path), "a"):
            pass
    except OSError as e:
        raise InputError(f"--store {store}: cannot write {path.parent} ({e.strerror or e})") from None


def model_targets(model: Path, model_id: str, store: str | Path, data_key: str,
                  output: Optional[str] = None) -> list[Target]:
    """The sets an embed of ``model`` writes, read from the file's metadata without a session.

    A single-task file: its ``output`` (default ``embedding``) under ``model_id``. A bundle: with
    ``output`` None, its frozen backbone's ``query`` under ``<model_id>.backbone`` (the oldest model)
    and task t's slice of ``embedding`` under ``<model_id>.task<t>``, in output order; with
    ``output='query'``, the backbone's alone under ``model_id``.
    """
    props = read_props(model)
    if BUNDLE_TASKS_KEY not in props:
        view = View(output or EMBEDDING_OUTPUT)
        return [Target(view, model_id, set_path(store, model_id, data_key))]
    info = BundleInfo.from_props(props, str(model))
    if output == QUERY_OUTPUT:
        return [Target(View(QUERY_OUTPUT), model_id, set_path(store, model_id, data_key), backbone=True)]
    if output is not None:
        raise InputError(f"{model}: a bundle of {len(info.tasks)} tasks stores its '{EMBEDDING_OUTPUT}' per task "
                         f"and its '{QUERY_OUTPUT}' (the frozen backbone), not '{output}' as one set")
    ids = bundle_set_ids(model_id, info)
    return [Target(View(QUERY_OUTPUT), ids[0], set_path(store, ids[0], data_key), backbone=True)] + [
        Target(View(EMBEDDING_OUTPUT, p), i, set_path(store, i, data_key)) for p, i in enumerate(ids[1:])]


def declared_infos(model: Path, targets: Sequence[Target]) -> list[ModelInfo]:
    """What the model file's metadata says of each target's task, read without a session (the
    session's :func:`_infos` checks the graph too)."""
    props = read_props(model)
    if BUNDLE_TASKS_KEY not in props:
        return [ModelInfo.from_props(props, shown(model))]
    info = BundleInfo.from_props(props, shown(model))
    return [info.common if t.backbone else info.tasks[t.view.position] for t in targets]


def _infos(session: ort.InferenceSession, model: Path, targets: Sequence[Target]) -> tuple[list[ModelInfo], int]:
    """What the model says of each target's task (a bundle's backbone: the first task's common
    fields), and how many tasks a bundle holds (0: a single-task file)."""
    if not any(t.backbone or t.view.position is not None for t in targets):
        return [model_info(session, model)], 0
    info = bundle_info(session, model)
    return [info.common if t.backbone else info.tasks[t.view.position] for t in targets], len(info.tasks)


def run_sizes(batch_size: int, shard_rows: int, tasks: int) -> tuple[int, int]:
    """(images per model run, rows per shard of each set) for ``--batch-size`` and ``--shard-rows``.

    A bundle of T ``tasks`` computes T prompted rows per image and holds T + 1 sets' shards at once,
    so the options count rows of all of them: a run takes ``batch_size // T`` images and each set's
    shard ``shard_rows // (T + 1)`` rows (at least 1), and memory stays near a single file's
    (``tasks`` 0: a single-task file, the options as given)."""
    if not tasks:
        return batch_size, shard_rows
    return max(1, batch_size // tasks), max(1, shard_rows // (tasks + 1))


def _writers(targets: Sequence[Target], identity: dict, *, dim: int, shard_rows: int,
             warn: Callable[[str], None]) -> list[ShardWriter]:
    """One writer per target, resumed together: shards beyond the fewest any of them kept are redone."""
    writers = [ShardWriter(t.path, {**identity, "output": t.view.name}, dim=dim, shard_rows=shard_rows, warn=warn)
               for t in targets]
    done = min(len(w.done) for w in writers)
    for w in writers:
        w.truncate(done)
    return writers


def _compute(model: Path, sha256: str, dataset: Dataset, store: str | Path, targets: Sequence[Target], *,
             runtime: RuntimeOptions, shard_rows: int, migrate: bool,
             warn: Callable[[str], None]) -> list[EmbedResult]:
    """Embed ``dataset`` shard by shard into every target, resuming an interrupted run of the same
    identity (or, with ``migrate``, taking over a store format 1 set of this model and data)."""
    start = time.perf_counter()
    local = runtime.ray is None  # with Ray, this session only reads the metadata
    session, used = (create_session(model, runtime.provider, warn, threads=runtime.threads, trt=runtime.trt) if local
                     else create_session(model, "cpu", warn, threads=1))
    infos, tasks = _infos(session, model, targets)
    batch_size, skip_bad = runtime.batch_size, runtime.skip_bad
    manifests = [_manifest(t, model, sha256, i, dataset, used, batch_size) for t, i in zip(targets, infos)]
    if migrate and list(targets) == [Target(View(), targets[0].model_id, targets[0].path)]:
        migrated = migrate_legacy(store, targets[0].path, sha256, dataset, manifests[0], skip_bad=skip_bad,
                                  shard_rows=shard_rows, warn=warn)
        if migrated is not None:
            return [EmbedResult(migrated, True, None, 0.0)]
    per_run, rows = run_sizes(batch_size, shard_rows, tasks)
    identity = {"format": STORE_FORMAT, "model_sha256": sha256, "location": dataset.location,
                "fingerprint": dataset.fingerprint, "batch_size": batch_size, "skip_bad": skip_bad}
    dim = infos[0].embedding_dim
    writers = _writers(targets, identity, dim=dim, shard_rows=rows, warn=warn)
    resumed, n = writers[0].rows, len(dataset)
    first = min(len(writers[0].done) * rows, n)
    providers = {used}
    with tqdm(total=n, initial=first, desc=f"{targets[0].model_id} {dataset.spec}", unit="img",
              disable=not runtime.progress, file=sys.stderr) as bar:
        outputs = _outputs(model, session, infos[0].preprocessing, dataset, first,
                           runtime=replace(runtime, batch_size=per_run), shard_rows=rows,
                           views=[t.view for t in targets])
        for embeddings, labels, skipped in shards_of(outputs, dataset, first, shard_rows=rows, dim=dim, model=model,
                                                     views=[t.view.name for t in targets], on_batch=bar.update,
                                                     on_provider=providers.add):
            for k, writer in enumerate(writers):
                writer.write(embeddings[:, k], labels, skipped)
    if not local:  # what the actors ran on
        used = sorted(providers - {used} or providers)[0]
    seconds = round(time.perf_counter() - start, 3)
    return [EmbedResult(w.finish(replace(m, provider=used, seconds=seconds, created=_now())), False, used, seconds,
                        resumed) for w, m in zip(writers, manifests)]


def embed_model(model: str | Path, dataset: Dataset, store: str | Path, *, runtime: RuntimeOptions = RuntimeOptions(),
                model_id: Optional[str] = None, shard_rows: int = DEFAULT_SHARD_ROWS, force: bool = False,
                warn: Callable[[str], None] = _warn, output: Optional[str] = None) -> list[EmbedResult]:
    """Embed every image of ``dataset`` with the ONNX file ``model`` into the sets of
    :func:`model_targets` under ``<store>/<id>/<dataset.key>/`` (``model_id`` defaults to the file
    stem): one for a single-task file, T + 1 for a bundle of T tasks (computed in one pass).

    An existing set of the same model file (sha256), output and data (location and fingerprint) is
    reused unless ``force``; one that fails verification is recomputed. An unreadable image is an
    error (before any work when its file is missing or not an image), or with ``runtime.skip_bad``
    left out and listed in the manifest. Unlabelled data gives a set without labels. NaN or Inf (or an all-zero
    vector) in an output is an error and nothing is stored. Writers of one set run one at a time (a
    lock file); a killed run leaves its complete shards, and the next run of the same command resumes
    after them. ``output`` names the graph output stored (see :func:`model_targets`); ``runtime`` says
    how the model is opened and fed (provider, threads, decoding workers, batch size, TensorRT, Ray;
    :class:`~infer.runtime.options.RuntimeOptions`). ``runtime.batch_size`` and ``shard_rows``: see
    :func:`run_sizes`.
    """
    model = Path(model)
    model_id = check_model_id(model_id or model.stem)
    runtime.check()
    if not 1 <= shard_rows <= 2**31:
        raise InputError(f"--shard-rows {shard_rows}: must be from 1 to {2**31}")
    if not model.is_file():
        raise InputError(f"{model}: no such ONNX file")
    targets = model_targets(model, model_id, store, dataset.key, output)
    if runtime.ray is not None and [t.view for t in targets] != [View()]:
        raise InputError(f"--engine ray stores a single-task file's '{EMBEDDING_OUTPUT}' output only; embed "
                         f"{model} ({', '.join(t.view.name for t in targets)}) with the local engine")
    if not runtime.skip_bad:
        _refuse_unreadable(dataset)
    if runtime.ray is None:
        check_provider(runtime.provider)  # asked for a GPU: checked even when every set is reused
    sha256 = file_sha256(model)
    expected = {t: _manifest(t, model, sha256, i, dataset, runtime.provider, runtime.batch_size)
                for t, i in zip(targets, declared_infos(model, targets))}
    for t in targets:
        _prepare(store, t.path)
    with ExitStack() as held:
        for t in sorted(targets, key=lambda t: str(t.path)):
            held.enter_context(locked(writer_lock(t.path),
                                      waiting=lambda p=t.path: warn(f"{p}: another embed is writing this set; waiting")))
        found = {}
        for t in targets:
            tidy(t.path)
            _refuse_transformed(t.path)
            stored = None if force else stored_match(t.path, expected[t], dataset, runtime.skip_bad, warn)
            if stored is not None:
                ShardWriter.discard_partial(t.path)
                found[t] = EmbedResult(stored, True, None, 0.0)
        missing = [t for t in targets if t not in found]
        if missing:
            migrate = not force and len(targets) == 1 and not targets[0].path.exists()
            with resumable([t.path for t in missing]):
                found.update(zip(missing, _compute(model, sha256, dataset, store, missing, runtime=runtime,
                                                   shard_rows=shard_rows, migrate=migrate, warn=warn)))
        return [found[t] for t in targets]


def embed_dataset(model: str | Path, dataset: Dataset, store: str | Path, *, output: str = EMBEDDING_OUTPUT,
                  **options) -> EmbedResult:
    """The one set :func:`embed_model` stores of ``output`` of ``model`` (a single-task file's
    ``embedding`` by default, or a bundle's ``query``); ``options`` are :func:`embed_model`'s."""
    return embed_model(model, dataset, store, output=output, **options)[0]
