"""What an exported ONNX file says about itself (``metadata_props``), parsed and validated.

The graph's inputs and outputs are declared in :mod:`dpcompat.common.contract`. Every value in
``metadata_props`` is a string; structured values are JSON.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ...common.contract import (FILE_PRECISIONS, FORMAT_VERSION, GATHERS, INTERPOLATIONS, MAX_EMBEDDING_DIM,
                               MAX_INPUT_SIZE, MAX_RESIZE, POOLS, QUERIES, SELECTIONS)
from ...common.errors import InputError
from ..store.manifest import AdapterRecord


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")
_MAX_TASK = 100_000
_MAX_TOP_K = 1_024
_ARCH_INTS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "pool_size", "prompt_length", "top_k",
              "g_prompt_length")
_ARCH_BOUND = 65_536


def _is_number(value: object) -> bool:
    """A finite int or float, not a bool (JSON allows NaN, Infinity and integers of any size)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Preprocessing:
    """The reference evaluation transform: resize the shorter side, center crop, scale, no mean/std.

    Bounds (checked on construction, ``ValueError``): ``crop`` 1..MAX_INPUT_SIZE, ``resize`` crop..MAX_RESIZE,
    ``interpolation`` one of the contract's INTERPOLATIONS, ``scale`` finite in (0, 1000], ``mean`` three
    finite numbers within +-1000, ``std`` three finite numbers in [1e-6, 1e6].
    """

    resize: int = 256
    interpolation: str = "bicubic"
    crop: int = 224
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("preprocessing " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is out of bounds, one phrase per field."""
        out = []
        if not _is_int(self.crop) or not 1 <= self.crop <= MAX_INPUT_SIZE:
            out.append(f"crop {self.crop!r} is not an integer from 1 to {MAX_INPUT_SIZE}")
        elif not _is_int(self.resize) or not self.crop <= self.resize <= MAX_RESIZE:
            out.append(f"resize {self.resize!r} is not an integer from the crop {self.crop} to {MAX_RESIZE}")
        if self.interpolation not in INTERPOLATIONS:
            out.append(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if not _is_number(self.scale) or not 0 < self.scale <= 1000:
            out.append(f"scale {self.scale!r} is not a finite number in (0, 1000]")
        for name, values, low, high in (("mean", self.mean, -1000, 1000), ("std", self.std, 1e-6, 1e6)):
            if not isinstance(values, tuple) or len(values) != 3 or \
                    not all(_is_number(v) and low <= v <= high for v in values):
                out.append(f"{name} {values!r} is not three finite numbers in [{low:g}, {high:g}]")
        return out

    @classmethod
    def for_input_size(cls, input_size: int) -> "Preprocessing":
        # The reference keeps the 256/224 ratio of ImageNet evaluation for any input size.
        return cls(resize=int(256 / 224 * input_size), crop=input_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        """Parse and bound; ``ValueError`` for anything malformed or out of bounds."""
        d = json.loads(text)
        if not isinstance(d, dict) or set(d) != set(cls.__dataclass_fields__):
            raise ValueError(f"preprocessing must be an object with exactly {', '.join(cls.__dataclass_fields__)}")
        mean, std = d["mean"], d["std"]
        return cls(resize=d["resize"], interpolation=d["interpolation"], crop=d["crop"], scale=d["scale"],
                   mean=tuple(mean) if isinstance(mean, list) else mean,
                   std=tuple(std) if isinstance(std, list) else std)


@dataclass(frozen=True)
class ModelInfo:
    """What an exported file says about itself (``metadata_props``)."""

    format_version: str
    task: int
    checkpoint: str
    checkpoint_sha256: str
    model: str
    embedding_dim: int
    input_size: int
    top_k: int
    pool: str
    selection: str
    precision: str
    preprocessing: Preprocessing
    versions: dict
    architecture: dict = field(default_factory=dict)  # the DualPromptConfig fields, for FLOPs and inspection
    # Where the weights came from, carried to every store manifest and report made from this file:
    # {"data": "cifar100" | "generated" | ..., "backbone": "pretrained ..." | "random"}; {} when unknown.
    provenance: dict = field(default_factory=dict)
    # The reference modes (common.contract GATHERS, QUERIES); files written before they existed read as the defaults.
    gather: str = "per-sample"
    query: str = "cls"
    # A query adapter appended to the graph (evaluate/adapt): ``embedding`` is then in the adapter's target
    # model's space, of dimension ``adapter.dim_out``; the other fields still describe the source model.
    adapter: Optional[AdapterRecord] = None

    def to_props(self) -> dict[str, str]:
        structured = ("versions", "architecture", "provenance")
        props = {k: str(v) for k, v in asdict(self).items() if k not in ("preprocessing", "adapter", *structured)}
        props["preprocessing"] = self.preprocessing.to_json()
        props.update({k: json.dumps(getattr(self, k), sort_keys=True) for k in structured})
        if self.adapter is not None:
            props[ADAPTER_KEY] = json.dumps(asdict(self.adapter), sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ModelInfo":
        """Parse and bound ``metadata_props``; ``source`` (the file) is named in any error."""
        missing = sorted(set(cls.__dataclass_fields__) - set(props) - {"architecture", "provenance", "gather", "query",
                                                                        ADAPTER_KEY})
        if missing:
            raise InputError(f"{source}: not a dpcompat export (metadata lacks {', '.join(missing)})")
        if props["format_version"] != FORMAT_VERSION:
            raise InputError(f"{source}: export format {props['format_version'][:20]!r}, "
                             f"this toolkit reads {FORMAT_VERSION}")
        try:
            info = cls(format_version=props["format_version"], task=_int_prop(props, "task", _MAX_TASK),
                       checkpoint=props["checkpoint"], checkpoint_sha256=props["checkpoint_sha256"],
                       model=props["model"], embedding_dim=_int_prop(props, "embedding_dim", MAX_EMBEDDING_DIM),
                       input_size=_int_prop(props, "input_size", MAX_INPUT_SIZE),
                       top_k=_int_prop(props, "top_k", _MAX_TOP_K), pool=props["pool"],
                       selection=props["selection"], precision=props["precision"],
                       preprocessing=Preprocessing.from_json(props["preprocessing"]),
                       versions=_json_object(props, "versions"), architecture=_json_object(props, "architecture"),
                       provenance=_json_object(props, "provenance"),
                       gather=props.get("gather", "per-sample"), query=props.get("query", "cls"),
                       adapter=_adapter(props))
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise InputError(f"{source}: malformed export metadata ({str(e)[:300]})") from None
        info.check(source)
        return info

    def check(self, source: str) -> None:
        """Refuse choices outside the contract and inconsistent fields; ``source`` is named in the error."""
        for name, value, allowed in (("selection", self.selection, SELECTIONS), ("pool", self.pool, POOLS),
                                     ("precision", self.precision, FILE_PRECISIONS), ("gather", self.gather, GATHERS),
                                     ("query", self.query, QUERIES)):
            if value not in allowed:
                raise InputError(f"{source}: metadata names an unknown {name} {value!r} "
                                 f"(expected one of {', '.join(allowed)})")
        problems = []
        if not _PLAIN_NAME.match(self.checkpoint) or self.checkpoint in (".", ".."):
            problems.append(f"checkpoint {self.checkpoint[:80]!r} is not a plain file name")
        if not _SHA256.match(self.checkpoint_sha256):
            problems.append("checkpoint_sha256 is not 64 lowercase hex digits")
        if not 0 < len(self.model) <= 200 or not self.model.isprintable():
            problems.append("model is not a printable name of 1 to 200 characters")
        if self.preprocessing.crop != self.input_size:
            problems.append(f"preprocessing crop {self.preprocessing.crop} differs from input_size {self.input_size}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.provenance.items()):
            problems.append("provenance is not an object of strings")
        if self.adapter is not None and self.adapter.dim_out != self.embedding_dim:
            problems.append(f"embedding_dim {self.embedding_dim} differs from the adapter's output dimension "
                            f"{self.adapter.dim_out}")
        problems += _architecture_problems(self.architecture, self)
        if problems:
            raise InputError(f"{source}: inconsistent export metadata ({'; '.join(problems)})")

    def check_graph(self, image_shape: Sequence, embedding_shape: Sequence, source: str) -> None:
        """The graph's declared shapes must be the contract's with this metadata's sizes: ``image``
        [batch, 3, S, S] with S = input_size, ``embedding`` [batch, D] with D = embedding_dim."""
        s, d = self.input_size, self.embedding_dim
        if list(image_shape)[1:] != [3, s, s] or len(image_shape) != 4:
            raise InputError(f"{source}: input 'image' is declared {list(image_shape)}, the metadata says "
                             f"[batch, 3, {s}, {s}]")
        if list(embedding_shape)[1:] != [d] or len(embedding_shape) != 2:
            raise InputError(f"{source}: output 'embedding' is declared {list(embedding_shape)}, the metadata "
                             f"says [batch, {d}]")


_PLAIN_NAME = re.compile(r"^[^/\\\x00]{1,255}$")
ADAPTER_KEY = "adapter"


def _adapter(props: dict[str, str]) -> Optional[AdapterRecord]:
    """The ``adapter`` metadata of a model file: a query adapter (a gallery adapter transforms stored sets)."""
    if ADAPTER_KEY not in props:
        return None
    adapter = AdapterRecord.from_dict(_json_object(props, ADAPTER_KEY))
    if adapter.direction != "query":
        raise ValueError(f"a model file carries a query adapter, not a {adapter.direction} adapter")
    return adapter


def _int_prop(props: dict[str, str], key: str, high: int) -> int:
    value = props[key]
    if not isinstance(value, str) or not _DIGITS.match(value) or not 1 <= int(value) <= high:
        raise ValueError(f"{key} {str(value)[:40]!r} is not a whole number from 1 to {high}")
    return int(value)


def _json_object(props: dict[str, str], key: str) -> dict:
    value = json.loads(props.get(key, "{}"))
    if not isinstance(value, dict):
        raise ValueError(f"{key} is a JSON {type(value).__name__}, expected an object")
    return value


def _architecture_problems(arch: dict, info: ModelInfo) -> list[str]:
    """Bounds of the ``architecture`` fields that benchmarks compute with ({} is allowed: unknown)."""
    if not arch:
        return []
    bad = [k for k in _ARCH_INTS if not _is_int(arch.get(k)) or not 1 <= arch[k] <= _ARCH_BOUND]
    if bad:
        return [f"architecture {', '.join(bad)} not whole numbers from 1 to {_ARCH_BOUND}"]
    out = []
    if not _is_number(arch.get("mlp_ratio")) or not 0 < arch["mlp_ratio"] <= 64:
        out.append("architecture mlp_ratio is not a number in (0, 64]")
    for key in ("g_prompt_layers", "e_prompt_layers"):
        layers = arch.get(key)
        if not isinstance(layers, list) or not all(_is_int(i) and 0 <= i < arch["depth"] for i in layers):
            out.append(f"architecture {key} is not a list of block indices below depth {arch['depth']}")
    # The backbone's width is the adapter's input where an adapter follows it.
    width = ("adapter dim_in", info.adapter.dim_in) if info.adapter else ("embedding_dim", info.embedding_dim)
    for key, (field_name, value) in (("img_size", ("input_size", info.input_size)), ("embed_dim", width),
                                     ("top_k", ("top_k", info.top_k))):
        if arch[key] != value:
            out.append(f"architecture {key} {arch[key]} differs from {field_name} {value}")
    return out
