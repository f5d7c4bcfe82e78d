"""Which files an ONNX graph reads besides itself (external data), without importing ``onnx``.

Graphs over 2 GB keep their tensors in separate files named by each tensor's
``external_data`` entries (``location``, ``offset``, ``length``): optimum writes
``model.onnx_data``, ONNX Runtime's optimizer and quantizer ``model.onnx.data``, other tools one
file per tensor. A bundle must ship exactly the files the graph names (a bundle writer that guessed
the name once shipped a 6 KB graph without its weights, and the bundle still verified), so the names are
read from the graph itself.

This module walks the ONNX protobuf wire format directly (standard library only) because it runs
on the serving path, where the lean runtime install has no ``onnx`` package. It reads only the
fields that can hold tensors: ``ModelProto.graph`` (7) and ``functions`` (25); ``GraphProto.node``
(1), ``initializer`` (5), ``sparse_initializer`` (15); ``NodeProto.attribute`` (5);
``AttributeProto.t`` (5), ``g`` (6), ``tensors`` (10), ``graphs`` (11), ``sparse_tensor`` (22),
``sparse_tensors`` (23); ``SparseTensorProto.values`` (1) and ``indices`` (2); ``TensorProto.name``
(8), ``external_data`` (13) and ``data_location`` (14). Field numbers: ``onnx/onnx.proto`` (the
same set ``onnx.external_data_helper._get_all_tensors`` visits, subgraphs included). A test checks
the result against ``onnx.external_data_helper`` on real graphs.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor stored outside the graph file.

    Attributes:
        name: the tensor's name in the graph.
        location: file path relative to the graph's folder, exactly as written in the graph.
        offset: byte offset of the tensor's data in that file (0 when absent).
        length: byte length of the data, or None (then: to the end of the file).
        element_type: an OpenVINO IR constant's ``element_type`` (``f32``, ``i8``, ...); None for ONNX.
    """

    name: str
    location: str
    offset: int
    length: int | None
    element_type: str | None = None


class GraphFormatError(ValueError):
    """The file is not a well-formed ONNX protobuf (truncated, or a field of an impossible wire type)."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= end or shift > 63:
            raise GraphFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, value) of one message: an int for varints, a (start, end) span for length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, value
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise GraphFormatError("a field runs past the end of its message")
            yield number, (pos, pos + n)
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise GraphFormatError(f"wire type {wire} (groups) does not occur in ONNX")
    if pos != end:
        raise GraphFormatError("a message runs past its declared length")


# message kind -> {field number: kind of the sub-message}
_CHILDREN = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _tensor(buf, start: int, end: int) -> ExternalTensor | None:
    name, location_kind, entries = "", 0, {}
    for number, value in _fields(buf, start, end):
        if number == 8 and isinstance(value, tuple):
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif number == 14 and isinstance(value, int):
            location_kind = value
        elif number == 13 and isinstance(value, tuple):
            key = val = ""
            for n, v in _fields(buf, *value):
                if n in (1, 2) and isinstance(v, tuple):
                    text = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                    key, val = (text, val) if n == 1 else (key, text)
            entries[key] = val
    if location_kind != _EXTERNAL and "location" not in entries:
        return None
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") not in (None, "") else None
    except ValueError:
        raise GraphFormatError(f"tensor {name!r} has a non-integer external-data offset or length") from None
    return ExternalTensor(name, entries.get("location", ""), offset, length)


#: OpenVINO IR: ``<stem>.xml`` (the graph) reads its constants from ``<stem>.bin`` beside it (``ov::Core::read_model``).
IR_SUFFIX, IR_WEIGHTS_SUFFIX = ".xml", ".bin"


def is_openvino_ir(model_path: str | os.PathLike) -> bool:
    """True for an OpenVINO IR graph (``.xml``), False for an ONNX graph."""
    return Path(model_path).suffix == IR_SUFFIX


def _ir_tensors(model_path: Path) -> list[ExternalTensor]:
    """The constants of an OpenVINO IR: each ``<layer type="Const"><data offset=".." size=".."/>`` reads bytes of
    ``<stem>.bin`` (OpenVINO IR v11 format). Parsed with the standard library's expat, which refuses entity
    expansion attacks (expat ≥ 2.4.1). Raises GraphFormatError for malformed XML or attributes."""
    import xml.etree.ElementTree as ET

    location = model_path.with_suffix(IR_WEIGHTS_SUFFIX).name
    try:
        root = ET.parse(model_path).getroot()
    except ET.ParseError as exc:
        raise GraphFormatError(f"not well-formed OpenVINO IR XML ({exc})") from None
    if root.tag != "net":
        raise GraphFormatError(f"the root element is <{root.tag}>, not an OpenVINO IR <net>")
    found = []
    for layer in root.iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None or data.get("offset") is None:
            continue
        try:
            found.append(ExternalTensor(layer.get("name", ""), location, int(data.get("offset")), int(data.get("size")),
                                        data.get("element_type")))
        except (TypeError, ValueError):
            raise GraphFormatError(f"constant {layer.get('name')!r} has a non-integer offset or size") from None
    return found


def external_tensors(model_path: str | os.PathLike) -> list[ExternalTensor]:
    """Every tensor of the graph (initializers, node attributes, sparse tensors, subgraphs and functions
    included) whose data lives in another file, in file order. For an OpenVINO IR (``.xml``): its constants,
    all in ``<stem>.bin``.

    Raises GraphFormatError when the file is not a well-formed ONNX protobuf (or IR XML), OSError when unreadable.
    """
    if is_openvino_ir(model_path):
        return _ir_tensors(Path(model_path))
    with open(model_path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise GraphFormatError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                found: list[ExternalTensor] = []
                stack = [("model", 0, len(buf))]
                while stack:
                    kind, start, end = stack.pop()
                    if kind == "tensor":
                        t = _tensor(buf, start, end)
                        if t is not None:
                            found.append(t)
                        continue
                    children = []
                    for number, value in _fields(buf, start, end):
                        child = _CHILDREN[kind].get(number)
                        if child and isinstance(value, tuple):
                            children.append((child, *value))
                    stack.extend(reversed(children))
                return found
            finally:
                buf.release()


def external_files(model_path: str | os.PathLike) -> list[str]:
    """The distinct external-data locations the graph names (relative to its folder), sorted."""
    return sorted({t.location for t in external_tensors(model_path)})


def unsafe_location(location: str) -> str | None:
    """Why ``location`` may not be followed from a bundle (empty, absolute, a drive, ``..``), or None if it may.

    ONNX external-data locations are relative to the graph's folder (onnx.proto); anything that
    could leave that folder is refused (ONNX Runtime ≥ 1.20 refuses the same, older versions did not).
    """
    if not location:
        return "an empty location"
    if "\x00" in location:
        return "a NUL byte"
    posix, win = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or win.is_absolute() or win.drive or location.startswith(("\\", "/")):
        return "an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "a `..` component"
    return None


def check_external_data(model_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[str]:
    """Problems that would stop the graph's external data from loading; ``[]`` when every tensor resolves.

    Each external tensor's location must be relative, stay inside ``root`` (default: the graph's
    folder) after resolving symlinks, name an existing regular file, and ``offset + length`` must
    fit in that file's size in bytes.
    """
    model_path = Path(model_path)
    base = model_path.parent
    root_resolved = Path(root or base).resolve()
    try:
        tensors = external_tensors(model_path)
    except (GraphFormatError, OSError) as exc:
        kind = "OpenVINO IR" if is_openvino_ir(model_path) else "ONNX"
        return [f"{model_path.name} is not a readable {kind} graph ({exc})"]
    problems: list[str] = []
    sizes: dict[str, int | None] = {}
    negative: list[ExternalTensor] = []
    past_end: dict[str, list[ExternalTensor]] = {}
    for t in tensors:
        why = unsafe_location(t.location)
        if why:
            problems.append(f"external data of tensor {t.name!r} has {why} ({t.location!r}); refused")
            continue
        if t.offset < 0 or (t.length is not None and t.length < 0):
            negative.append(t)
            continue
        if t.location not in sizes:
            path = (base / t.location).resolve()
            if path != root_resolved and root_resolved not in path.parents:
                problems.append(f"external data file {t.location!r} resolves outside the bundle; refused")
                sizes[t.location] = None
                continue
            sizes[t.location] = path.stat().st_size if path.is_file() else None
            if sizes[t.location] is None:
                problems.append(f"missing external data file {t.location!r} (tensor {t.name!r})")
                continue
        size = sizes[t.location]
        if size is not None and t.offset + (t.length or 0) > size:
            past_end.setdefault(t.location, []).append(t)
    if negative:
        t = negative[0]
        problems.append(f"{model_path.name} gives {len(negative)} tensor(s) a negative offset or size (first: "
                        f"{t.name!r}, offset {t.offset}, size {t.length}), which no writer produces: the graph file "
                        "is corrupted or was edited")
    for location, short in past_end.items():
        first = short[0]
        need = max(t.offset + (t.length or 0) for t in short)
        problems.append(f"{location!r} is truncated or not the file written with {model_path.name}: it has "
                        f"{sizes[location]} bytes, and {len(short)} tensor(s) read past its end (up to byte {need}; "
                        f"first: {first.name!r} at bytes {first.offset}..{first.offset + (first.length or 0)})")
    return problems
