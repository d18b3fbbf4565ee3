"""The front end's routing: the methods it serves, which service a call is for (the route header, else the model
the request names, else the only service), its keys and size, balancing over the service's healthy replicas with
a retry on UNAVAILABLE, and the Open Inference Protocol calls the front end answers itself."""
from __future__ import annotations

import itertools
import time

from . import specs
from ..replica import keys, oip
from ..replica.oip import INFER, MODEL_METADATA, MODEL_READY, SERVER_LIVE, SERVER_METADATA, SERVER_READY  # noqa: F401
from .supervisor import Supervisor

SERVICE = "/tensorflow.serving.PredictionService/"
PREDICT, METADATA = SERVICE + "Predict", SERVICE + "GetModelMetadata"
FORWARDED = (PREDICT, METADATA, INFER, MODEL_METADATA)      # sent on to a replica as the bytes that came
ANSWERED = (MODEL_READY, SERVER_LIVE, SERVER_READY, SERVER_METADATA)    # the front end answers them itself
CLUSTER_WIDE = (SERVER_LIVE, SERVER_READY, SERVER_METADATA)      # about the cluster, not a service: no key

CallError = oip.ProtocolError     # a call the front end answers itself: a gRPC status code name and a message


class Router:
    """Routing, keys, limits, balancing and retries, shared by the gRPC and REST listeners."""

    def __init__(self, sup: Supervisor):
        self.sup = sup
        self._turn = itertools.count()

    def pick_service(self, route_header, model_name) -> specs.ServiceSpec:
        """The service a call is for: the route header's, else the model the request names, else (no model named:
        empty or ``specs.DEFAULT_MODEL``) the cluster's only service. A model that no service has is NOT_FOUND,
        whatever the number of services; NOT_FOUND says no more than the caller told (no list of the services)."""
        spec = self.sup.spec
        name = specs.service_from_route(route_header)
        if name is None and model_name and model_name != specs.DEFAULT_MODEL:
            name = model_name
        if name is None:
            if len(spec.services) == 1:
                return spec.services[0]
            raise CallError("NOT_FOUND", f"no route: send the header '{specs.ROUTE_HEADER}: "
                                         f"{specs.ROUTE_PREFIX}<service>'.")
        svc = spec.service(name)
        if svc is None:
            raise CallError("NOT_FOUND", f"no service {name!r} on this cluster.")
        return svc

    def all_ready(self) -> bool:
        """Whether every service of the cluster has a replica that serves (the protocol's server readiness)."""
        return all(self.sup.ready(s.name) for s in self.sup.spec.services)

    @staticmethod
    def check_key(svc, authorization):
        if svc.keys and not keys.ok(authorization or "", svc.keys):
            raise CallError("UNAUTHENTICATED", keys.refusal())

    @staticmethod
    def check_size(svc, nbytes):
        limit = svc.config.limits.message_bytes
        if nbytes > limit:
            raise CallError("RESOURCE_EXHAUSTED", f"the request is {nbytes:,} bytes; service {svc.name!r} takes at "
                                                  f"most {limit:,} (max_message_mb={svc.config.limits.max_message_mb:g}).")

    async def forward(self, svc, method, request: bytes, deadline=None, trailers=None):
        """Send the request's bytes to a healthy replica; on UNAVAILABLE try the next one, until the client's
        ``deadline`` (monotonic) or the service's scoring_timeout_ms, whichever comes first. Returns the reply;
        what the replica's trailing metadata passes on (``trailers.PASSED_ON``) is added to ``trailers``, a list."""
        import grpc

        from ..replica.trailers import PASSED_ON
        limits = svc.config.limits
        own = time.monotonic() + limits.scoring_seconds
        late = (f"service {svc.name!r} did not answer within its scoring_timeout_ms ({limits.scoring_timeout_ms} ms)"
                if deadline is None or own < deadline else "the client's deadline passed before a replica answered")
        deadline = own if deadline is None else min(deadline, own)
        tried = set()
        last = None
        while True:
            ready = [r for r in self.sup.ready(svc.name) if id(r) not in tried]
            if not ready:
                if last is not None:
                    raise CallError("UNAVAILABLE", f"every replica of {svc.name!r} failed the call: {last}")
                states = self.sup.states(svc.name)
                raise CallError("UNAVAILABLE", f"service {svc.name!r} has no ready replica now (replicas: {states}); "
                                               "retry shortly.")
            r = ready[next(self._turn) % len(ready)]
            tried.add(id(r))
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallError("DEADLINE_EXCEEDED", late + ".")
            call = self.sup.channel(r.socket).unary_unary(method)(request, timeout=left)
            try:
                reply = await call
                if trailers is not None:
                    trailers += [(k, v) for k, v in (await call.trailing_metadata() or ()) if k in PASSED_ON]
                return reply
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise CallError("DEADLINE_EXCEEDED", late + ".") from None
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise CallError(e.code().name, e.details()) from None
                r.not_ready()
                last = e.details()


def model_name(method, request):
    """The service a request without a route header names: TF Serving's model_spec.name, the Open Inference
    Protocol's model name. Only that field is decoded (``wire.only``), never the request's values."""
    from google.protobuf.message import DecodeError

    from ..replica import wire
    from ..replica.protos import inference_pb2, serving_pb2
    cls, field = {PREDICT: (serving_pb2.PredictRequest, "model_spec"),
                  METADATA: (serving_pb2.GetModelMetadataRequest, "model_spec"),
                  INFER: (inference_pb2.ModelInferRequest, "model_name"),
                  MODEL_METADATA: (inference_pb2.ModelMetadataRequest, "name"),
                  MODEL_READY: (inference_pb2.ModelReadyRequest, "name")}[method]
    try:
        value = getattr(cls.FromString(wire.only(request, cls.DESCRIPTOR, field)), field)
    except wire.WireError as e:
        raise CallError(e.code, str(e)) from None
    except DecodeError:
        return ""
    return value if isinstance(value, str) else value.name


def answer(router, method, svc=None, request=b"") -> bytes:
    """The front end's own answer to an Open Inference Protocol health or metadata call (``svc`` and the request
    for ModelReady)."""
    from ..replica.protos import inference_pb2
    if method == MODEL_READY:
        oip.check_version(svc.name, inference_pb2.ModelReadyRequest.FromString(request).version)
        return inference_pb2.ModelReadyResponse(ready=bool(router.sup.ready(svc.name))).SerializeToString()
    if method == SERVER_LIVE:
        return inference_pb2.ServerLiveResponse(live=True).SerializeToString()
    if method == SERVER_READY:
        return inference_pb2.ServerReadyResponse(ready=router.all_ready()).SerializeToString()
    return oip.server_metadata_message().SerializeToString()
