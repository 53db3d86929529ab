"""The external-data file names an ONNX model refers to, read from the protobuf bytes without `onnx`.

The runtime must not import onnx, yet it must know which files an engine will open next to a model
(TensorProto.external_data "location") to refuse ones outside the bundle. This is a minimal wire-format
walker over the ModelProto fields that can hold tensors:

  ModelProto.graph(7) / .functions(25) -> GraphProto.initializer(5), .sparse_initializer(15), .node(1)
  FunctionProto.node(7); NodeProto.attribute(5) -> AttributeProto.t(5), .g(6), .tensors(10), .graphs(11),
  .sparse_tensor(22), .sparse_tensors(23); SparseTensorProto.values(1), .indices(2);
  TensorProto.external_data(13) -> StringStringEntryProto key(1) / value(2); data_location(14).
"""
from __future__ import annotations

MAX_DEPTH = 64

MODEL, GRAPH, FUNCTION, NODE, ATTRIBUTE, TENSOR, SPARSE, ENTRY = range(8)
# message kind -> {field number: message kind of that (length-delimited) field}
CHILDREN = {
    MODEL: {7: GRAPH, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    FUNCTION: {7: NODE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TENSOR: {13: ENTRY},
}


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated, bad varint, bad wire type, too deep)."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value or (start, stop) for length-delimited) of one message's fields."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ProtoError("length-delimited field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise ProtoError("field runs past its message")


def external_locations(buf) -> list[str]:
    """Every TensorProto external_data 'location' in a serialized ModelProto (bytes, memoryview or mmap)."""
    found: list[str] = []
    stack = [(MODEL, 0, len(buf), 0)]
    while stack:
        kind, start, stop, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtoError(f"messages nested deeper than {MAX_DEPTH}")
        if kind == ENTRY:
            key = value = None
            for number, wire, val in _fields(buf, start, stop):
                if wire == 2 and number in (1, 2):
                    text = bytes(buf[val[0]:val[1]]).decode("utf-8", "replace")
                    key, value = (text, value) if number == 1 else (key, text)
            if key == "location":
                found.append(value or "")
            continue
        children = CHILDREN.get(kind, {})
        for number, wire, val in _fields(buf, start, stop):
            child = children.get(number)
            if child is not None and wire == 2:
                stack.append((child, val[0], val[1], depth + 1))
    return found
