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


MAX_SPLAT = 1 << 26          # the most values a one-value tensor may be filled out to


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


def from_proto(t):
    """TensorProto -> numpy array, or a list of bytes for DT_STRING."""
    shape = [d.size for d in t.tensor_shape.dim]
    if any(s < 0 for s in shape):
        raise ValueError(f"tensor shape {shape} has a negative dimension.")
    if t.dtype == DT_STRING:
        n = int(np.prod(shape)) if shape else 1
        if len(t.string_val) != n:
            raise ValueError(f"tensor holds {len(t.string_val)} strings but its shape {shape} needs {n}.")
        return list(t.string_val)
    if t.dtype not in _NP:
        raise ValueError(f"tensor dtype {DTYPE_NAMES.get(t.dtype, t.dtype)} is not supported.")
    dt = _NP[t.dtype]
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=dt)
    else:
        arr = np.asarray(getattr(t, _VALS[t.dtype]), dtype=dt)
    n = int(np.prod(shape)) if shape else 1
    if arr.size == 1 and 1 < n <= MAX_SPLAT and not t.tensor_content:     # TF's one-value fill
        arr = np.full(n, arr[0], dt)
    if arr.size != n:
        raise ValueError(f"tensor holds {arr.size} values but its shape {shape} needs {n}.")
    return arr.reshape(shape)
