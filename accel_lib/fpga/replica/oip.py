"""THE owner of the Open Inference Protocol (KServe's v2 protocol) as this project speaks it: tensors of a
``ModelInferRequest`` to what a replica scores and back, and the HTTP/REST form (JSON, with Triton's binary
tensor extension) to the gRPC messages the replicas answer. No TensorFlow; the replica and the front end's REST
process pool import it.

A service takes one input, the encoded JPEG/PNG images as ``BYTES`` (any shape whose size is the number of
images), or preprocessed ``FP32`` [N, H, W, 3]; it answers ``FP32`` outputs in ``raw_output_contents``. Over HTTP,
``BYTES`` come as binary data (``Inference-Header-Content-Length``, each element a 4-byte little-endian length and
its bytes), or in the JSON ``data`` as base64 strings when the input's ``parameters`` say
``"content_type": "base64"``. Every count and size is checked against the caller's limits before it is allocated.
"""
from __future__ import annotations

import json
import math
import re
import struct

import numpy as np

SERVER_NAME = "accel_lib"                 # what ServerMetadata answers
SERVER_VERSION = "1"
PLATFORM = "accel_lib_fpga"               # a model's platform in ModelMetadata
MODEL_VERSION = "1"                       # every service has one version
EXTENSIONS = ["binary_tensor_data"]       # Triton's name for the binary tensor data extension over HTTP
SERVER_METADATA_FIELDS = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
HEADER_LENGTH = "Inference-Header-Content-Length"
GRPC_SERVICE = "/inference.GRPCInferenceService/"      # the protocol's gRPC methods: this prefix and the name
INFER, MODEL_METADATA, MODEL_READY = GRPC_SERVICE + "ModelInfer", GRPC_SERVICE + "ModelMetadata", GRPC_SERVICE + "ModelReady"
SERVER_LIVE, SERVER_READY, SERVER_METADATA = (GRPC_SERVICE + "ServerLive", GRPC_SERVICE + "ServerReady",
                                              GRPC_SERVICE + "ServerMetadata")
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "INTERNAL": 500}   # by gRPC status
INT64_LIMIT = 2 ** 63                     # a shape dimension is an int64 (the protocol's proto and JSON forms)
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32",
             np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}
NUMPY = {v: k for k, v in DATATYPES.items()}
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents",
            "UINT8": "uint_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


class ProtocolError(ValueError):
    """A request the protocol (or a limit) refuses: a gRPC status code name and a message that says what to fix
    (the front end's CallError too)."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code, self.message = code, message

    def __str__(self):
        return self.message


# -- the REST surface (/v2): its routes and its answers, for the front end and a replica alike --------------
MODEL_PATH = r"/v2/models/([^/]+)(?:/versions/([^/]+))?"
ROUTES = [("GET", re.compile(r"/v2/health/live"), "live"), ("GET", re.compile(r"/v2/health/ready"), "ready"),
          ("GET", re.compile(r"/v2"), "server"), ("GET", re.compile(MODEL_PATH), "metadata"),
          ("GET", re.compile(MODEL_PATH + "/ready"), "model_ready"),
          ("POST", re.compile(MODEL_PATH + "/infer"), "infer")]      # (method, path, what answers it)
ABOUT_SERVER = ("live", "ready", "server")          # about the server, not a model: no key (a runner's probes)
ROUTES_IN_WORDS = "/v2/health/{live,ready}, /v2/models/<model>[/ready] and POST /v2/models/<model>/infer"


def check_version(model, version):
    """NOT_FOUND unless ``version`` is empty or the one version every model has."""
    if version not in (None, "", MODEL_VERSION):
        raise ProtocolError("NOT_FOUND", f"model {model!r} has version {MODEL_VERSION} only, not {version!r}.")


def error(code, message) -> tuple:
    """(JSON body, HTTP status) of a refusal: the protocol's error object."""
    return {"error": message}, HTTP_STATUS.get(code, 500)


def live() -> tuple:
    return {"live": True}, 200


def ready(is_ready) -> tuple:
    return {"ready": bool(is_ready)}, 200 if is_ready else 400


def server() -> tuple:
    return {**SERVER_METADATA_FIELDS}, 200


def server_metadata_message():
    """ServerMetadata's answer over gRPC."""
    from .protos import inference_pb2
    return inference_pb2.ServerMetadataResponse(**SERVER_METADATA_FIELDS)


def model_ready(name, is_ready) -> tuple:
    return {"name": name, "ready": bool(is_ready)}, 200 if is_ready else 400


# -- BYTES tensors ------------------------------------------------------------------------------------
def split_bytes(raw: bytes, max_items=None) -> list:
    """A BYTES tensor's raw form (each element: 4-byte little-endian length, then its bytes) -> the elements;
    stops with RESOURCE_EXHAUSTED past ``max_items``, INVALID_ARGUMENT on a length that runs past the end."""
    out, i, n = [], 0, len(raw)
    view = memoryview(raw)
    while i < n:
        if i + 4 > n:
            raise ProtocolError("INVALID_ARGUMENT", "a BYTES tensor's raw contents end inside an element's length.")
        (size,) = struct.unpack_from("<I", raw, i)
        if i + 4 + size > n:
            raise ProtocolError("INVALID_ARGUMENT", f"a BYTES tensor's element {len(out)} says {size:,} bytes, more "
                                                    "than its raw contents hold.")
        if max_items is not None and len(out) >= max_items:
            raise ProtocolError("RESOURCE_EXHAUSTED", f"the request holds more than {max_items} images; at most "
                                                      f"{max_items} per request (max_images). Split it.")
        out.append(bytes(view[i + 4:i + 4 + size]))
        i += 4 + size
    return out


def join_bytes(items) -> bytes:
    """Elements -> a BYTES tensor's raw form."""
    return b"".join(struct.pack("<I", len(b)) + bytes(b) for b in items)


# -- gRPC messages <-> what a replica scores ------------------------------------------------------------
def wire_caps(max_images: int) -> dict:
    """The ModelInferRequest fields a request may repeat more than a handful of times, with their caps
    (``wire.check``): one element of BYTES contents per image."""
    return {"InferTensorContents.bytes_contents": (max_images, f"max_images={max_images}: at most {max_images} "
                                                               "images per request")}


def infer_input(request, input_names, max_images, max_bytes):
    """The one input of a ModelInferRequest -> a list of encoded images (BYTES) or a float32 [N, H, W, 3] array
    (FP32), checked against ``max_images`` and ``max_bytes`` before it is copied."""
    if len(request.inputs) != 1:
        raise ProtocolError("INVALID_ARGUMENT", f"expected exactly one input ({input_names[0]!r}), got "
                                                f"{[t.name for t in request.inputs]}.")
    t = request.inputs[0]
    if t.name not in input_names:
        raise ProtocolError("INVALID_ARGUMENT", f"unknown input {t.name!r}; this model's input is {input_names[0]!r}.")
    shape = list(t.shape)
    if any(s < 0 for s in shape):
        raise ProtocolError("INVALID_ARGUMENT", f"input {t.name!r} has a negative dimension in its shape {shape}.")
    n = math.prod(shape)
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if len(request.raw_input_contents) > 1:
        raise ProtocolError("INVALID_ARGUMENT", "raw_input_contents holds more entries than there are inputs.")
    if t.datatype == "BYTES":
        if raw is not None:
            items = split_bytes(raw, max_images)
        else:
            if len(t.contents.bytes_contents) > max_images:
                raise ProtocolError("RESOURCE_EXHAUSTED", f"the request holds {len(t.contents.bytes_contents):,} "
                                                          f"images; at most {max_images} per request (max_images).")
            items = list(t.contents.bytes_contents)
        if len(items) != n:
            raise ProtocolError("INVALID_ARGUMENT", f"input {t.name!r} holds {len(items)} elements but its shape "
                                                    f"{shape} needs {n}.")
        if not items:
            raise ProtocolError("INVALID_ARGUMENT", "the request holds no images.")
        return items
    if t.datatype != "FP32" or len(shape) != 4:
        raise ProtocolError("INVALID_ARGUMENT", f"input {t.name!r} must be BYTES (encoded JPEG/PNG images) or FP32 "
                                                f"[N, H, W, 3] (preprocessed), got {t.datatype} of shape {shape}.")
    if n * 4 > max_bytes:
        raise ProtocolError("RESOURCE_EXHAUSTED", f"input {t.name!r} of shape {shape} holds {n * 4 / 2**20:,.1f} MB; "
                                                  f"at most {max_bytes / 2**20:,.1f} MB per request (max_request_mb).")
    arr = (np.frombuffer(raw, "<f4") if raw is not None
           else np.asarray(t.contents.fp32_contents, np.float32))
    if arr.size != n:
        raise ProtocolError("INVALID_ARGUMENT", f"input {t.name!r} holds {arr.size} values but its shape {shape} "
                                                f"needs {n}.")
    return arr.reshape(shape)


def requested_outputs(request):
    """The output names a ModelInferRequest asks for (None: every output the service serves)."""
    return [o.name for o in request.outputs] or None


def infer_response(response_cls, model_name, request_id, result: dict):
    """``result`` ({name: array}) -> a ModelInferResponse, each output's values little-endian in
    raw_output_contents."""
    resp = response_cls(model_name=model_name, model_version=MODEL_VERSION, id=request_id)
    for name, value in result.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype not in DATATYPES:
            raise ProtocolError("INTERNAL", f"output {name!r} has dtype {arr.dtype}, which has no v2 datatype.")
        resp.outputs.add(name=name, datatype=DATATYPES[arr.dtype], shape=list(arr.shape))
        resp.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return resp


def output_arrays(resp) -> dict:
    """A ModelInferResponse -> {name: numpy array} (raw contents, or typed contents)."""
    out = {}
    for i, t in enumerate(resp.outputs):
        if t.datatype == "BYTES":
            items = (split_bytes(resp.raw_output_contents[i]) if resp.raw_output_contents
                     else list(t.contents.bytes_contents))
            out[t.name] = np.array(items, dtype=object).reshape(list(t.shape))
            continue
        dt = NUMPY[t.datatype]
        arr = (np.frombuffer(resp.raw_output_contents[i], dt.newbyteorder("<")) if resp.raw_output_contents
               else np.asarray(getattr(t.contents, CONTENTS[t.datatype]), dt))
        out[t.name] = arr.astype(dt, copy=False).reshape(list(t.shape))
    return out


def model_metadata(response_cls, name, manifest):
    """ModelMetadataResponse of a service serving the package described by ``manifest``."""
    resp = response_cls(name=name, versions=[MODEL_VERSION], platform=PLATFORM)
    resp.inputs.add(name=manifest.input.name, datatype="BYTES", shape=[-1])
    for o in manifest.served():
        resp.outputs.add(name=o.name, datatype="FP32", shape=list(o.shape))
    return resp


# -- HTTP/REST <-> gRPC (the front end's REST process pool) ------------------------------------------------
# What json.loads may take, per token, beyond the text; its peak resident memory measured per shape
# (tests/test_wire.py): a float in an array 39 bytes, a string 76-102, an empty array or object 71, [0] 103, an
# object member 150, {"key": 0} 307. The text itself is decoded to a str, then copied into its strings: twice its
# size if it is ASCII, up to 8 times if not (a str takes 4 bytes a character once one needs them).
JSON_VALUE, JSON_STRING, JSON_CONTAINER, JSON_MEMBER = 48, 96, 64, 96


def json_cost(text: bytes) -> int:
    """The most that parsing ``text`` may take, in bytes, counted on the text before it is parsed: values (at most
    one after each comma, one first in each container not written empty, one at the top), strings (pairs of
    quotes), containers and members (colons). Signs inside strings only make it larger."""
    opens = text.count(b"[") + text.count(b"{")
    values = text.count(b",") + opens - text.count(b"[]") - text.count(b"{}") + 1
    return ((2 if text.isascii() else 8) * len(text) + JSON_VALUE * values + JSON_STRING * (text.count(b'"') // 2)
            + JSON_CONTAINER * opens + JSON_MEMBER * text.count(b":"))


def load_json(text: bytes, what="the inference header", max_bytes=None):
    """A request's JSON object (TF Serving's REST body or the protocol's inference header); any malformed JSON,
    deep nesting and bad encodings too, is INVALID_ARGUMENT, and so is a document that is not an object. One whose
    parse would take more than ``max_bytes`` (``json_cost``) is RESOURCE_EXHAUSTED before it is parsed."""
    cost = None if max_bytes is None else json_cost(text)
    if cost is not None and cost > max_bytes:
        raise ProtocolError("RESOURCE_EXHAUSTED", f"{what} would take up to {cost / 2**20:,.0f} MB to "
                                                  f"parse, more than max_request_mb={max_bytes / 2**20:g} allows: "
                                                  "send fewer values in a request (images as base64 take least), or "
                                                  "deploy with a larger max_request_mb.")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ProtocolError("INVALID_ARGUMENT", f"{what} is not JSON we take: nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("INVALID_ARGUMENT", f"{what} is not JSON ({str(e)[:200]}).") from None
    if not isinstance(doc, dict):
        raise ProtocolError("INVALID_ARGUMENT", f"{what} must be a JSON object.")
    return doc


def _object(doc, key, where):
    """``doc[key]`` if it is a JSON object (an empty one if absent), else INVALID_ARGUMENT."""
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ProtocolError("INVALID_ARGUMENT", f"{where} {key!r} must be an object.")
    return value


def _param(message_params, key, value):
    p = message_params[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def rest_infer_request(body: bytes, header_length, service, max_images, max_bytes) -> tuple:
    """An HTTP infer body (JSON, then binary tensor data when ``header_length`` is given) -> (ModelInferRequest
    bytes, how to answer: {"binary": names of outputs to send as binary, or True for all, "id": request id})."""
    try:
        return _rest_infer_request(body, header_length, service, max_images, max_bytes)
    except UnicodeEncodeError as e:       # JSON's "\ud800" escapes decode to lone surrogates, not Unicode text
        raise ProtocolError("INVALID_ARGUMENT", f"a string of the request holds {e.object[e.start:e.end]!r}, a "
                                                "lone UTF-16 surrogate: not valid Unicode text.") from None


def _rest_infer_request(body, header_length, service, max_images, max_bytes):
    import base64

    from .protos import inference_pb2
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise ProtocolError("INVALID_ARGUMENT", f"{HEADER_LENGTH} is {header_length}, but the body has "
                                                    f"{len(body)} bytes.")
        doc, blob = load_json(body[:header_length], max_bytes=max_bytes), memoryview(body)[header_length:]
    else:
        doc, blob = load_json(body, max_bytes=max_bytes), memoryview(b"")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("INVALID_ARGUMENT", "'inputs' must be a non-empty list of tensors "
                                                "({\"name\", \"shape\", \"datatype\", \"data\"}).")
    req = inference_pb2.ModelInferRequest(model_name=service, model_version=MODEL_VERSION, id=str(doc.get("id", "")))
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("datatype"), str):
            raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}] needs a 'name', a 'shape' and a 'datatype'.")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].shape must be a list of whole numbers.")
        if not all(0 <= s < INT64_LIMIT for s in shape):
            raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].shape {shape} has a dimension that is negative or "
                                                    "does not fit the protocol's int64.")
        params = _object(t, "parameters", f"inputs[{i}]")
        req.inputs.add(name=t["name"], datatype=t["datatype"], shape=shape)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}] says binary_data_size {size!r}; the binary "
                                                        f"data after the header has {len(blob) - offset} bytes left.")
            req.raw_input_contents.append(bytes(blob[offset:offset + size]))
            offset += size
            continue
        data = t.get("data")
        if not isinstance(data, list):
            raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}] needs 'data' (a list) or binary data "
                                                    "(parameters.binary_data_size).")
        data = _flatten(data, i)
        if t["datatype"] == "BYTES":
            if len(data) > max_images:
                raise ProtocolError("RESOURCE_EXHAUSTED", f"the request holds {len(data):,} images; at most "
                                                          f"{max_images} per request (max_images).")
            b64 = params.get("content_type") == "base64"
            items = []
            for j, v in enumerate(data):
                if not isinstance(v, str):
                    raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].data[{j}] must be a string.")
                try:
                    items.append(base64.b64decode(v, validate=True) if b64 else v.encode())
                except ValueError:
                    raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].data[{j}] is not valid base64.") from None
            req.raw_input_contents.append(join_bytes(items))
        elif t["datatype"] in NUMPY:
            try:
                arr = np.asarray(data, NUMPY[t["datatype"]])
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].data holds values that are not "
                                                        f"{t['datatype']}.") from None
            req.raw_input_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        else:
            raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].datatype {t['datatype']!r} is not one this "
                                                    f"server takes ({sorted(CONTENTS)}).")
    if offset != len(blob):
        raise ProtocolError("INVALID_ARGUMENT", f"{len(blob) - offset} bytes of binary data follow the inputs that "
                                                "no input claims (binary_data_size).")
    binary = bool(_object(doc, "parameters", "the request's").get("binary_data_output", False))
    wanted = set()
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise ProtocolError("INVALID_ARGUMENT", "'outputs' must be a list of {\"name\"} objects.")
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise ProtocolError("INVALID_ARGUMENT", f"outputs[{i}] needs a 'name'.")
        req.outputs.add(name=o["name"])
        if _object(o, "parameters", f"outputs[{i}]").get("binary_data", binary):
            wanted.add(o["name"])
    answer = {"binary": True if binary and not doc.get("outputs") else sorted(wanted), "id": req.id}
    return req.SerializeToString(), answer


def _flatten(data, i):
    """Row-major values of a nested 'data' list (the protocol allows nesting by shape)."""
    flat = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) > 8:
                    raise ProtocolError("INVALID_ARGUMENT", f"inputs[{i}].data is nested deeper than a tensor.")
                stack.append(iter(v))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def rest_infer_reply(raw: bytes, answer: dict) -> tuple:
    """A ModelInferResponse's bytes -> (HTTP body, the JSON header's length when binary data follows, else None)."""
    from .protos import inference_pb2
    resp = inference_pb2.ModelInferResponse.FromString(raw)
    arrays = output_arrays(resp)
    outputs, blobs = [], []
    for t in resp.outputs:
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        arr = arrays[t.name]
        if answer["binary"] is True or t.name in answer["binary"]:
            data = (join_bytes(arr.ravel()) if t.datatype == "BYTES"
                    else arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    head = {"model_name": resp.model_name, "model_version": resp.model_version, "outputs": outputs}
    if answer.get("id"):
        head["id"] = answer["id"]
    text = json.dumps(head).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)


def model_metadata_json(raw: bytes) -> dict:
    """A ModelMetadataResponse's bytes -> the protocol's JSON model metadata."""
    from .protos import inference_pb2
    m = inference_pb2.ModelMetadataResponse.FromString(raw)
    tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]  # noqa: E731
    return {"name": m.name, "versions": list(m.versions), "platform": m.platform, "inputs": tensors(m.inputs),
            "outputs": tensors(m.outputs)}
