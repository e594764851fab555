"""From ONNX files or stored ids to validated embedding sets, then to a compatibility evaluation."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .compat import Compatibility, compatibility
from ..infer.datasets import dataset_key, open_dataset
from ..infer.embed import embed_dataset
from ..common.errors import InputError
from ..infer.store import EmbeddingSet, check_comparable, check_model_id, read_set, set_path


@dataclass
class Evaluation:
    """A result with what it was computed on (the ``query``/``gallery``/``protocol`` of the reports)."""

    result: Compatibility
    models: list[str]
    query: dict
    gallery: dict
    protocol: dict


def model_files(models: Sequence[str], exports_dir: Optional[str]) -> list[Path]:
    """The ONNX files named, or every ``*.onnx`` in ``exports_dir`` (exactly one of the two)."""
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
        return files
    files = [Path(m) for m in models]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such ONNX file")
    return files


def _once_to_stderr() -> Callable[[str], None]:
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
                        store: str | Path, by_task: bool = False, provider: str = "auto", batch_size: int = 64,
                        skip_bad: bool = False, progress: bool = False,
                        warn: Optional[Callable[[str], None]] = None) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Query and gallery sets of every model, embedding what the store lacks.

    With ``by_task`` the models are put in the order of the task recorded in their metadata.
    """
    _unique_ids([m.stem for m in models], models)
    specs = list(dict.fromkeys([query_spec, gallery_spec]))
    datasets = {spec: open_dataset(spec, data_path) for spec in specs}
    warn = warn or _once_to_stderr()
    sets = {spec: [embed_dataset(m, datasets[spec], store, provider=provider, batch_size=batch_size,
                                 skip_bad=skip_bad, progress=progress, warn=warn).set for m in models]
            for spec in specs}
    query, gallery = sets[query_spec], sets[gallery_spec]
    if by_task:
        tasks = [s.manifest["model"]["task"] for s in query]
        for t in set(tasks):
            same = [str(m) for m, task in zip(models, tasks) if task == t]
            if len(same) > 1:
                raise InputError(f"{' and '.join(same)} are all task {t}; name the files to compare with --models")
        order = np.argsort(tasks, kind="stable")
        query, gallery = [query[i] for i in order], [gallery[i] for i in order]
    return query, gallery


def collect_from_store(model_ids: Sequence[str], query_spec: str, gallery_spec: str,
                       store: str | Path) -> tuple[list[EmbeddingSet], list[EmbeddingSet]]:
    """Stored query and gallery sets of ``model_ids``, in that order; no ONNX file or data needed."""
    _unique_ids(model_ids, model_ids)
    if not model_ids:
        raise InputError("--from-store: no model ids (expected e.g. task1,task2,task3)")
    sets = {}
    for spec in dict.fromkeys([query_spec, gallery_spec]):
        paths = [set_path(store, m, dataset_key(spec)) for m in model_ids]
        for m, path in zip(model_ids, paths):
            if not path.is_dir():
                raise InputError(f"{path}: no stored set of {m} on {spec} (embed it first, or pass the ONNX files)")
        sets[spec] = [read_set(p) for p in paths]
    return sets[query_spec], sets[gallery_spec]


def _describe(sets: Sequence[EmbeddingSet]) -> dict:
    m = sets[0].manifest
    # How each model embeds; stores written before the gather and query modes existed used the defaults.
    modes = {s.model_id: {"pool": s.manifest["model"].get("pool"), "selection": s.manifest["model"].get("selection"),
                          "gather": s.manifest["model"].get("gather", "per-sample"),
                          "query": s.manifest["model"].get("query", "cls")} for s in sets}
    return {"spec": m["dataset"]["spec"], "fingerprint": m["dataset"]["fingerprint"], "count": sets[0].count,
            "skipped": len(m["skipped"]), "sets": [str(s.path) for s in sets], "modes": modes}


def evaluate_sets(query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], k: int = 5,
                  include_self: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Compatibility of the sets (same model order in both) after checking they can be compared.

    When query and gallery are the same data, each query's own image is left out of its gallery
    unless ``include_self``.
    """
    check_comparable(query, gallery)
    same = query[0].data == gallery[0].data and np.array_equal(query[0].labels, gallery[0].labels)
    exclude_self = same and not include_self
    per_query = gallery[0].count - exclude_self
    if not 1 <= k <= per_query:
        raise InputError(f"--k {k}: must be between 1 and {per_query}, the gallery size per query")
    if per_query < 5:
        raise InputError(f"gallery {gallery[0].path}: {per_query} items per query, top5 needs at least 5")
    result = compatibility([s.embeddings for s in query], [s.embeddings for s in gallery], query[0].labels,
                           gallery[0].labels, k=k, exclude_self=exclude_self, progress=progress)
    return Evaluation(result=result, models=[s.model_id for s in query], query=_describe(query),
                      gallery=_describe(gallery), protocol={"similarity": "cosine", "k": k,
                                                            "own_image_left_out": exclude_self})
