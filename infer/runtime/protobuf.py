"""The protobuf wire format and the few ONNX messages dpcompat reads or writes, without the protobuf or
onnx packages (production hosts have onnxruntime alone).

Reading: :func:`length_fields` picks fields out of a file without loading the rest (a graph's
weights are skipped); :func:`fields_of` walks a message held in memory, yielding each field with its
raw bytes, so a rewriter copies what it does not change byte for byte.

Writing: messages are ``bytes`` built from fields; field numbers are those of onnx.proto3 (IR
version 7 and later). Only what dpcompat's own graphs (adapters, the search graph) need is here:
tensors with raw data, value infos of tensors, nodes with int and ints attributes, graphs, models
with opset imports and ``metadata_props``.
"""
from __future__ import annotations

from typing import BinaryIO, Iterator, NamedTuple, Optional, Sequence

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# ModelProto
MODEL_IR_VERSION, MODEL_PRODUCER, MODEL_GRAPH, MODEL_OPSET, MODEL_PROPS = 1, 2, 7, 8, 14
# GraphProto
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 2, 5, 11, 12, 13
# NodeProto
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
# AttributeProto and its AttributeType values
ATTR_NAME, ATTR_INT, ATTR_INTS, ATTR_TYPE, ATTR_TYPE_INT, ATTR_TYPE_INTS = 1, 3, 8, 20, 2, 7
# ValueInfoProto, TypeProto, TypeProto.Tensor, TensorShapeProto, its Dimension
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 2, 1, 1, 2, 1, 1, 2
# TensorProto
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW = 1, 2, 8, 9
FLOAT, INT64, BOOL, FLOAT16 = 1, 7, 9, 10  # TensorProto.DataType
_DTYPES = {FLOAT: "<f4", INT64: "<i8", FLOAT16: "<f2"}


class TooLarge(ValueError):
    """Fields asked for hold more bytes than the caller's limit."""


class Field(NamedTuple):
    """One field of a message: ``value`` is an int (varint) or the payload (other wire types);
    ``raw`` is the whole field as encoded, tag included."""

    number: int
    wire: int
    value: int | memoryview
    raw: memoryview


MAX_VARINT_BYTES = 10  # a 64-bit value takes at most 10 bytes; a longer varint is corrupt
_FIELD_OVERHEAD = 64  # what :func:`length_fields` counts per field beyond its bytes (Python's own per object)


def read_varint(f: BinaryIO) -> int:
    """The varint at ``f``'s position: EOFError if the file ends inside it, ValueError after
    MAX_VARINT_BYTES bytes without an end (so a file of 0xFF bytes costs linear time, not quadratic)."""
    value = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        byte = f.read(1)
        if not byte:
            raise EOFError
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError(f"a varint longer than {MAX_VARINT_BYTES} bytes")


def field_spans(f: BinaryIO, end: int, wanted: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """(number, offset, length) of each length-delimited field numbered in ``wanted`` of the protobuf
    message from ``f``'s position to ``end``, nothing read but tags and lengths. A declared length is
    checked against the bytes left before anything is done with it (EOFError when it runs past
    ``end``); ValueError for an unknown wire type."""
    while f.tell() < end:
        number, wire = divmod(read_varint(f), 8)
        if wire == VARINT:
            read_varint(f)
        elif wire in (FIXED64, FIXED32, LENGTH):
            length = 8 if wire == FIXED64 else 4 if wire == FIXED32 else read_varint(f)
            at = f.tell()
            if length > end - at:
                raise EOFError
            if wire == LENGTH and number in wanted:
                yield number, at, length
            f.seek(at + length)
        else:
            raise ValueError(f"wire type {wire}")
    if f.tell() != end:
        raise EOFError


def length_fields(f: BinaryIO, end: int, wanted: tuple[int, ...], *, limit: Optional[int] = None
                  ) -> dict[int, list[bytes]]:
    """The length-delimited fields numbered in ``wanted`` of a protobuf message ending at ``end``;
    every other field is skipped without reading it (a graph's weights are never loaded). ``limit``:
    the most bytes all wanted fields together may hold (TooLarge beyond it, checked before each read)."""
    found: dict[int, list[bytes]] = {}
    total = 0
    for number, _, length in field_spans(f, end, wanted):  # the reader seeks past each field itself
        total += length + _FIELD_OVERHEAD
        if limit is not None and total > limit:
            raise TooLarge(f"more than {limit:,} bytes in fields {', '.join(map(str, wanted))}")
        found.setdefault(number, []).append(f.read(length))
    return found


def _varint_at(buf: memoryview, at: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        if at >= len(buf):
            raise EOFError
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
    raise ValueError(f"a varint longer than {MAX_VARINT_BYTES} bytes")


def fields_of(message: bytes | memoryview) -> Iterator[Field]:
    """Every field of ``message`` in order (no copy: payloads are views of it). EOFError if truncated,
    ValueError for an unknown wire type."""
    buf, at = memoryview(message), 0
    while at < len(buf):
        start = at
        key, at = _varint_at(buf, at)
        number, wire = divmod(key, 8)
        if wire == VARINT:
            value, at = _varint_at(buf, at)
        elif wire in (FIXED64, FIXED32, LENGTH):
            size = 8 if wire == FIXED64 else 4 if wire == FIXED32 else None
            if size is None:
                size, at = _varint_at(buf, at)
            if at + size > len(buf):
                raise EOFError
            value, at = buf[at:at + size], at + size
        else:
            raise ValueError(f"wire type {wire}")
        yield Field(number, wire, value, buf[start:at])


def text_of(message: bytes | memoryview, number: int) -> str:
    """The last string field ``number`` of ``message`` ('' when absent, as protobuf reads it)."""
    found = [f.value for f in fields_of(message) if f.number == number and f.wire == LENGTH]
    return bytes(found[-1]).decode() if found else ""


def varint(value: int) -> bytes:
    """``value`` as a varint; a negative one as its 64-bit two's complement (how int64 is encoded)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def int_field(number: int, value: int) -> bytes:
    return varint(number << 3 | VARINT) + varint(value)


def bytes_field(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | LENGTH) + varint(len(payload)) + payload


def length_header(number: int, size: int) -> bytes:
    """The tag and length of a length-delimited field whose ``size`` payload bytes are written after it."""
    return varint(number << 3 | LENGTH) + varint(size)


def tensor(name: str, array: np.ndarray, elem_type: int = FLOAT) -> bytes:
    """An initializer (TensorProto with raw little-endian data) of ``elem_type``: FLOAT (float32,
    the default), FLOAT16 or INT64."""
    data = np.ascontiguousarray(array, dtype=_DTYPES[elem_type])
    return (b"".join(int_field(TENSOR_DIMS, d) for d in data.shape) + int_field(TENSOR_DATA_TYPE, elem_type)
            + bytes_field(TENSOR_NAME, name) + bytes_field(TENSOR_RAW, data.tobytes()))


def dimension(size: int | str) -> bytes:
    """A TensorShapeProto.Dimension: a fixed size, or a named dynamic one."""
    return int_field(DIM_VALUE, size) if isinstance(size, int) else bytes_field(DIM_PARAM, size)


def float_value_info(name: str, dims: Sequence[bytes], elem_type: int = FLOAT) -> bytes:
    """A ValueInfoProto of a tensor of ``elem_type`` (default FLOAT) with the encoded ``dims`` (see
    :func:`dimension`)."""
    shape = b"".join(bytes_field(SHAPE_DIM, d) for d in dims)
    tensor_type = int_field(TENSOR_ELEM_TYPE, elem_type) + bytes_field(TENSOR_SHAPE, shape)
    return bytes_field(VALUE_NAME, name) + bytes_field(VALUE_TYPE, bytes_field(TYPE_TENSOR, tensor_type))


def dims_of(value_info: bytes | memoryview) -> list[memoryview]:
    """The encoded dimensions of a tensor ValueInfoProto's shape ([] when it declares none)."""
    for t in fields_of(value_info):
        if t.number == VALUE_TYPE:
            for tensor_type in fields_of(t.value):
                if tensor_type.number == TYPE_TENSOR:
                    for shape in fields_of(tensor_type.value):
                        if shape.number == TENSOR_SHAPE:
                            return [d.value for d in fields_of(shape.value) if d.number == SHAPE_DIM]
    return []


def attribute(name: str, value: int | Sequence[int]) -> bytes:
    """An AttributeProto holding an int, or a list of ints."""
    if isinstance(value, int):
        return bytes_field(ATTR_NAME, name) + int_field(ATTR_INT, value) + int_field(ATTR_TYPE, ATTR_TYPE_INT)
    return (bytes_field(ATTR_NAME, name) + b"".join(int_field(ATTR_INTS, v) for v in value)
            + int_field(ATTR_TYPE, ATTR_TYPE_INTS))


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attributes: int | Sequence[int]) -> bytes:
    """A NodeProto of the default domain with int (or ints) ``attributes``."""
    return (b"".join(bytes_field(NODE_INPUT, i) for i in inputs) + b"".join(bytes_field(NODE_OUTPUT, o) for o in outputs)
            + bytes_field(NODE_NAME, name) + bytes_field(NODE_OP_TYPE, op_type)
            + b"".join(bytes_field(NODE_ATTRIBUTE, attribute(k, v)) for k, v in attributes.items()))


def props(entries: dict[str, str]) -> bytes:
    """ModelProto ``metadata_props`` fields (StringStringEntryProto {key = 1, value = 2})."""
    return b"".join(bytes_field(MODEL_PROPS, bytes_field(1, k) + bytes_field(2, v)) for k, v in entries.items())


def model(graph: bytes, *, opset: int, ir_version: int, metadata: dict[str, str], producer: str = "dpcompat") -> bytes:
    """A ModelProto of ``graph`` importing the default domain at ``opset``."""
    return (int_field(MODEL_IR_VERSION, ir_version) + bytes_field(MODEL_PRODUCER, producer)
            + bytes_field(MODEL_GRAPH, graph) + bytes_field(MODEL_OPSET, int_field(2, opset)) + props(metadata))
