"""What an ONNX file may ask of onnxruntime, checked from its protobuf before a session opens, and
its inputs and outputs checked against the contract once it is open.

An export is a fixed graph (:mod:`dpcompat.common.contract`): no node repeats or chooses work at run
time. Control flow (``Loop``, ``If``, ``Scan``, ``SequenceMap``) and any node that carries a subgraph
are refused, in the main graph and in the model's local functions, so no file can make a run loop
2^62 times. The walk reads tags, lengths and operator names only: weights are skipped, and every
declared length is checked against the bytes left before it is used (:func:`.protobuf.field_spans`).
Memory at run time is bounded in :mod:`.limits`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Iterator

import onnxruntime as ort

from ...common.errors import InputError, shown
from ...common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from .protobuf import GRAPH_NODE, MODEL_GRAPH, NODE_OP_TYPE, field_spans

CONTROL_FLOW = ("Loop", "If", "Scan", "SequenceMap")
MODEL_FUNCTIONS = 25  # ModelProto.functions (FunctionProto)
FUNCTION_NODE = 7  # FunctionProto.node
NODE_ATTRIBUTE, NODE_DOMAIN = 5, 7
ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS = 6, 11  # AttributeProto.g, .graphs: a subgraph
MAX_NAME = 256  # bytes of an operator type or domain name


def _read(f: BinaryIO, at: int, length: int) -> str:
    if length > MAX_NAME:
        raise ValueError(f"an operator name of {length:,} bytes")
    f.seek(at)
    return f.read(length).decode()


def _nodes(f: BinaryIO, end: int) -> Iterator[tuple[str, bool]]:
    """(op type with its domain, whether it carries a subgraph) of every node of the model in ``f``
    (the main graph's, then each local function's). Each :func:`field_spans` walk seeks past a field
    itself when resumed, so walks nest on one file."""
    for number, at, length in list(field_spans(f, end, (MODEL_GRAPH, MODEL_FUNCTIONS))):
        f.seek(at)
        for _, node_at, node_length in field_spans(f, at + length, (GRAPH_NODE if number == MODEL_GRAPH else
                                                                    FUNCTION_NODE,)):
            f.seek(node_at)
            op, domain, subgraph = "", "", False
            for field, field_at, field_length in field_spans(f, node_at + node_length,
                                                             (NODE_OP_TYPE, NODE_DOMAIN, NODE_ATTRIBUTE)):
                if field == NODE_ATTRIBUTE:
                    f.seek(field_at)
                    subgraph |= next(field_spans(f, field_at + field_length, (ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS)),
                                     None) is not None
                elif field == NODE_OP_TYPE:
                    op = _read(f, field_at, field_length)
                else:
                    domain = _read(f, field_at, field_length)
            yield (f"{domain}.{op}" if domain not in ("", "ai.onnx") else op), subgraph


def check_graph(model: str | Path | bytes) -> None:
    """InputError naming the file (or 'model' for bytes) when its graph holds control flow or a
    subgraph, or its protobuf is not readable as a model."""
    where = "model" if isinstance(model, bytes) else shown(model)
    try:
        with (io.BytesIO(model) if isinstance(model, bytes) else open(model, "rb")) as f:
            end = len(model) if isinstance(model, bytes) else os.fstat(f.fileno()).st_size
            for op, subgraph in _nodes(f, end):
                if op.rpartition(".")[2] in CONTROL_FLOW or subgraph:
                    raise InputError(f"{where}: its graph holds a {op[:80]!r} node (control flow: a subgraph run "
                                     "a number of times or chosen at run time), which no export uses; refused")
    except FileNotFoundError:
        raise InputError(f"{where}: no such ONNX file") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror or e})") from None
    except (EOFError, ValueError, UnicodeDecodeError):
        raise InputError(f"{where}: not an ONNX file (truncated or corrupt protobuf)") from None


def check_inputs(session: ort.InferenceSession, path: str | Path) -> None:
    """InputError unless the graph's only input is ``image``, float32 of rank 4 (a graph that needs
    another input could never be fed by embed, verify or bench)."""
    inputs = {i.name: i for i in session.get_inputs()}
    extra = sorted(set(inputs) - {INPUT_NAME})
    if extra:
        raise InputError(f"{shown(path)}: the graph requires input(s) {', '.join(map(repr, extra))[:200]} besides "
                         f"'{INPUT_NAME}'; the contract has one input, '{INPUT_NAME}' float32 [N, 3, S, S]")
    image = inputs.get(INPUT_NAME)
    if image is None or image.type != "tensor(float)" or len(image.shape) != 4:
        got = "missing" if image is None else f"{image.type} {image.shape}"
        raise InputError(f"{shown(path)}: input '{INPUT_NAME}' is {got}, expected float32 [N, 3, S, S]")


def check_outputs(session: ort.InferenceSession, path: str | Path, top_k: int) -> None:
    """InputError unless ``embedding`` (float32, rank 2) and ``prompt_index`` (int64, rank 1, or 2 with
    top_k > 1) are among the graph's outputs, as the contract declares them."""
    outputs = {o.name: o for o in session.get_outputs()}
    for name, kind, rank in ((EMBEDDING_OUTPUT, "tensor(float)", 2), (PROMPT_INDEX_OUTPUT, "tensor(int64)",
                                                                      1 + (top_k > 1))):
        got = outputs.get(name)
        if got is None or got.type != kind or len(got.shape) != rank:
            found = "missing" if got is None else f"{got.type} of rank {len(got.shape)}"
            raise InputError(f"{shown(path)}: output '{name}' is {found}, the contract (top_k {top_k}) says "
                             f"{kind[7:-1]} of rank {rank} (the graph's outputs: "
                             f"{', '.join(map(repr, outputs))[:200]})")
