"""PredictionClient: score images against a deployed service over gRPC (TensorFlow Serving's Predict API).

The client imports no TensorFlow: its messages are the project's own compiled subset of TensorFlow Serving's
protocol (``fpga.replica.protos``, the same names and field numbers, so the same bytes on the wire). TensorFlow
Serving's own ``TensorProto`` messages are accepted too, and its stub works on ``client.channel``.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from .errors import UserError
from .fpga.cluster.specs import DEFAULT_MODEL, ROUTE_HEADER, route
from .fpga.replica.limits import ServiceLimits

# UNAVAILABLE (a service starting, a replica restarting) is retried after RETRY_FIRST s, doubling to RETRY_MAX, with
# jitter: a waiting client sees a service ready within about RETRY_MAX s of it being so
RETRY_FIRST, RETRY_MAX = 0.05, 0.25


def parse_address(address, port=None, use_ssl=False):
    """'host', 'host:port' or 'scheme://host:port/' -> 'host:port'. A port in the address wins (our local
    services carry one, so the article's code that passes port=80 or 443 works unchanged); else ``port``; else 443
    with SSL, 80 without."""
    addr = address.split("://", 1)[-1].strip().strip("/")
    if not addr or "," in addr or "/" in addr:
        raise UserError(f"address {address!r} is not 'host' or 'host:port'; pass service.scoring_uri.")
    host, _, given = addr.partition(":")
    if given:
        if not given.isdigit():
            raise UserError(f"address {address!r} has a port that is not a number.")
        return addr
    return f"{host}:{port if port is not None else (443 if use_ssl else 80)}"


class PredictionClient:
    """A gRPC client for a deployed service; retries with backoff on UNAVAILABLE, never on INVALID_ARGUMENT."""

    def __init__(self, address, port=None, use_ssl=False, access_token="", service_name="",
                 max_message_mb=ServiceLimits.max_message_mb, retry_seconds=30.0, root_certificates=None):
        import grpc
        self.target = parse_address(address, port, use_ssl)
        self.use_ssl = bool(use_ssl)
        self.service_name = service_name
        self.access_token = access_token
        self.retry_seconds = retry_seconds
        max_bytes = int(max_message_mb * 1024 * 1024)
        opts = [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]
        if use_ssl:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(self.target, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(self.target, options=opts)
        from .fpga.replica.protos import serving_pb2_grpc
        self.stub = serving_pb2_grpc.PredictionServiceStub(self.channel)
        self.modeled_device_us = None    # the last scoring call's device time on the FPGA: modeled, not measured
        self.replica_us = {}             # and the replica's own stages on its CPU, {stage: µs}: measured

    def __repr__(self):
        return f"PredictionClient(target={self.target!r}, service_name={self.service_name!r})"

    def close(self):
        """Close the channel."""
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def metadata(self):
        """Per-call metadata: the service route and, with a key, the bearer token."""
        md = []
        if self.access_token:
            md.append(("authorization", f"Bearer {self.access_token}"))
        if self.service_name:
            md.append((ROUTE_HEADER, route(self.service_name)))
        return md

    def _call(self, method, request, timeout, scoring=False):
        import grpc

        from .fpga.replica import trailers
        deadline = time.monotonic() + self.retry_seconds
        delay = RETRY_FIRST
        while True:
            try:
                reply, call = method.with_call(request, timeout=timeout, metadata=self.metadata)
                if scoring:
                    got = dict(call.trailing_metadata() or ())
                    modeled = got.get(trailers.MODELED_DEVICE_US)
                    self.modeled_device_us = None if modeled is None else float(modeled)
                    self.replica_us = trailers.decode_stages(got.get(trailers.REPLICA_US))
                return reply
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RETRY_MAX)

    # -- scoring ------------------------------------------------------------------------------
    def score_tensors(self, input_map, outputs=None, timeout=10.0):
        """Send {name: TensorProto} (the project's, or TensorFlow's own); returns {output name: TensorProto}."""
        from .fpga.replica.protos import serving_pb2, tensorflow_pb2
        req = serving_pb2.PredictRequest()
        req.model_spec.name = self.service_name or DEFAULT_MODEL
        for k, v in input_map.items():
            if isinstance(v, tensorflow_pb2.TensorProto):
                req.inputs[k].CopyFrom(v)
            else:                                       # TensorFlow's TensorProto: the same bytes
                req.inputs[k].ParseFromString(v.SerializeToString())
        if outputs:
            req.output_filter.extend([outputs] if isinstance(outputs, str) else list(outputs))
        return dict(self._call(self.stub.Predict, req, timeout, scoring=True).outputs)

    def score_numpy_arrays(self, input_map, outputs=None, timeout=10.0):
        """Send {name: array or list of bytes}; one output name -> one array, a list -> arrays in order,
        None -> {name: array} for every output."""
        from .fpga.replica import tensors
        from .fpga.replica.protos import tensorflow_pb2
        got = self.score_tensors({k: tensors.to_proto(v, tensorflow_pb2.TensorProto) for k, v in input_map.items()},
                                 outputs, timeout)
        arrays = {k: tensors.from_proto(v) for k, v in got.items()}
        if outputs is None:
            return arrays
        if isinstance(outputs, str):
            return arrays[outputs]
        return [arrays[n] for n in outputs]

    def score_file(self, path, input_name="images", outputs=None, timeout=10.0):
        """Score one JPEG/PNG file; results for that image (batch dimension removed)."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"no file {str(path)!r} to score.")
        res = self.score_numpy_arrays({input_name: [p.read_bytes()]}, outputs, timeout)
        if isinstance(res, dict):
            return {k: v[0] for k, v in res.items()}
        if isinstance(res, list):
            return [v[0] for v in res]
        return res[0]

    def get_model_metadata(self, timeout=10.0):
        """The service's signature (inputs, outputs) and accel_lib details (numeric format, FPGA)."""
        import json

        from google.protobuf import wrappers_pb2

        from .fpga.replica.protos import serving_pb2
        req = serving_pb2.GetModelMetadataRequest()
        req.model_spec.name = self.service_name or DEFAULT_MODEL
        req.metadata_field.append("signature_def")
        resp = self._call(self.stub.GetModelMetadata, req, timeout)
        sigmap = serving_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sigmap)
        sig = sigmap.signature_def["serving_default"]
        about = wrappers_pb2.StringValue()
        resp.metadata["accel_lib"].Unpack(about)
        return {"inputs": list(sig.inputs), "outputs": list(sig.outputs), **json.loads(about.value)}


def client_from_service(service, **kwargs):
    """A PredictionClient for a deployed Webservice: its cluster's address, its key, its route, and the cluster's
    certificate as the root to trust when it serves TLS."""
    uri = service.scoring_uri
    if uri is None:
        raise UserError(f"the cluster of service {service.name!r} is not running; "
                        f"ComputeTarget(ws, {service.compute_name!r}).restart() starts it again.")
    token = ""
    if service.auth_enabled:
        token = service.get_keys()[0]
    ssl = uri.startswith("https")
    if ssl:
        kwargs.setdefault("root_certificates", service.compute.ssl_certificate_pem)
    return PredictionClient(uri, use_ssl=ssl, access_token=token, service_name=service.name, **kwargs)


def triton_client(service, protocol="grpc"):
    """Triton's own client (``tritonclient.grpc`` or ``.http``), which speaks the Open Inference Protocol, set up for
    a deployed Webservice: its cluster's address and certificate. Returns (client, headers): pass ``headers`` with
    each call; they carry the service's key and the article's route header."""
    if protocol not in ("grpc", "http"):
        raise UserError(f"protocol must be 'grpc' or 'http', not {protocol!r}.")
    uri = service.scoring_uri if protocol == "grpc" else service.rest_uri
    if uri is None:
        raise UserError(f"the cluster of service {service.name!r} is not running; "
                        f"ComputeTarget(ws, {service.compute_name!r}).restart() starts it again.")
    hostport = uri.split("://", 1)[1].split("/", 1)[0]
    ssl = uri.startswith("https")
    ca = str(service.compute.ssl_certificate_file) if ssl else None
    headers = {ROUTE_HEADER: route(service.name)}
    if service.auth_enabled:
        headers["authorization"] = f"Bearer {service.get_keys()[0]}"
    if protocol == "grpc":
        import tritonclient.grpc as triton
        return triton.InferenceServerClient(hostport, ssl=ssl, root_certificates=ca), headers
    import tritonclient.http as triton
    return triton.InferenceServerClient(hostport, ssl=ssl, ssl_options={"ca_certs": ca} if ssl else None), headers


def load_labels(name="imagenet"):
    """Class names shipped with accel_lib, in class-index order: 'imagenet' (1000) or 'voc' (background + 20)."""
    if name == "voc":
        from .models.ssd import VOC_CLASSES
        return list(VOC_CLASSES)
    if name != "imagenet":
        raise UserError(f"no label set {name!r}; accel_lib ships 'imagenet' and 'voc'.")
    p = Path(__file__).parent / "data" / "imagenet_classes.txt"
    return [line.split(" ", 1)[1].strip() for line in p.read_text().splitlines()]
