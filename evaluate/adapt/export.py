"""Shipping an adapter as ONNX, written without the onnx package (see :mod:`infer.runtime.protobuf`).

* :func:`export_adapter`: the adapter alone, ``embedding`` float32 [batch, D_in] -> L2 normalisation
  -> MatMul (+ Add bias) -> L2 normalisation -> ``adapted`` float32 [batch, D_out], opset 13.
* :func:`export_adapted_model`: a single-task export with a query adapter appended inside its graph:
  the export's ``embedding`` (renamed ``dpcompat_adapter/unadapted_embedding`` inside) -> L2
  normalisation -> MatMul (+ bias) -> L2 normalisation -> ``embedding`` [batch, D_out]. (An export's
  ``embedding`` is not unit-length; the stored sets an adapter is fitted on are, and a bias is not
  scale-free.) ``image``, ``prompt_index``, the
  dynamic batch axis, the opset and the metadata stay; the metadata gains ``adapter`` (source and
  target sha256 and ids, kind, direction, fit data location, fingerprint and rows; see
  :class:`infer.store.manifest.AdapterRecord`) and its ``embedding_dim`` becomes D_out, so
  ``embed`` and ``evaluate`` read the file as a model in the target's space.

The normalisation is spelled Mul, MatMul by a column of ones, Sqrt, Div: ops whose form has not
changed since opset 7 and that every execution provider runs. Every file is checked before it is
renamed into place: onnxruntime runs it on random inputs and on the ``real`` ones given, and its
output must equal numpy's float64 adapter within :data:`TOLERANCE` (max abs).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...common.atomic import atomic_file
from ...common.contract import BUNDLE_TASKS_KEY, EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from ...common.digest import file_sha256
from ...common.errors import InputError
from ...infer.data.base import Dataset
from ...infer.data.preprocess import preprocess_batch
from ...infer.runtime import protobuf as pb
from ...infer.runtime.bundle import read_props
from ...infer.runtime.metadata import ADAPTER_KEY, ModelInfo
from ...infer.store.manifest import ModelRecord
from ...infer.runtime.session import create_session
from .adapter import Adapter

ADAPTER_INPUT, ADAPTER_OUTPUT = EMBEDDING_OUTPUT, "adapted"
PREFIX = "dpcompat_adapter/"  # names of everything the adapter adds to a graph
UNADAPTED = PREFIX + "unadapted_embedding"
TOLERANCE = 1e-5
OPSET, IR_VERSION = 13, 7  # of the adapter-only graph (onnxruntime >= 1.6)
RANDOM_ROWS = 16
REAL_IMAGES = 8


@dataclass(frozen=True)
class Exported:
    """A written file and its check: max abs difference from numpy's float64 adapter on random inputs
    and on the real ones (None when none were given)."""

    path: Path
    random_error: float
    real_error: Optional[float]


def _normalised(source: str, output: str, dim: int, tag: str) -> tuple[list[bytes], list[bytes]]:
    """Nodes and initializer of ``output`` = ``source`` [batch, dim] with L2-normalised rows."""
    p = PREFIX + tag
    nodes = [pb.node("Mul", [source, source], [p + "squared"], p + "square"),
             pb.node("MatMul", [p + "squared", p + "ones"], [p + "norm2"], p + "sum"),
             pb.node("Sqrt", [p + "norm2"], [p + "norm"], p + "sqrt"),
             pb.node("Div", [source, p + "norm"], [output], p + "normalise")]
    return nodes, [pb.tensor(p + "ones", np.ones((dim, 1), np.float32))]


def adapter_nodes(adapter: Adapter, source: str, output: str) -> tuple[list[bytes], list[bytes]]:
    """(NodeProtos, initializer TensorProtos) mapping the tensor ``source`` [batch, D_in] to ``output``:
    rows L2-normalised (the stored sets the adapter was fitted on are), mapped, L2-normalised."""
    p = PREFIX
    nodes, tensors = _normalised(source, p + "input", adapter.dim_in, "input_")
    nodes.append(pb.node("MatMul", [p + "input", p + "weight"], [p + "linear"], p + "matmul"))
    tensors.append(pb.tensor(p + "weight", adapter.weight.astype(np.float32)))
    linear = p + "linear"
    if adapter.bias is not None:
        nodes.append(pb.node("Add", [linear, p + "bias"], [p + "affine"], p + "add"))
        tensors.append(pb.tensor(p + "bias", adapter.bias.astype(np.float32)))
        linear = p + "affine"
    out_nodes, out_tensors = _normalised(linear, output, adapter.dim_out, "output_")
    return nodes + out_nodes, tensors + out_tensors


def adapter_graph(adapter: Adapter) -> bytes:
    """The adapter alone as an ONNX model (see the module doc); metadata ``adapter`` is its record."""
    nodes, tensors = adapter_nodes(adapter, ADAPTER_INPUT, ADAPTER_OUTPUT)
    batch = pb.dimension("batch")
    graph = (b"".join(pb.bytes_field(pb.GRAPH_NODE, n) for n in nodes) + pb.bytes_field(pb.GRAPH_NAME, "adapter")
             + b"".join(pb.bytes_field(pb.GRAPH_INITIALIZER, t) for t in tensors)
             + pb.bytes_field(pb.GRAPH_INPUT, pb.float_value_info(ADAPTER_INPUT, [batch, pb.dimension(adapter.dim_in)]))
             + pb.bytes_field(pb.GRAPH_OUTPUT,
                              pb.float_value_info(ADAPTER_OUTPUT, [batch, pb.dimension(adapter.dim_out)])))
    return pb.model(graph, opset=OPSET, ir_version=IR_VERSION, metadata={ADAPTER_KEY: _record_json(adapter)})


def _record_json(adapter: Adapter) -> str:
    return json.dumps(asdict(adapter.record), sort_keys=True)


def _max_error(session, feeds: dict, adapter: Adapter, reference: np.ndarray, output: str) -> float:
    got = session.run([output], feeds)[0]
    expected = adapter.apply64(reference)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - expected))) if len(got) else 0.0


def _checked(error: float, what: str, where: Path) -> float:
    if not error <= TOLERANCE:
        raise InputError(f"{where}: {what} differs from numpy's adapter by {error:.3g} (max abs, allowed "
                         f"{TOLERANCE:g}); nothing written")
    return error


def export_adapter(adapter: Adapter, out: str | Path, *, real: Optional[np.ndarray] = None) -> Exported:
    """Write the adapter-only ONNX file at ``out`` after checking it on random unit rows and on ``real``
    (float32 [N, D_in] embeddings of the source model, e.g. fit rows)."""
    out = Path(out)
    rng = np.random.default_rng(0)
    random = rng.standard_normal((RANDOM_ROWS, adapter.dim_in)).astype(np.float32)
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    with atomic_file(out) as tmp:
        tmp.write_bytes(adapter_graph(adapter))
        session, _ = create_session(tmp, "cpu")
        errors = [_checked(_max_error(session, {ADAPTER_INPUT: x}, adapter, x, ADAPTER_OUTPUT), what, out)
                  for x, what in ((random, "on random rows, the graph"), (real, "on the real rows, the graph"))
                  if x is not None]
    return Exported(out, errors[0], errors[1] if len(errors) > 1 else None)


def check_model_file(model: Path, source: ModelRecord, dim_in: int) -> tuple[dict[str, str], ModelInfo]:
    """The metadata and ModelInfo of ``model``, after the checks that an adapter fitted on embeddings of
    ``source`` (dimension ``dim_in``) can go inside it: a single-task file without an adapter, the very
    file (sha256) whose ``embedding`` output the source set holds."""
    props = read_props(model)
    if BUNDLE_TASKS_KEY in props:
        raise InputError(f"{model}: a bundle of several tasks; append an adapter to one task's file "
                         "(python cli.py export --task N)")
    if ADAPTER_KEY in props:
        raise InputError(f"{model}: already holds an adapter; append one to the model's own export")
    info = ModelInfo.from_props(props, str(model))
    sha256 = file_sha256(model)
    if sha256 != source.sha256 or source.output != EMBEDDING_OUTPUT:
        raise InputError(f"{model}: sha256 {sha256[:12]}, but the adapter was fitted on the '{source.output}' "
                         f"embeddings of {source.id} (sha256 {source.sha256[:12]}); use that file")
    if info.embedding_dim != dim_in:
        raise InputError(f"{model}: embedding dimension {info.embedding_dim}, the adapter maps {dim_in}")
    return props, info


def _source_info(model: Path, adapter: Adapter) -> tuple[dict[str, str], ModelInfo]:
    """The model file's metadata and ModelInfo, after the checks that the adapter belongs on it."""
    if adapter.direction != "query":
        raise InputError(f"{model}: a {adapter.direction} adapter transforms a stored gallery; only a query "
                         "adapter goes into a query model")
    return check_model_file(model, adapter.source, adapter.dim_in)


def _renamed(field: pb.Field, numbers: tuple[int, ...]) -> bytes | memoryview:
    """A NodeProto or ValueInfoProto field with the name ``embedding`` in its string fields ``numbers``
    (a node's inputs and outputs, a value info's name) replaced by :data:`UNADAPTED`."""
    parts, changed = [], False
    for f in pb.fields_of(field.value):
        if f.number in numbers and f.wire == pb.LENGTH:
            name = bytes(f.value).decode()
            if name.startswith(PREFIX):
                raise InputError(f"the graph already names a tensor {name!r}; it holds an adapter")
            if name == EMBEDDING_OUTPUT:
                parts.append(pb.bytes_field(f.number, UNADAPTED))
                changed = True
                continue
        parts.append(f.raw)
    return pb.bytes_field(field.number, b"".join(bytes(p) for p in parts)) if changed else field.raw


def _merged_graph(graph: memoryview, adapter: Adapter) -> list[bytes | memoryview]:
    """The graph's fields with ``embedding`` renamed inside and the adapter appended after its nodes."""
    parts: list[bytes | memoryview] = []
    found = False
    for f in pb.fields_of(graph):
        if f.number == pb.GRAPH_NODE:
            parts.append(_renamed(f, (pb.NODE_INPUT, pb.NODE_OUTPUT)))
        elif f.number == pb.GRAPH_VALUE_INFO:
            parts.append(_renamed(f, (pb.VALUE_NAME,)))
        elif f.number == pb.GRAPH_OUTPUT and pb.text_of(f.value, pb.VALUE_NAME) == EMBEDDING_OUTPUT:
            dims = pb.dims_of(f.value)
            batch = bytes(dims[0]) if dims else pb.dimension("batch")
            output = pb.float_value_info(EMBEDDING_OUTPUT, [batch, pb.dimension(adapter.dim_out)])
            parts.append(pb.bytes_field(pb.GRAPH_OUTPUT, output))
            found = True
        else:
            parts.append(f.raw)
    if not found:
        raise InputError(f"the graph has no output '{EMBEDDING_OUTPUT}'")
    nodes, tensors = adapter_nodes(adapter, UNADAPTED, EMBEDDING_OUTPUT)
    return parts + [pb.bytes_field(pb.GRAPH_NODE, n) for n in nodes] + \
        [pb.bytes_field(pb.GRAPH_INITIALIZER, t) for t in tensors]


def merged_model(data: bytes, adapter: Adapter, metadata: dict[str, str]) -> list[bytes | memoryview]:
    """The chunks of a ModelProto: ``data`` (a model's bytes) with the adapter appended to its graph
    and ``metadata`` as its whole ``metadata_props``."""
    head, graph = [], None
    for f in pb.fields_of(data):
        if f.number == pb.MODEL_GRAPH:
            graph = f.value
        elif f.number != pb.MODEL_PROPS:
            head.append(f.raw)
    if graph is None:
        raise InputError("not an ONNX model (no graph)")
    body = _merged_graph(graph, adapter)
    return head + [pb.length_header(pb.MODEL_GRAPH, sum(len(p) for p in body))] + body + [pb.props(metadata)]


def _random_images(info: ModelInfo) -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, info.input_size, info.input_size), dtype=np.float32)


def real_images(data: Dataset, info: ModelInfo, count: int = REAL_IMAGES) -> np.ndarray:
    """float32 [count, 3, S, S]: ``count`` items spread over ``data``, preprocessed as ``info`` says."""
    indices = np.unique(np.linspace(0, len(data) - 1, min(count, len(data))).astype(int))
    return preprocess_batch([data.image(int(i)) for i in indices], info.preprocessing)


def export_adapted_model(model: str | Path, adapter: Adapter, out: str | Path, *,
                         data: Optional[Dataset] = None) -> Exported:
    """Write ``model`` (a single-task export, the file the adapter's source set was embedded with) with
    the query ``adapter`` appended, at ``out`` (see the module doc). Checked on the CPU on random
    images and on :func:`real_images` of ``data`` (e.g. the fit data): ``embedding`` must equal
    numpy's adapter applied to the original file's ``embedding`` within :data:`TOLERANCE` and
    ``prompt_index`` must be the original's. InputError for a gallery adapter, a bundle, a file
    already adapted, or a model file other than the adapter's source."""
    model, out = Path(model), Path(out)
    props, info = _source_info(model, adapter)
    images = None if data is None else real_images(data, info)
    metadata = {**props, ADAPTER_KEY: _record_json(adapter), "embedding_dim": str(adapter.dim_out)}
    ModelInfo.from_props(metadata, str(out))  # what embed will read back
    try:
        chunks = merged_model(model.read_bytes(), adapter, metadata)
    except (EOFError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{model}: not an ONNX file (truncated or corrupt protobuf: {e})") from None
    except InputError as e:
        raise InputError(f"{model}: {e}") from None
    original, _ = create_session(model, "cpu")
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        adapted, _ = create_session(tmp, "cpu")
        errors = [_checked(_model_error(original, adapted, x, adapter), what, out)
                  for x, what in ((_random_images(info), "on random images, the adapted model"),
                                  (images, "on the real images, the adapted model")) if x is not None]
    return Exported(out, errors[0], errors[1] if len(errors) > 1 else None)


def _model_error(original, adapted, images: np.ndarray, adapter: Adapter,
                 outputs: Sequence[str] = (EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT)) -> float:
    """Max abs difference between the adapted model's ``embedding`` and numpy's adapter applied to the
    original's; inf when the prompt choices differ."""
    feeds = {INPUT_NAME: np.ascontiguousarray(images, np.float32)}
    (embedding, index), (got, got_index) = original.run(list(outputs), feeds), adapted.run(list(outputs), feeds)
    if not np.array_equal(index, got_index):
        return float("inf")
    expected = adapter.apply64(embedding)
    return float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape else float("inf")
