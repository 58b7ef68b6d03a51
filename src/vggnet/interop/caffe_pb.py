"""The few messages of Caffe's `caffe.proto` needed to read (and, in tests, write) a `.caffemodel`.

The original VGG release (`VGG_ILSVRC_16_layers.caffemodel`, `..._19_layers`) is
a serialised `NetParameter`. Only layer names and their parameter blobs matter
here, so this module declares just those fields — with the field numbers of
BVLC Caffe's `src/caffe/proto/caffe.proto` — and builds the message classes at
run time from descriptors, so neither `protoc` nor Caffe is needed:

    NetParameter      name = 1, layers = 2 (V1LayerParameter, deprecated), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  layer = 1 (V0LayerParameter), name = 4, type = 5 (enum), blobs = 6
    V0LayerParameter  name = 1, type = 2, blobs = 50
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-d shape),
                      data = 5 (packed float), shape = 7 (BlobShape), double_data = 8 (packed double)
    BlobShape         dim = 1 (packed int64)

Every other field of a real file is skipped by the parser as unknown.

Two schemas are built from the same table. `typed` declares `data` as Caffe does
(`repeated float`, packed): use it to write files. `raw` declares `data` and
`double_data` as `repeated bytes`: a packed field and a bytes field share the
wire type (length-delimited), so the parser hands over the packed payload
as-is and `numpy.frombuffer` reads 138M floats without a Python loop. A blob
whose floats were written unpacked (legal, but Caffe never does it) lands in the
raw message's unknown fields; `blob_array` then re-reads that blob with `typed`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["raw", "typed", "blob_shape", "blob_array"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message -> [(field name, number, label, type, message type name or None, packed)]
_SCHEMA: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, _REP, _F.TYPE_INT64, None, True)],
    "BlobProto": [
        ("num", 1, _OPT, _F.TYPE_INT32, None, False),
        ("channels", 2, _OPT, _F.TYPE_INT32, None, False),
        ("height", 3, _OPT, _F.TYPE_INT32, None, False),
        ("width", 4, _OPT, _F.TYPE_INT32, None, False),
        ("data", 5, _REP, "FLOAT", None, True),
        ("shape", 7, _OPT, _F.TYPE_MESSAGE, "BlobShape", False),
        ("double_data", 8, _REP, "DOUBLE", None, True),
    ],
    "V0LayerParameter": [
        ("name", 1, _OPT, _F.TYPE_STRING, None, False),
        ("type", 2, _OPT, _F.TYPE_STRING, None, False),
        ("blobs", 50, _REP, _F.TYPE_MESSAGE, "BlobProto", False),
    ],
    "V1LayerParameter": [
        ("layer", 1, _OPT, _F.TYPE_MESSAGE, "V0LayerParameter", False),
        ("name", 4, _OPT, _F.TYPE_STRING, None, False),
        ("type", 5, _OPT, _F.TYPE_INT32, None, False),  # an enum in caffe.proto: CONVOLUTION = 4, INNER_PRODUCT = 14
        ("blobs", 6, _REP, _F.TYPE_MESSAGE, "BlobProto", False),
    ],
    "LayerParameter": [
        ("name", 1, _OPT, _F.TYPE_STRING, None, False),
        ("type", 2, _OPT, _F.TYPE_STRING, None, False),
        ("blobs", 7, _REP, _F.TYPE_MESSAGE, "BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _OPT, _F.TYPE_STRING, None, False),
        ("layers", 2, _REP, _F.TYPE_MESSAGE, "V1LayerParameter", False),
        ("layer", 100, _REP, _F.TYPE_MESSAGE, "LayerParameter", False),
    ],
}


def _build(package: str, *, raw_floats: bool, packed: bool = True) -> SimpleNamespace:
    """Message classes for `_SCHEMA` in their own descriptor pool (no clash with a real caffe_pb2)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}.proto", package=package,
                                             syntax="proto2")
    for message, fields in _SCHEMA.items():
        mdp = fdp.message_type.add(name=message)
        for name, number, label, type_, type_name, is_packed in fields:
            if type_ in ("FLOAT", "DOUBLE"):
                if raw_floats:  # the packed payload, as bytes (see the module docstring)
                    type_, is_packed = _F.TYPE_BYTES, False
                else:
                    type_ = _F.TYPE_FLOAT if type_ == "FLOAT" else _F.TYPE_DOUBLE
                    is_packed = is_packed and packed
            field = mdp.field.add(name=name, number=number, label=label, type=type_)
            if type_name is not None:
                field.type_name = f".{package}.{type_name}"
            if is_packed:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return SimpleNamespace(**{m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{m}"))
                              for m in _SCHEMA})


raw = _build("vggnet.caffe_raw", raw_floats=True)
"""Reading schema: `BlobProto.data` / `double_data` are the packed payloads as `repeated bytes`."""
typed = _build("vggnet.caffe", raw_floats=False)
"""Caffe's own declarations (packed floats): use to write `.caffemodel` files."""
typed_unpacked = _build("vggnet.caffe_unpacked", raw_floats=False, packed=False)
"""Floats written one by one (a valid but unusual encoding), for tests of the fallback."""


def blob_shape(blob) -> tuple[int, ...]:
    """The blob's shape: `shape.dim` when present, else the legacy (num, channels, height, width)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def blob_array(blob) -> np.ndarray:
    """The blob's values as a float32 array of `blob_shape(blob)` (a `raw` or `typed` BlobProto).

    Raises ValueError when the number of values does not match the shape.
    """
    shape = blob_shape(blob)
    count = int(np.prod(shape)) if shape else 0
    if isinstance(blob, raw.BlobProto):
        if blob.data:
            values = np.frombuffer(b"".join(blob.data), dtype="<f4")
        elif blob.double_data:
            values = np.frombuffer(b"".join(blob.double_data), dtype="<f8")
        else:
            values = np.zeros(0, dtype="<f4")
        if values.size != count:  # floats written unpacked: re-read this blob with the typed schema
            blob = typed.BlobProto.FromString(blob.SerializeToString())
    if not isinstance(blob, raw.BlobProto):
        values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float64)
    if values.size != count:
        raise ValueError(f"blob of shape {shape} holds {values.size} values, expected {count}")
    return values.astype(np.float32).reshape(shape)  # a writable copy (torch.from_numpy needs one)
