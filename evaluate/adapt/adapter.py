"""A compatibility adapter: a linear map (with a bias for ``affine``) from one model's embedding space
into another's, followed by L2 normalisation, and what it was fitted on.

Conventions: embeddings are rows. ``weight`` is float64 [D_in, D_out] and an embedding ``x`` [D_in] of
the ``source`` model maps to ``normalise(normalise(x) @ weight + bias)`` [D_out] in the ``target``
model's space (cosine geometry, as every stored set; stored rows are unit vectors already). ``direction`` says which side of a retrieval it is
used on: ``query`` (the new model's queries into the old model's space; the gallery is unchanged) or
``gallery`` (the old gallery into the new model's space, FCT-style).

An adapter file (``*.adapter.npz``, :meth:`Adapter.save`) holds ``weight``, ``bias`` (empty for
none) and ``meta`` (JSON: kind, direction, the source and target models' store records, the fit
data's record, the ridge strength and its selection, and the ``digest``), read back without pickle
and checked, digest included, by :meth:`Adapter.load`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from ...common.atomic import atomic_file
from ...common.contract import ADAPTER_DIRECTIONS, ADAPTER_KINDS
from ...common.errors import InputError
from ...infer.store.manifest import MAX_DIM, AdapterRecord, DataRecord, ModelRecord

ADAPTER_FORMAT = "1"
SUFFIX = ".adapter.npz"
_ARRAYS = ("weight", "bias", "meta")
_MAX_SELECTION = 64


@dataclass(frozen=True, eq=False)
class Adapter:
    """A fitted adapter (see the module doc). ``source`` and ``target``: the store records of the models
    whose sets it was fitted on (``source`` the mapped one); ``fit``: the paired items' data record and
    ``fit_rows`` the rows fitted; ``ridge``: the relative ridge strength (see :mod:`.fit`), None for
    ``orthogonal``; ``selection``: (ridge, held-out mean cosine) of each candidate when it was chosen;
    ``seed``: of the held-out split."""

    kind: str
    direction: str
    weight: np.ndarray
    bias: Optional[np.ndarray]
    source: ModelRecord
    target: ModelRecord
    fit: DataRecord
    fit_rows: int
    ridge: Optional[float] = None
    selection: tuple[tuple[float, float], ...] = field(default=())
    seed: int = 0

    @property
    def dim_in(self) -> int:
        return self.weight.shape[0]

    @property
    def dim_out(self) -> int:
        return self.weight.shape[1]

    @property
    def default_id(self) -> str:
        """The store id of what this adapter makes (an adapted model, a transformed set): ``<source>-to-<target>``."""
        return f"{self.source.id}-to-{self.target.id}"

    def meta(self) -> dict:
        """Everything but the arrays, as JSON-able values (the digest excluded)."""
        return {"format": ADAPTER_FORMAT, "kind": self.kind, "direction": self.direction,
                "source": asdict(self.source), "target": asdict(self.target), "fit": asdict(self.fit),
                "fit_rows": self.fit_rows, "ridge": self.ridge, "selection": [list(s) for s in self.selection],
                "seed": self.seed}

    @cached_property
    def digest(self) -> str:
        """sha256 of the content: the metadata's canonical JSON, then weight and bias as float64 bytes."""
        h = hashlib.sha256(json.dumps(self.meta(), sort_keys=True, allow_nan=False).encode())
        h.update(np.ascontiguousarray(self.weight, "<f8").tobytes())
        if self.bias is not None:
            h.update(np.ascontiguousarray(self.bias, "<f8").tobytes())
        return h.hexdigest()

    @property
    def record(self) -> AdapterRecord:
        """What a model file or a manifest says of this adapter."""
        return AdapterRecord(digest=self.digest, kind=self.kind, direction=self.direction, source_id=self.source.id,
                             source_sha256=self.source.sha256, target_id=self.target.id,
                             target_sha256=self.target.sha256, dim_in=self.dim_in, dim_out=self.dim_out,
                             fit_location=self.fit.location, fit_fingerprint=self.fit.fingerprint,
                             fit_rows=self.fit_rows)

    @cached_property
    def _float32(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return self.weight.astype(np.float32), None if self.bias is None else self.bias.astype(np.float32)

    def apply(self, x: np.ndarray, *, where: str = "input", first_row: int = 0) -> np.ndarray:
        """float32 [N, D_out] unit rows: ``x`` [N, D_in] L2-normalised (stored rows already are; a
        model's raw output is not), mapped, L2-normalised, in float32 (the ONNX graph's precision).
        InputError naming ``where`` and the row (counted from ``first_row``) if a row is, or maps to,
        zero or a non-finite vector."""
        weight, bias = self._float32
        x = np.asarray(x, np.float32)
        mapped = _unit(x, where, first_row, "is") @ weight
        if bias is not None:
            mapped += bias
        return _unit(mapped, where, first_row, f"maps under the {self.kind} adapter {self.digest[:12]} to")

    def apply64(self, x: np.ndarray) -> np.ndarray:
        """The same map in float64 (the reference the ONNX graphs are checked against)."""
        x = np.asarray(x, np.float64)
        mapped = x / np.linalg.norm(x, axis=1, keepdims=True) @ self.weight + (0.0 if self.bias is None else self.bias)
        return mapped / np.linalg.norm(mapped, axis=1, keepdims=True)

    def save(self, path: str | Path) -> Path:
        """Write the adapter file at ``path`` atomically; returns ``path``."""
        path = Path(path)
        meta = {**self.meta(), "digest": self.digest}
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, weight=np.ascontiguousarray(self.weight, np.float64),
                     bias=np.zeros(0) if self.bias is None else np.ascontiguousarray(self.bias, np.float64),
                     meta=np.array(json.dumps(meta, sort_keys=True, allow_nan=False)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Adapter":
        """The adapter in the file at ``path``, checked: InputError naming the file for anything that is
        not an adapter file as :meth:`save` writes it, or whose content differs from its digest."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if sorted(z.files) != sorted(_ARRAYS):
                    raise ValueError(f"arrays {sorted(z.files)}, expected {', '.join(_ARRAYS)}")
                weight, bias, meta = z["weight"], z["bias"], json.loads(str(z["meta"][()]))
            adapter = _from_parts(weight, bias, meta)
        except FileNotFoundError:
            raise InputError(f"{path}: no such adapter file") from None
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
        except (ValueError, KeyError, TypeError, IndexError, RecursionError, EOFError, zipfile.BadZipFile,
                io.UnsupportedOperation) as e:
            raise InputError(f"{path}: not a dpcompat adapter file ({str(e)[:200]})") from None
        if meta.get("digest") != adapter.digest:
            raise InputError(f"{path}: its content differs from its recorded digest (the file was changed)")
        return adapter


def _unit(x: np.ndarray, where: str, first_row: int, what: str) -> np.ndarray:
    """``x`` [N, D] float32 with L2-normalised rows; InputError for a zero or non-finite row."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~(norms[:, 0] > 0) | ~np.isfinite(norms[:, 0]))
    if bad.size:
        raise InputError(f"{where}: row {first_row + bad[0]} {what} a zero or non-finite vector ({bad.size} such rows)")
    return x / norms


def _number(value: object, what: str, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"{what} {value!r} is not a finite number of at least {low}")
    return float(value)


def _from_parts(weight: np.ndarray, bias: np.ndarray, meta: dict) -> Adapter:
    """An Adapter from an adapter file's arrays and metadata; ValueError for anything malformed."""
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"format {str(meta.get('format') if isinstance(meta, dict) else meta)[:20]!r}, this toolkit "
                         f"reads {ADAPTER_FORMAT}")
    if weight.dtype != np.float64 or weight.ndim != 2 or not all(1 <= d <= MAX_DIM for d in weight.shape):
        raise ValueError(f"weight is {weight.dtype} {weight.shape}, expected float64 [D_in, D_out]")
    if bias.dtype != np.float64 or bias.shape not in ((0,), (weight.shape[1],)):
        raise ValueError(f"bias is {bias.dtype} {bias.shape}, expected float64 [0] or [{weight.shape[1]}]")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("weight or bias is not finite")
    kind, direction = meta["kind"], meta["direction"]
    if kind not in ADAPTER_KINDS or direction not in ADAPTER_DIRECTIONS:
        raise ValueError(f"kind {str(kind)[:20]!r} or direction {str(direction)[:20]!r} unknown")
    if (kind == "affine") != (bias.size > 0) or kind == "orthogonal" and weight.shape[0] != weight.shape[1]:
        raise ValueError(f"the {kind} adapter of {weight.shape} with {bias.size} bias values")
    selection = meta["selection"]
    if not isinstance(selection, list) or len(selection) > _MAX_SELECTION or \
            not all(isinstance(s, list) and len(s) == 2 for s in selection):
        raise ValueError("selection is not a list of (ridge, cosine) pairs")
    ridge = None if meta["ridge"] is None else _number(meta["ridge"], "ridge", 0.0)
    seed = meta["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed {seed!r} is not a whole number")
    fit_rows = meta["fit_rows"]
    if isinstance(fit_rows, bool) or not isinstance(fit_rows, int) or not 1 <= fit_rows:
        raise ValueError(f"fit_rows {fit_rows!r} is not a positive whole number")
    return Adapter(kind=kind, direction=direction, weight=weight, bias=bias if bias.size else None,
                   source=ModelRecord.from_dict(meta["source"]), target=ModelRecord.from_dict(meta["target"]),
                   fit=DataRecord.from_dict(meta["fit"]), fit_rows=fit_rows, ridge=ridge,
                   selection=tuple((_number(r, "ridge", 0.0), _number(c, "cosine")) for r, c in selection), seed=seed)
