"""TensorProto <-> numpy, without TensorFlow's runtime.

Works with either definition of TensorProto: TensorFlow's (the client) or the replica's own (``protos``); the caller
passes the class, so this module imports neither.
"""
from __future__ import annotations

import numpy as np

# tensorflow/core/framework/types.proto enum values
DT_FLOAT, DT_INT32, DT_UINT8, DT_STRING, DT_INT64, DT_DOUBLE = 1, 3, 4, 7, 9, 2
_NP = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8, DT_INT64: np.int64}
_DT = {np.dtype(v): k for k, v in _NP.items()}
_VALS = {DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
         DT_INT64: "int64_val"}
DTYPE_NAMES = {DT_FLOAT: "DT_FLOAT", DT_DOUBLE: "DT_DOUBLE", DT_INT32: "DT_INT32", DT_UINT8: "DT_UINT8",
               DT_STRING: "DT_STRING", DT_INT64: "DT_INT64"}


MAX_SPLAT = 1 << 26          # the most values a one-value tensor may be filled out to, by default


class TensorTooLarge(ValueError):
    """A tensor that would take more than the caller allows once decoded; ``limit`` is the argument of
    ``from_proto`` it passed ("max_bytes" or "max_strings")."""

    def __init__(self, message, limit):
        super().__init__(message)
        self.limit = limit


def wire_caps(max_images: int) -> dict:
    """The TensorProto fields a request may repeat more than a handful of times, with their caps (``wire.check``):
    one string per image."""
    return {"TensorProto.string_val": (max_images, f"max_images={max_images}: at most {max_images} images per "
                                                   "request")}


def to_proto(value, proto_cls):
    """A numpy array (numeric) or a list of bytes (DT_STRING) -> ``proto_cls`` (a TensorProto class)."""
    t = proto_cls()
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], (bytes, str))):
        t.dtype = DT_STRING
        t.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in value)
        shape = [len(value)]
    else:
        arr = np.ascontiguousarray(value)
        if arr.dtype not in _DT:
            raise ValueError(f"dtype {arr.dtype} is not supported; use float32, float64, int32, int64 or uint8.")
        t.dtype = _DT[arr.dtype]
        t.tensor_content = arr.tobytes()
        shape = list(arr.shape)
    for s in shape:
        t.tensor_shape.dim.add(size=int(s))
    return t


def from_proto(t, max_bytes=MAX_SPLAT * 8, max_strings=None):
    """TensorProto -> numpy array, or a list of bytes for DT_STRING. Checked before anything is allocated: the
    shape's product (in Python integers: no int64 wrap-around), at most ``max_bytes`` once decoded (a one-value
    tensor filled out to its shape included) and at most ``max_strings`` strings; TensorTooLarge names the limit."""
    import math
    shape = [d.size for d in t.tensor_shape.dim]
    if any(s < 0 for s in shape):
        raise ValueError(f"tensor shape {shape} has a negative dimension.")
    n = math.prod(shape)
    if t.dtype == DT_STRING:
        count = len(t.string_val)                # counted in the message, no string copied yet
        if max_strings is not None and count > max_strings:
            raise TensorTooLarge(f"the tensor holds {count:,} strings; at most {max_strings:,} per request.",
                                 "max_strings")
        if count != n:
            raise ValueError(f"tensor holds {count} strings but its shape {shape} needs {n}.")
        return list(t.string_val)
    if t.dtype not in _NP:
        raise ValueError(f"tensor dtype {DTYPE_NAMES.get(t.dtype, t.dtype)} is not supported.")
    dt = np.dtype(_NP[t.dtype])
    if n * dt.itemsize > max_bytes:
        raise TensorTooLarge(f"the tensor's shape {shape} holds {n:,} values ({n * dt.itemsize / 2**20:,.1f} MB); at "
                             f"most {max_bytes / 2**20:,.1f} MB per request.", "max_bytes")
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=dt)
    else:
        arr = np.asarray(getattr(t, _VALS[t.dtype]), dtype=dt)
    if arr.size == 1 and n > 1 and not t.tensor_content:                 # TF's one-value fill, within max_bytes
        arr = np.full(n, arr[0], dt)
    if arr.size != n:
        raise ValueError(f"tensor holds {arr.size} values but its shape {shape} needs {n}.")
    return arr.reshape(shape)
