"""The manifest of a stored embedding set (``manifest.json``), as typed records with validation.

Everything read from a manifest is untrusted: :meth:`Manifest.from_json` checks types, bounds and
the consistency of counts, then the manifest's own digest (``manifest_sha256``, written by
:meth:`Manifest.to_json`), and turns any malformed or edited input into one :class:`InputError`. Shard file
names are derived from their position, never read from the manifest, so a manifest cannot point
outside its set folder.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from ...common.contract import ADAPTER_DIRECTIONS, ADAPTER_KINDS
from ...common.errors import InputError

STORE_FORMAT = "2"
DIGEST_KEY = "manifest_sha256"  # the manifest's own digest (:func:`content_digest`), checked on every read
DEFAULT_SHARD_ROWS = 65_536
MAX_MANIFEST_BYTES = 256 * 2**20
MAX_ROWS = 2**40
MAX_DIM = 65_536
MAX_SHARDS = 2**20
MAX_TEXT = 4096
MAX_KEYS = 64
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Malformed(ValueError):
    """A manifest field that is not what the format says; becomes an InputError naming the file."""


def _get(d: dict, key: str, kind: type | tuple, *, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise _Malformed(f"expected an object holding {key!r}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise _Malformed(f"no {key!r}")
    value = d[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise _Malformed(f"{key!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    return value


def _text(d: dict, key: str, *, optional: bool = False, limit: int = MAX_TEXT) -> Optional[str]:
    value = _get(d, key, str, optional=optional)
    if value is not None and len(value) > limit:
        raise _Malformed(f"{key!r} is longer than {limit} characters")
    return value


def _int(d: dict, key: str, low: int, high: int, *, optional: bool = False) -> Optional[int]:
    value = _get(d, key, int, optional=optional)
    if value is not None and not low <= value <= high:
        raise _Malformed(f"{key!r} is {value}, expected {low} to {high}")
    return value


def _sha256(d: dict, key: str, *, optional: bool = False) -> Optional[str]:
    value = _text(d, key, optional=optional)
    if value is not None and not _SHA256.match(value):
        raise _Malformed(f"{key!r} is not a sha256 hex digest")
    return value


def _scalars(d: dict, key: str, *, optional: bool = True) -> dict:
    """A flat JSON object of at most MAX_KEYS short strings, numbers, booleans, nulls or short lists of them."""
    value = _get(d, key, dict, optional=optional) or {}
    if len(value) > MAX_KEYS:
        raise _Malformed(f"{key!r} has more than {MAX_KEYS} entries")
    for k, v in value.items():
        items = v if isinstance(v, list) and len(v) <= 16 else [v]
        if len(k) > 256 or not all(x is None or isinstance(x, (bool, int, float)) or
                                   isinstance(x, str) and len(x) <= MAX_TEXT for x in items):
            raise _Malformed(f"{key!r}: entry {k[:40]!r} is not a short scalar")
    return value


def _choice(d: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = _text(d, key, limit=64)
    if value not in allowed:
        raise _Malformed(f"{key!r} is {value!r}, expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class AdapterRecord:
    """A compatibility adapter (:mod:`evaluate.adapt`) that maps embeddings of the ``source`` model into
    the ``target`` model's space: its ``digest`` (sha256 of its content), ``kind``, ``direction``,
    dimensions, and the data it was fitted on (location, fingerprint, rows). A model file with a query
    adapter inside, and every set made with an adapter, carries one: such vectors live in the target's
    space, whatever model computed them."""

    digest: str
    kind: str
    direction: str
    source_id: str
    source_sha256: str
    target_id: str
    target_sha256: str
    dim_in: int
    dim_out: int
    fit_location: str
    fit_fingerprint: str
    fit_rows: int

    def __post_init__(self):
        if self.kind == "orthogonal" and self.dim_in != self.dim_out:
            raise _Malformed(f"an orthogonal adapter maps {self.dim_in} to {self.dim_out} dimensions")

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterRecord":
        return cls(digest=_sha256(d, "digest"), kind=_choice(d, "kind", ADAPTER_KINDS),
                   direction=_choice(d, "direction", ADAPTER_DIRECTIONS), source_id=_text(d, "source_id", limit=255),
                   source_sha256=_sha256(d, "source_sha256"), target_id=_text(d, "target_id", limit=255),
                   target_sha256=_sha256(d, "target_sha256"), dim_in=_int(d, "dim_in", 1, MAX_DIM),
                   dim_out=_int(d, "dim_out", 1, MAX_DIM), fit_location=_text(d, "fit_location"),
                   fit_fingerprint=_sha256(d, "fit_fingerprint"), fit_rows=_int(d, "fit_rows", 1, MAX_ROWS))


@dataclass(frozen=True)
class ModelRecord:
    """The export a set was computed with (``id`` names its store folder). ``adapter``: the vectors are
    in that adapter's target space (a model file with a query adapter inside, or a transformed set, see
    :class:`TransformRecord`; then ``sha256`` is the adapter's digest: no model file computed them)."""

    id: str
    sha256: str
    task: int
    file: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    architecture: Optional[str] = None
    embedding_dim: Optional[int] = None
    input_size: Optional[int] = None
    top_k: Optional[int] = None
    pool: Optional[str] = None
    selection: Optional[str] = None
    precision: Optional[str] = None
    export_versions: dict = field(default_factory=dict)
    output: str = "embedding"  # the graph output stored (a bundle's frozen-backbone set stores "query")
    gather: str = "per-sample"  # the export's e-prompt gather and query function (see common/contract.py)
    query: str = "cls"
    adapter: Optional[AdapterRecord] = None

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRecord":
        adapter = _get(d, "adapter", dict, optional=True)
        return cls(id=_text(d, "id", limit=255), sha256=_sha256(d, "sha256"), task=_int(d, "task", 0, 10**6),
                   file=_text(d, "file", optional=True), checkpoint_sha256=_text(d, "checkpoint_sha256", optional=True),
                   architecture=_text(d, "architecture", optional=True),
                   embedding_dim=_int(d, "embedding_dim", 1, MAX_DIM, optional=True),
                   input_size=_int(d, "input_size", 1, 2**16, optional=True),
                   top_k=_int(d, "top_k", 1, 2**16, optional=True), pool=_text(d, "pool", optional=True),
                   selection=_text(d, "selection", optional=True), precision=_text(d, "precision", optional=True),
                   export_versions=_scalars(d, "export_versions"),
                   output=_text(d, "output", limit=255, optional=True) or "embedding",
                   gather=_text(d, "gather", limit=64, optional=True) or "per-sample",
                   query=_text(d, "query", limit=64, optional=True) or "cls",
                   adapter=None if adapter is None else AdapterRecord.from_dict(adapter))


@dataclass(frozen=True)
class TransformRecord:
    """How a transformed set was made: a gallery adapter (the set's ``model.adapter``) applied to the
    stored set at ``source_set``, which ``source_model`` embedded. Such a set was never embedded by a
    model: evaluate reports it as the source model's gallery mapped into the target's space."""

    source_set: str
    source_model: ModelRecord

    @classmethod
    def from_dict(cls, d: dict) -> "TransformRecord":
        return cls(source_set=_text(d, "source_set"), source_model=ModelRecord.from_dict(_get(d, "source_model", dict)))


@dataclass(frozen=True)
class DataRecord:
    """The data a set holds the embeddings of: the spec as given, its resolved ``location`` (which
    names the set), its content ``fingerprint`` and its item count ``size`` (skipped ones included)."""

    spec: str
    location: str
    name: str
    split: str
    fingerprint: str
    size: int

    @classmethod
    def from_dict(cls, d: dict) -> "DataRecord":
        return cls(spec=_text(d, "spec"), location=_text(d, "location"), name=_text(d, "name", limit=255),
                   split=_text(d, "split", limit=MAX_TEXT), fingerprint=_sha256(d, "fingerprint"),
                   size=_int(d, "size", 1, MAX_ROWS))


@dataclass(frozen=True)
class Shard:
    """One complete shard: its row count and the sha256 of its files' bytes (``labels_sha256`` None: a
    shard of an unlabelled set, which has no labels file)."""

    rows: int
    embeddings_sha256: str
    labels_sha256: Optional[str]

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(rows=_int(d, "rows", 0, MAX_ROWS), embeddings_sha256=_sha256(d, "embeddings_sha256"),
                   labels_sha256=_sha256(d, "labels_sha256", optional=True))


def shard_files(index: int) -> tuple[str, str]:
    """The embeddings and labels file names of shard ``index``."""
    return f"embeddings-{index:05d}.npy", f"labels-{index:05d}.npy"


@dataclass(frozen=True)
class Manifest:
    """What a set holds and how it was made. ``count``, ``dim``, ``shard_rows``, ``shards`` and
    ``labelled`` are filled in by the store when the set is written; ``provenance`` is the export's
    (data, backbone).

    ``labelled`` False: the data has no labels, and the set no labels files (every shard's
    ``labels_sha256`` is null), so no reader can take anything for a label. Manifests written before
    unlabelled sets existed have no ``labelled`` field: they are labelled. A toolkit that predates the
    field refuses an unlabelled set (its shards lack the labels digest it requires).
    """

    model: ModelRecord
    dataset: DataRecord
    preprocessing: dict
    skipped: tuple[str, ...] = ()
    provenance: dict = field(default_factory=dict)
    count: int = 0
    dim: int = 0
    shard_rows: int = DEFAULT_SHARD_ROWS
    shards: tuple[Shard, ...] = ()
    provider: Optional[str] = None
    batch_size: Optional[int] = None
    versions: dict = field(default_factory=dict)
    created: Optional[str] = None
    seconds: Optional[float] = None
    transform: Optional[TransformRecord] = None
    labelled: bool = True
    format_version: str = STORE_FORMAT

    def to_json(self) -> str:
        """The manifest as JSON, sealed with ``manifest_sha256`` (see :func:`content_digest`)."""
        d = asdict(self)
        d["skipped"], d["shards"] = list(self.skipped), [asdict(s) for s in self.shards]
        d[DIGEST_KEY] = content_digest(d)
        return json.dumps(d, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        """Parse and validate; ``source`` (the file) is named in any error."""
        try:
            d = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise InputError(f"{source}: malformed manifest (nested too deeply)") from None
        except ValueError as e:
            raise InputError(f"{source}: not readable JSON ({e})") from None
        try:
            version = _text(d, "format_version", limit=16)
            if version != STORE_FORMAT:
                raise InputError(f"{source}: store format {version}, this toolkit reads {STORE_FORMAT}" + (
                    " (format 1 recorded neither where its data came from nor digests: run embed with its model "
                    "and data once to migrate the set)" if version == "1" else ""))
            manifest = _manifest(d).checked()
        except _Malformed as e:
            raise InputError(f"{source}: malformed manifest ({e})") from None
        if d.get(DIGEST_KEY) != content_digest(d):
            raise InputError(f"{source}: its content differs from its own digest ({DIGEST_KEY}): the manifest was "
                             "edited or damaged after it was written; embed recomputes the set")
        return manifest

    def checked(self) -> "Manifest":
        """This manifest if its counts agree with each other; _Malformed otherwise."""
        if sum(s.rows for s in self.shards) != self.count:
            raise _Malformed(f"count {self.count} is not the sum of its shards' rows")
        if any(s.rows > self.shard_rows for s in self.shards):
            raise _Malformed(f"a shard holds more than shard_rows {self.shard_rows} rows")
        if self.count + len(self.skipped) != self.dataset.size:
            raise _Malformed(f"count {self.count} + {len(self.skipped)} skipped is not the data set size "
                             f"{self.dataset.size}")
        without = [i for i, s in enumerate(self.shards) if (s.labels_sha256 is None) == self.labelled]
        if without:
            raise _Malformed(f"shard {without[0]} {'has no' if self.labelled else 'has a'} labels digest, but the set is "
                             f"{'' if self.labelled else 'not '}labelled")
        if self.model.embedding_dim is not None and self.model.embedding_dim != self.dim:
            raise _Malformed(f"dim {self.dim} differs from the model's embedding_dim {self.model.embedding_dim}")
        adapter = self.model.adapter
        if adapter is not None and adapter.dim_out != self.dim:
            raise _Malformed(f"dim {self.dim} differs from the adapter's output dimension {adapter.dim_out}")
        if self.transform is not None and (adapter is None or adapter.direction != "gallery"
                                           or adapter.digest != self.model.sha256
                                           or adapter.source_sha256 != self.transform.source_model.sha256):
            raise _Malformed("a transformed set's model must be its gallery adapter (sha256 = the adapter's digest, "
                             "source = the transformed set's model)")
        if self.transform is None and adapter is not None and adapter.direction != "query":
            raise _Malformed("a set embedded by a model file can only carry a query adapter")
        return self

    @property
    def transformed(self) -> bool:
        """Whether the vectors were computed by an adapter from a stored set, not by a model pass."""
        return self.transform is not None

    def with_storage(self, *, dim: int, shard_rows: int, shards: tuple[Shard, ...],
                     skipped: tuple[str, ...]) -> "Manifest":
        """This manifest describing the shards written (labelled when they have labels files)."""
        return replace(self, count=sum(s.rows for s in shards), dim=dim, shard_rows=shard_rows, shards=shards,
                       skipped=skipped, labelled=all(s.labels_sha256 is not None for s in shards))


def content_digest(d: dict) -> str:
    """sha256 of a manifest's JSON object without its ``manifest_sha256`` field, in a canonical form
    (sorted keys, no spaces): any edit of any field, made without writing the set again, shows."""
    body = {k: v for k, v in d.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def _refuse_constant(name: str) -> None:
    raise _Malformed(f"{name} is not a number")


def _manifest(d: dict) -> Manifest:
    skipped = _get(d, "skipped", list)
    shards = _get(d, "shards", list)
    if len(shards) > MAX_SHARDS or len(skipped) > MAX_ROWS:
        raise _Malformed("too many shards or skipped items")
    if not all(isinstance(s, str) and len(s) <= MAX_TEXT for s in skipped):
        raise _Malformed("'skipped' must list item names (strings)")
    seconds = _get(d, "seconds", (int, float), optional=True)
    transform = _get(d, "transform", dict, optional=True)
    labelled = _get(d, "labelled", bool, optional=True)
    if seconds is not None and not 0 <= seconds < 10**9:
        raise _Malformed(f"'seconds' is {seconds}")
    return Manifest(model=ModelRecord.from_dict(_get(d, "model", dict)),
                    dataset=DataRecord.from_dict(_get(d, "dataset", dict)),
                    preprocessing=_scalars(d, "preprocessing", optional=False), skipped=tuple(skipped),
                    provenance=_scalars(d, "provenance"), count=_int(d, "count", 1, MAX_ROWS),
                    dim=_int(d, "dim", 1, MAX_DIM), shard_rows=_int(d, "shard_rows", 1, 2**31),
                    shards=tuple(Shard.from_dict(s) for s in shards), provider=_text(d, "provider", optional=True),
                    batch_size=_int(d, "batch_size", 1, 2**31, optional=True), versions=_scalars(d, "versions"),
                    created=_text(d, "created", optional=True, limit=64), seconds=seconds,
                    transform=None if transform is None else TransformRecord.from_dict(transform),
                    labelled=labelled is not False)

