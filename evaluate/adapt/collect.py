"""Which adapted rows an evaluation reports (:mod:`.rows`), and what each is computed from.

Two sources: every ``*.adapter.npz`` of ``evaluate --adapters DIR`` (an adapter's source and target
are models of the evaluation, found by the sha256 and graph output their store records name), and
every evaluated model file with a query adapter inside (``adapt --export``), whose metadata names
its source and target by sha256. Either kind of row is refused, naming its file, when its models
are not both evaluated, when it would compare an older model's queries with a newer model's gallery
(the decision's pairs are a newer candidate on an older deployed gallery), or when its fit data
overlaps the query or gallery data (the leakage guard, :mod:`.guard`). A stored set made with an
adapter is no model of the matrix: ``--from-store`` refuses it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ...common.errors import InputError
from ...infer.data.base import location_key
from ...infer.store.manifest import AdapterRecord, ModelRecord
from ...infer.store.sets import EmbeddingSet, read_set, set_path
from ..metrics.table import METRICS
from ..decide import DecisionOptions, backfill_values
from ..pipeline import Evaluation
from .adapter import SUFFIX, Adapter
from .curve import adapted_pair, curve_adapters
from .guard import check_disjoint, check_locations, check_no_leak, record_data
from .rows import AdaptedRow, RowInput, adapted_row, compares


def load_adapters(folder: str | Path) -> list[tuple[Path, Adapter]]:
    """(file, adapter) of every ``*.adapter.npz`` in ``folder``, in name order, each checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--adapters {folder}: not a folder")
    files = sorted(folder.glob("*" + SUFFIX))
    if not files:
        raise InputError(f"--adapters {folder}: no *{SUFFIX} files there (python cli.py adapt --out writes them)")
    return [(f, Adapter.load(f)) for f in files]


def check_fit_locations(adapters: Sequence[tuple[Path, Adapter]], locations: dict[str, str]) -> None:
    """The leakage guard on what the data locations say (``{"query": ..., "gallery": ...}``), before any embedding."""
    for file, adapter in adapters:
        check_locations(adapter.fit, locations, name=str(file))


def refuse_adapted_sets(sets: Sequence[EmbeddingSet]) -> None:
    """InputError for a stored set made with an adapter among the sets of ``--from-store``."""
    for s in sets:
        a = s.manifest.model.adapter
        if a is not None:
            made = "a gallery transformed by" if s.manifest.transformed else "embeddings by a model file with"
            raise InputError(f"{s.path}: {made} the {a.kind} {a.direction} adapter ({a.source_id} \u2192 {a.target_id}), "
                             "not a model of the matrix; evaluate the two models with --adapters DIR (the folder of "
                             f"its *{SUFFIX} file), or name the model file with the adapter inside")


def _where(model: ModelRecord, sets: Sequence[EmbeddingSet], file: Path, models: Sequence[str]) -> int:
    for n, s in enumerate(sets):
        if (s.manifest.model.sha256, s.manifest.model.output) == (model.sha256, model.output):
            return n
    raise InputError(f"{file}: maps between {model.id}'s space (sha256 {model.sha256[:12]}, '{model.output}') and "
                     f"another's, but {model.id} is not among the evaluated models ({', '.join(models)}); evaluate "
                     "both models of the adapter")


def _ordered(file: Path, kind: str, direction: str, i: int, j: int, models: Sequence[str]) -> tuple[int, int]:
    """(candidate i, deployed j) after refusing an adapter that would put the older model's queries on the
    newer model's gallery."""
    if i <= j:
        what = "queries" if direction == "query" else "gallery"
        raise InputError(f"{file}: the {kind} {direction} adapter of {models[i]}'s queries on {models[j]}'s gallery, but "
                         f"{models[i]} is not newer than {models[j]} in task order; the report's pairs are a newer "
                         f"candidate's queries on an older deployed gallery: fit the {what} adapter with "
                         f"--candidate {models[j]} --deployed {models[i]}")
    return i, j


def _fit_sets(adapter: Adapter, store: str | Path) -> tuple[Optional[tuple[EmbeddingSet, EmbeddingSet]], Optional[str]]:
    """The adapter's two fit sets in ``store`` (what its learning curve refits on), or None and why not."""
    found = []
    for model in (adapter.source, adapter.target):
        path = set_path(store, model.id, location_key(adapter.fit.location))
        if not path.is_dir():
            return None, f"no learning curve: the fit sets are not in the store {store} ({path} is missing)"
        s = read_set(path)
        m, d = s.manifest.model, s.manifest.dataset
        if (m.sha256, m.output, d.location, d.fingerprint) != (model.sha256, model.output, adapter.fit.location,
                                                                adapter.fit.fingerprint):
            return None, f"no learning curve: {path} is not the set the adapter was fitted on"
        found.append(s)
    return (found[0], found[1]), None


def _adapter_input(file: Path, adapter: Adapter, query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet],
                   models: Sequence[str], store: str | Path) -> RowInput:
    source, target = _where(adapter.source, query, file, models), _where(adapter.target, query, file, models)
    i, j = _ordered(file, adapter.kind, adapter.direction, *((source, target) if adapter.direction == "query"
                                                               else (target, source)), models)
    check_no_leak(adapter, query[i], gallery[j], name=str(file))
    q, g = adapted_pair(adapter, query[i], gallery[j])
    sets, note = _fit_sets(adapter, store)

    def points() -> Iterator:
        for size, refit in curve_adapters(*sets, query[i], gallery[j], kind=adapter.kind, direction=adapter.direction,
                                          ridge=None if adapter.selection else adapter.ridge, seed=adapter.seed):
            yield (size, refit.ridge, *adapted_pair(refit, query[i], gallery[j]))

    return RowInput(str(file), adapter.record, i, j, q, g, compares(adapter.record, models[i], models[j]),
                    curve=points if sets else None, curve_note=note)


def _one(record_sha: str, sets: Sequence[EmbeddingSet], what: str, file: str, models: Sequence[str]) -> int:
    found = [n for n, s in enumerate(sets) if s.manifest.model.sha256 == record_sha]
    if len(found) != 1:
        raise InputError(f"{file}: holds a query adapter whose {what} (sha256 {record_sha[:12]}) is "
                         + ("not among the evaluated models: name its model file too" if not found else
                            f"several evaluated models ({', '.join(models[n] for n in found)}, one bundle); evaluate "
                            "single-task files"))
    return found[0]


def _model_file_input(adapted: EmbeddingSet, query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet],
                      models: Sequence[str]) -> RowInput:
    record: AdapterRecord = adapted.manifest.model.adapter
    file = adapted.manifest.model.file or adapted.model_id
    i, j = _ordered(Path(file), record.kind, record.direction, _one(record.source_sha256, query, "source", file, models),
                    _one(record.target_sha256, query, "target", file, models), models)
    check_disjoint(record_data(record), adapted, gallery[j], name=file)
    return RowInput(file, record, i, j, adapted.embeddings, gallery[j].embeddings,
                    compares(record, models[i], models[j], adapted_model=adapted.model_id),
                    curve_note="no learning curve: a model file holds its adapter's record, not its fit sets; "
                               f"evaluate its *{SUFFIX} file with --adapters for one")


def row_inputs(adapters: Sequence[tuple[Path, Adapter]], adapted_sets: Sequence[EmbeddingSet],
               query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet], *, store: str | Path) -> list[RowInput]:
    """Each adapted row's input, matched to ``query``/``gallery`` (the evaluation's sets, in task order)
    and checked (see the module doc), in the decision's pair order; before the evaluation's work."""
    models = [s.model_id for s in query]
    inputs = [_adapter_input(f, a, query, gallery, models, store) for f, a in adapters]
    inputs += [_model_file_input(s, query, gallery, models) for s in adapted_sets]
    return sorted(inputs, key=lambda r: (r.j, r.i))


def evaluate_rows(ev: Evaluation, query: Sequence[EmbeddingSet], gallery: Sequence[EmbeddingSet],
                  inputs: Sequence[RowInput], options: DecisionOptions) -> list[AdaptedRow]:
    """Every adapted row of ``ev`` (computed from the same ``query``/``gallery`` sets) under its rule."""
    if not inputs:
        return []
    start = time.perf_counter()
    r, rule = ev.result, ev.decision.rule
    k, exclude_self = ev.protocol["k"], ev.protocol["own_image_left_out"]
    labels = query[0].labels, gallery[0].labels
    curve = backfill_values(r, [s.embeddings for s in query], [s.embeddings for s in gallery], *labels, k=k,
                            exclude_self=exclude_self, options=options)
    seen: dict[tuple[int, int, int], object] = {}

    def values(i: int, j: int, step: int):  # one backfilled ranking per point, whatever the rows of a pair
        if (i, j, step) not in seen:
            seen[i, j, step] = curve(i, j, step)
        return seen[i, j, step]

    pairs = {(p.query, p.gallery): p for p in ev.decision.pairs}
    rows = [adapted_row(row, ev.models, pairs, {n: r.values(n, row.j, row.j) for n in r.metrics if n in METRICS},
                        float(r.metrics[rule.metric][row.i, row.i]), *labels, rule, resamples=r.resamples, seed=r.seed,
                        values=values, steps=options.steps, k=k, exclude_self=exclude_self) for row in inputs]
    r.seconds["adapters"] = time.perf_counter() - start
    return rows
