"""``adapt`` as one call: :func:`run_adapt` fits an adapter between two stored sets of the same fit items,
writes the adapter file and, as asked, its ONNX form (``export``) and the transformed gallery (``apply``).

Which model is the source: the direction says. ``query``: the candidate's (newer) queries are mapped
into the deployed (older) model's space, so the adapter's source is the candidate and its target the
deployed model; the stored gallery is unchanged, and the exported file is the candidate's model file
with the adapter inside. ``gallery``: the deployed model's stored gallery is mapped into the
candidate's space (FCT-style), so the source is the deployed model; the export is the adapter alone,
and ``apply`` writes the deployed gallery transformed as a stored set. Every refusal comes before the fit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...common.contract import ADAPTER_DIRECTIONS, ADAPTER_KINDS, check_choice
from ...common.errors import InputError
from ...common.outputs import writable_file
from ...infer.data.base import Dataset
from ...infer.data.datasets import open_dataset
from ...infer.store.sets import EmbeddingSet
from ..pipeline import collect_from_store
from .adapter import SUFFIX, Adapter
from .apply import apply_to_set, check_source
from .export import Exported, check_model_file, export_adapted_model, export_adapter
from .fit import fit_adapter

ADAPTERS_DIR = "adapters"  # the default folder of --out, and what evaluate --adapters reads
REAL_ROWS = 256  # fit rows an exported adapter alone is checked on, beside random rows


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class AdaptOptions:
    """``adapt``'s options: the ``deployed`` and ``candidate`` model ids whose stored sets of
    ``fit_data`` (a data spec under ``data_path``) in ``store`` are paired; ``kind``, ``direction``,
    ``ridge`` (None: chosen on a held-out tenth) and the split's ``seed``; ``out`` the adapter file
    (default ``adapters/<source>-to-<target>.adapter.npz``); ``export`` an ONNX file (with ``model``,
    the candidate's model file, for a query adapter); ``apply`` with ``gallery`` (the deployed
    gallery's data spec): the transformed gallery as the stored set ``gallery_id`` (default
    ``<source>-to-<target>``) in shards of ``shard_rows`` rows."""

    deployed: str
    candidate: str
    fit_data: str
    kind: str = "orthogonal"
    direction: str = "query"
    ridge: Optional[float] = None
    seed: int = 0
    store: str = "embeddings"
    data_path: str = "data"
    out: Optional[str] = None
    export: Optional[str] = None
    model: Optional[str] = None
    apply: bool = False
    gallery: Optional[str] = None
    gallery_id: Optional[str] = None
    shard_rows: Optional[int] = None

    def check(self) -> None:
        """InputError for options that contradict each other (before anything is read)."""
        check_choice("--kind", self.kind, ADAPTER_KINDS)
        check_choice("--direction", self.direction, ADAPTER_DIRECTIONS)
        if self.ridge is not None and self.kind == "orthogonal":
            raise InputError(f"--ridge {self.ridge}: an orthogonal adapter has no ridge strength (use linear or affine)")
        if self.deployed == self.candidate:
            raise InputError(f"--candidate {self.candidate}: the same model as --deployed; an adapter maps one "
                             "model's space into another's")
        query = self.direction == "query"
        if self.model is not None and not query:
            raise InputError("--model: a gallery adapter is exported alone (--export OUT.onnx); drop --model")
        if self.model is not None and self.export is None:
            raise InputError("--model: names the file the adapter goes into; give --export OUT.onnx too")
        if self.export is not None and query and self.model is None:
            raise InputError(f"--export {self.export}: a query adapter is exported inside the candidate's model file; "
                             "name that file with --model")
        if self.apply and query:
            raise InputError("--apply: transforms a stored gallery, which a gallery adapter does (--direction "
                             "gallery); a query adapter is shipped inside the query model (--export)")
        if self.apply != (self.gallery is not None):
            raise InputError("--gallery: names the deployed gallery --apply transforms" if self.apply else
                             "--gallery: only with --apply (the gallery to transform)")
        if (self.gallery_id is not None or self.shard_rows is not None) and not self.apply:
            raise InputError("--gallery-id and --shard-rows: only with --apply")


@dataclass
class AdaptResult:
    """What :func:`run_adapt` wrote: the ``adapter`` at ``out``, the ``exported`` ONNX file and the
    ``applied`` transformed gallery (None when not asked for)."""

    adapter: Adapter
    out: Path
    exported: Optional[Exported] = None
    applied: Optional[EmbeddingSet] = None


def _out(opts: AdaptOptions, source: str, target: str) -> Path:
    out = Path(opts.out) if opts.out is not None else Path(ADAPTERS_DIR) / f"{source}-to-{target}{SUFFIX}"
    if not out.name.endswith(SUFFIX) or out.name == SUFFIX:
        raise InputError(f"--out {out}: an adapter file's name ends in {SUFFIX} (evaluate --adapters reads those)")
    return writable_file(out, "--out")


def _real_images(opts: AdaptOptions, warn: Callable[[str], None]) -> Optional[Dataset]:
    """The fit data, to check an adapted model file on real images; None (said) when it cannot be read here."""
    try:
        return open_dataset(opts.fit_data, opts.data_path)
    except InputError as e:
        warn(f"note: the adapted model is checked on random images only: the fit data cannot be read here ({e})")
        return None


def run_adapt(opts: AdaptOptions, *, warn: Callable[[str], None] = _warn) -> AdaptResult:
    """Check everything, fit, write (see the module doc and :class:`AdaptOptions`)."""
    opts.check()
    source, target = ((opts.candidate, opts.deployed) if opts.direction == "query" else
                      (opts.deployed, opts.candidate))
    fit_from, fit_to = collect_from_store([source, target], opts.fit_data, opts.fit_data, opts.store,
                                          data_path=opts.data_path)[0]
    out = _out(opts, source, target)
    export = None if opts.export is None else writable_file(opts.export, "--export")
    if export is not None and export.suffix != ".onnx":
        raise InputError(f"--export {export}: an ONNX file's name ends in .onnx")
    images = None
    if opts.model is not None:
        if not Path(opts.model).is_file():
            raise InputError(f"--model {opts.model}: no such ONNX file")
        check_model_file(Path(opts.model), fit_from.manifest.model, fit_from.dim)
        images = _real_images(opts, warn)
    gallery = None
    if opts.apply:
        gallery = collect_from_store([source], opts.gallery, opts.gallery, opts.store, data_path=opts.data_path)[0][0]
        if (gallery.manifest.model.sha256, gallery.manifest.model.output) != (fit_from.manifest.model.sha256,
                                                                              fit_from.manifest.model.output):
            raise InputError(f"{gallery.path}: not embedded by the model file of the fit set {fit_from.path}")
    adapter = fit_adapter(fit_from, fit_to, kind=opts.kind, direction=opts.direction, ridge=opts.ridge, seed=opts.seed)
    if gallery is not None:
        check_source(adapter, gallery)
    adapter.save(out)
    result = AdaptResult(adapter, out)
    if export is not None:
        result.exported = (export_adapted_model(opts.model, adapter, export, data=images) if opts.model else
                           export_adapter(adapter, export, real=np.asarray(fit_from.embeddings[:REAL_ROWS])))
    if gallery is not None:
        result.applied = apply_to_set(adapter, gallery, opts.store, model_id=opts.gallery_id,
                                      shard_rows=opts.shard_rows, warn=warn)
    return result


def describe(result: AdaptResult) -> str:
    """What ``adapt`` prints: the adapter, how it was fitted, the files written and what to run next."""
    a = result.adapter
    chosen = ""
    if a.selection:
        cosine = dict(a.selection)[a.ridge]
        chosen = f", ridge {a.ridge:g} chosen on a held-out tenth (mean cosine {cosine:.4f} there)"
    elif a.ridge is not None:
        chosen = f", ridge {a.ridge:g} (given)"
    what = ("the candidate's queries into the deployed model's space" if a.direction == "query" else
            "the deployed gallery into the candidate's space")
    lines = [f"{a.kind} {a.direction} adapter {a.source.id} -> {a.target.id} ({what}): {a.dim_in} -> {a.dim_out} "
             f"dimensions, fitted on {a.fit_rows} items of {a.fit.spec}{chosen}",
             f"adapter: {result.out} (digest {a.digest[:12]})"]
    if result.exported is not None:
        e = result.exported
        real = "" if e.real_error is None else f", real inputs {e.real_error:.2g}"
        lines.append(f"export: {e.path} (max abs difference from numpy's adapter: random inputs {e.random_error:.2g}"
                     f"{real})")
    if result.applied is not None:
        lines.append(f"transformed gallery: {result.applied.path} ({result.applied.count} rows, {a.dim_out} dimensions)")
    lines.append(f"evaluate it: python cli.py evaluate ... --adapters {result.out.parent} (fit data must be disjoint "
                 "from the query and gallery data)")
    return "\n".join(lines)
