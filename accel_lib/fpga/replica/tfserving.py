"""TensorFlow Serving's REST API on the front end: a predict body ('instances' rows or 'inputs' columns of
{"b64": ...} images) to a PredictRequest, and a PredictResponse back to JSON (beside ``oip``, the Open Inference
Protocol's codec). Both run in the front end's REST process pool for large bodies."""
from __future__ import annotations

import base64
import json

from . import oip

CallError = oip.ProtocolError


def _b64(item, where):
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except ValueError:
            raise CallError("INVALID_ARGUMENT", f"{where}: 'b64' is not valid base64.") from None
    raise CallError("INVALID_ARGUMENT", f"{where} must be an object {{\"b64\": \"<base64 JPEG or PNG>\"}}.")


def parse_rest_predict(body, input_name, max_images=None):
    """TF Serving's REST request ('instances' rows or 'inputs' columns) -> (list of image bytes, row format?)."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise CallError("INVALID_ARGUMENT", "the body must be a JSON object with either 'instances' (rows) or "
                                            "'inputs' (columns), e.g. {\"instances\": [{\"b64\": \"...\"}]}.")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise CallError("INVALID_ARGUMENT", "'instances' must be a non-empty list.")
        _count(rows, max_images)
        images = []
        for i, row in enumerate(rows):
            if isinstance(row, dict) and set(row) == {input_name}:
                row = row[input_name]
            images.append(_b64(row, f"instances[{i}]"))
        return images, True
    cols = body["inputs"]
    if isinstance(cols, dict):
        if set(cols) != {input_name}:
            raise CallError("INVALID_ARGUMENT", f"'inputs' names {sorted(cols)}; this model's input is "
                                                f"{input_name!r}.")
        cols = cols[input_name]
    if not isinstance(cols, list) or not cols:
        raise CallError("INVALID_ARGUMENT", "'inputs' must be a non-empty list of {\"b64\": ...} objects.")
    _count(cols, max_images)
    return [_b64(c, f"inputs[{i}]") for i, c in enumerate(cols)], False


def _count(items, max_images):
    if max_images is not None and len(items) > max_images:
        raise CallError("INVALID_ARGUMENT", f"the request holds {len(items):,} images; at most {max_images} per "
                                            "request. Split it into smaller batches.")


def rest_predict_request(body: bytes, service: str, max_images: int, max_bytes: int) -> tuple:
    """A REST predict body -> (PredictRequest bytes, row format?, image count); runs in the REST process pool.
    Any malformed JSON (deep nesting and bad encodings too) is INVALID_ARGUMENT."""
    from . import tensors
    from .protos import serving_pb2, tensorflow_pb2
    images, rows = parse_rest_predict(oip.load_json(body, "the body", max_bytes), "images", max_images)
    req = serving_pb2.PredictRequest()
    req.model_spec.name = service
    req.inputs["images"].CopyFrom(tensors.to_proto(images, tensorflow_pb2.TensorProto))
    return req.SerializeToString(), rows, len(images)


def rest_predict_reply(raw: bytes, rows: bool, n: int) -> bytes:
    """A PredictResponse's bytes -> TF Serving's REST JSON reply; runs in the REST process pool."""
    from . import tensors
    from .protos import serving_pb2
    outs = {k: tensors.from_proto(v).tolist() for k, v in serving_pb2.PredictResponse.FromString(raw).outputs.items()}
    if rows:
        preds = [next(iter(outs.values()))[i] if len(outs) == 1 else {k: v[i] for k, v in outs.items()}
                 for i in range(n)]
        return json.dumps({"predictions": preds}).encode()
    return json.dumps({"outputs": next(iter(outs.values())) if len(outs) == 1 else outs}).encode()


def rest_status(ready) -> dict:
    """GET /v1/models/<name>: the model's one version, AVAILABLE once a replica serves (LOADING before)."""
    return {"model_version_status": [{"version": oip.MODEL_VERSION, "state": "AVAILABLE" if ready else "LOADING",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def metadata_request(name) -> bytes:
    """The GetModelMetadataRequest (signature_def) that GET /v1/models/<name>/metadata forwards."""
    from .protos import serving_pb2
    req = serving_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = name
    return req.SerializeToString()


def rest_metadata(name, raw: bytes) -> dict:
    """A GetModelMetadataResponse as TF Serving's REST API answers it, with this project's own entry."""
    from google.protobuf import json_format, wrappers_pb2

    from .protos import serving_pb2
    resp = serving_pb2.GetModelMetadataResponse.FromString(raw)
    sigmap = serving_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigmap)
    about = wrappers_pb2.StringValue()
    resp.metadata["accel_lib"].Unpack(about)
    return {"model_spec": {"name": name, "signature_name": "", "version": oip.MODEL_VERSION},
            "metadata": {"signature_def": json_format.MessageToDict(sigmap, preserving_proto_field_name=True),
                         "accel_lib": json.loads(about.value)}}
