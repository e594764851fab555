"""What an exported ONNX file says about itself (``metadata_props``), parsed and validated.

The graph's inputs and outputs are declared in :mod:`dpcompat.common.contract`. Every value in
``metadata_props`` is a string; structured values are JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..common.contract import FORMAT_VERSION, GATHERS, POOLS, PRECISIONS, QUERIES, SELECTIONS
from ..common.errors import InputError


@dataclass(frozen=True)
class Preprocessing:
    """The reference evaluation transform: resize the shorter side, center crop, scale, no mean/std."""

    resize: int = 256
    interpolation: str = "bicubic"
    crop: int = 224
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def for_input_size(cls, input_size: int) -> "Preprocessing":
        # The reference keeps the 256/224 ratio of ImageNet evaluation for any input size.
        return cls(resize=int(256 / 224 * input_size), crop=input_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        d = json.loads(text)
        return cls(resize=int(d["resize"]), interpolation=str(d["interpolation"]), crop=int(d["crop"]),
                   scale=float(d["scale"]), mean=tuple(d["mean"]), std=tuple(d["std"]))


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

    def to_props(self) -> dict[str, str]:
        structured = ("versions", "architecture", "provenance")
        props = {k: str(v) for k, v in asdict(self).items() if k not in ("preprocessing", *structured)}
        props["preprocessing"] = self.preprocessing.to_json()
        props.update({k: json.dumps(getattr(self, k), sort_keys=True) for k in structured})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ModelInfo":
        """Parse ``metadata_props``; ``source`` (the file) is named in any error."""
        missing = sorted(set(cls.__dataclass_fields__) - set(props) - {"architecture", "provenance", "gather", "query"})
        if missing:
            raise InputError(f"{source}: not a dpcompat export (metadata lacks {', '.join(missing)})")
        if props["format_version"] != FORMAT_VERSION:
            raise InputError(f"{source}: export format {props['format_version']}, this toolkit reads {FORMAT_VERSION}")
        try:
            info = cls(format_version=props["format_version"], task=int(props["task"]),
                       checkpoint=props["checkpoint"], checkpoint_sha256=props["checkpoint_sha256"],
                       model=props["model"], embedding_dim=int(props["embedding_dim"]),
                       input_size=int(props["input_size"]), top_k=int(props["top_k"]), pool=props["pool"],
                       selection=props["selection"], precision=props["precision"],
                       preprocessing=Preprocessing.from_json(props["preprocessing"]),
                       versions=json.loads(props["versions"]),
                       architecture=json.loads(props.get("architecture", "{}")),
                       provenance=json.loads(props.get("provenance", "{}")),
                       gather=props.get("gather", "per-sample"), query=props.get("query", "cls"))
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{source}: malformed export metadata ({e})") from None
        info.check(source)
        return info

    def check(self, source: str) -> None:
        """Refuse choices outside the contract; ``source`` is named in the error."""
        for name, value, allowed in (("selection", self.selection, SELECTIONS), ("pool", self.pool, POOLS),
                                     ("precision", self.precision, PRECISIONS), ("gather", self.gather, GATHERS),
                                     ("query", self.query, QUERIES)):
            if value not in allowed:
                raise InputError(f"{source}: metadata names an unknown {name} {value!r} "
                                 f"(expected one of {', '.join(allowed)})")
