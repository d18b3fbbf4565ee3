"""The cluster's front end (the simulated AKS ingress) and the process that hosts it with the supervisor.

One process per cluster: ``python -m accel_lib.fpga.frontend --cluster-dir DIR`` (``command()`` builds it). It
listens on 127.0.0.1 with a gRPC port and a REST port (TLS on both when the cluster has a certificate), routes each
call to a service by the ``x-ms-aml-grpc-service-route: /api/v1/service/<name>`` header (else by
``model_spec.name``, else to the only service), checks the service's keys (``authorization: Bearer <key>``, in
constant time), balances round-robin over the service's healthy replicas and retries a call that a replica failed
with UNAVAILABLE on another one. Replicas are reached on Unix sockets only (``cluster.replica_sockets``).

Checks come before work. A gRPC call's route, key and service are checked from its metadata before its message is
read (the handlers take the request as a stream, so nothing is read until they ask); the listener's own receive
limit is the largest service limit; a REST body is read in chunks against its service's limit, with a
Content-Length or without, and its JSON is parsed (and the reply encoded) in a small process pool, one request of a
service at a time, so that a service's huge or deep body never holds the event loop that every service shares
(bodies and replies under ``INLINE_BYTES`` are handled on the loop: the pool's round trip costs more).
Connections: at most ``MAX_CONNECTIONS`` per listener, TLS handshakes and a request's headers within
``HEADER_SECONDS``, idle connections closed after ``IDLE_SECONDS``, at most ``MAX_STREAMS`` calls per gRPC
connection.

Why asyncio (grpc.aio + aiohttp's low-level server): one event loop holds thousands of waiting calls without a
thread each, the listeners and the supervisor share the routing table without locks, and gRPC calls are forwarded
as the bytes that came in (no decoding, no re-encoding) unless a call carries no route header. The process stops
when the cluster's spec file disappears or on SIGTERM, and stops its replicas first.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from . import cluster, oip
from .server import key_ok
from .supervisor import ErrorLog, Supervisor

SERVICE = "/tensorflow.serving.PredictionService/"
PREDICT, METADATA = SERVICE + "Predict", SERVICE + "GetModelMetadata"
OIP = "/inference.GRPCInferenceService/"            # the Open Inference Protocol (fpga.oip)
INFER, MODEL_METADATA, MODEL_READY = OIP + "ModelInfer", OIP + "ModelMetadata", OIP + "ModelReady"
SERVER_LIVE, SERVER_READY, SERVER_METADATA = OIP + "ServerLive", OIP + "ServerReady", OIP + "ServerMetadata"
FORWARDED = (PREDICT, METADATA, INFER, MODEL_METADATA)      # sent on to a replica as the bytes that came
ANSWERED = (MODEL_READY, SERVER_LIVE, SERVER_READY, SERVER_METADATA)    # the front end answers them itself
CLUSTER_WIDE = (SERVER_LIVE, SERVER_READY, SERVER_METADATA)      # about the cluster, not a service: no key
MAX_CONNECTIONS = 256           # per listener
MAX_STREAMS = 100               # concurrent calls on one gRPC connection
MAX_CALLS = 1024                # concurrent gRPC calls in all
HEADER_SECONDS = 10.0           # a TLS handshake, or a request's headers, must arrive within this
IDLE_SECONDS = 60.0             # a connection with nothing to do is closed after this
REST_WORKERS = 2                # processes that parse large REST bodies and encode large replies
INLINE_BYTES = 256 << 10        # a body or reply this small is parsed or encoded on the loop (well under 1 ms):
                                # the pool's round trip would cost more than the work
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "INTERNAL": 500}


def _log(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}", flush=True)


CallError = oip.ProtocolError     # a call the front end answers itself: a gRPC status code name and a message


class Router:
    """Routing, keys, limits, balancing and retries, shared by the gRPC and REST listeners."""

    def __init__(self, sup: Supervisor):
        self.sup = sup
        self._turn = itertools.count()

    def pick_service(self, route_header, model_name) -> cluster.ServiceSpec:
        """The service a call is for; NOT_FOUND says no more than the caller told (no list of the services)."""
        spec = self.sup.spec
        name = cluster.service_from_route(route_header)
        if name is None and model_name and spec.service(model_name):
            name = model_name
        if name is None:
            if len(spec.services) == 1:
                return spec.services[0]
            raise CallError("NOT_FOUND", f"no route: send the header '{cluster.ROUTE_HEADER}: "
                                         f"{cluster.ROUTE_PREFIX}<service>'.")
        svc = spec.service(name)
        if svc is None:
            raise CallError("NOT_FOUND", f"no service {name!r} on this cluster.")
        return svc

    def all_ready(self) -> bool:
        """Whether every service of the cluster has a replica that serves (the protocol's server readiness)."""
        return all(self.sup.ready(s.name) for s in self.sup.spec.services)

    @staticmethod
    def check_key(svc, authorization):
        if svc.keys and not key_ok(authorization or "", svc.keys):
            raise CallError("UNAUTHENTICATED", "missing or wrong key: send 'authorization: Bearer <key>' with a key "
                                               "from service.get_keys().")

    @staticmethod
    def check_size(svc, nbytes):
        limit = svc.limits.message_bytes
        if nbytes > limit:
            raise CallError("RESOURCE_EXHAUSTED", f"the request is {nbytes:,} bytes; service {svc.name!r} takes at "
                                                  f"most {limit:,} (max_message_mb={svc.limits.max_message_mb:g}).")

    async def forward(self, svc, method, request: bytes, deadline):
        """Send the request's bytes to a healthy replica; on UNAVAILABLE try the next one. Returns the reply's bytes."""
        import grpc
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
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise CallError("DEADLINE_EXCEEDED", "the client's deadline passed before a replica answered.")
            call = self.sup.channel(r.socket).unary_unary(method)
            try:
                return await call(request, timeout=left)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise CallError(e.code().name, e.details()) from None
                r.not_ready()
                last = e.details()


# -- gRPC --------------------------------------------------------------------------------------------
def _model_name(method, request):
    """The service a request without a route header names (the only case where the request is decoded): TF
    Serving's model_spec.name, the Open Inference Protocol's model name."""
    from google.protobuf.message import DecodeError

    from .protos import inference_pb2, serving_pb2
    cls, field = {PREDICT: (serving_pb2.PredictRequest, "model_spec"),
                  METADATA: (serving_pb2.GetModelMetadataRequest, "model_spec"),
                  INFER: (inference_pb2.ModelInferRequest, "model_name"),
                  MODEL_METADATA: (inference_pb2.ModelMetadataRequest, "name"),
                  MODEL_READY: (inference_pb2.ModelReadyRequest, "name")}[method]
    try:
        value = getattr(cls.FromString(request), field)
    except DecodeError:
        return ""
    return value if isinstance(value, str) else value.name


def answer(router, method, svc=None, request=b"") -> bytes:
    """The front end's own answer to an Open Inference Protocol health or metadata call (``svc`` and the request
    for ModelReady)."""
    from .protos import inference_pb2
    if method == MODEL_READY:
        check_version(svc, inference_pb2.ModelReadyRequest.FromString(request).version)
        return inference_pb2.ModelReadyResponse(ready=bool(router.sup.ready(svc.name))).SerializeToString()
    if method == SERVER_LIVE:
        return inference_pb2.ServerLiveResponse(live=True).SerializeToString()
    if method == SERVER_READY:
        return inference_pb2.ServerReadyResponse(ready=router.all_ready()).SerializeToString()
    return inference_pb2.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION,
                                                extensions=oip.EXTENSIONS).SerializeToString()


def check_version(svc, version):
    """NOT_FOUND unless ``version`` is empty or the one version every service has."""
    if version not in (None, "", oip.MODEL_VERSION):
        raise CallError("NOT_FOUND", f"service {svc.name!r} has version {oip.MODEL_VERSION} only, not {version!r}.")


def grpc_handler(router: Router):
    """The generic handler of every method (TF Serving's and the Open Inference Protocol's). The request comes as
    a stream: nothing is read from it until route, key and service are checked from the metadata (when the call
    names its service)."""
    import grpc

    async def call(method, request_iterator, context):
        md = dict(context.invocation_metadata() or ())
        try:
            header = md.get(cluster.ROUTE_HEADER)
            svc = None
            if method in CLUSTER_WIDE:
                async for _ in request_iterator:
                    pass
                return answer(router, method, None)
            if header is not None:
                svc = router.pick_service(header, None)
                router.check_key(svc, md.get("authorization"))
            request = None
            async for message in request_iterator:
                if request is not None:
                    raise CallError("INVALID_ARGUMENT", "one request message per call.")
                request = message
            if request is None:
                raise CallError("INVALID_ARGUMENT", "the call carried no request message.")
            if svc is None:
                svc = router.pick_service(None, _model_name(method, request))
                router.check_key(svc, md.get("authorization"))
            router.check_size(svc, len(request))
            if method in ANSWERED:
                return answer(router, method, svc, request)
            left = context.time_remaining()
            return await router.forward(svc, method, request, None if left is None else time.monotonic() + left)
        except CallError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method not in FORWARDED + ANSWERED:
                return None
            method = details.method

            async def behaviour(request_iterator, context):
                return await call(method, request_iterator, context)
            return grpc.stream_unary_rpc_method_handler(behaviour)

    return Handler()


class GrpcListener:
    """The gRPC server on one port; rebuilt on the same port when the largest service limit changes (its receive
    limit must follow it)."""

    def __init__(self, router, host, port, credentials=None):
        self.router, self.host, self.port, self.credentials = router, host, port, credentials
        self.server, self.limit = None, None

    def _options(self, limit):
        return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 1 << 30),
                ("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", MAX_STREAMS),
                ("grpc.max_connection_idle_ms", int(IDLE_SECONDS * 1000)),
                ("grpc.server_handshake_timeout_ms", int(HEADER_SECONDS * 1000)),
                ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS)]

    async def ensure(self, limit):
        """Listen with receive limit ``limit`` (bytes): start, or rebuild if it differs."""
        import grpc
        if self.server is not None and limit == self.limit:
            return
        if self.server is not None:
            await self.server.stop(grace=1)
        server = grpc.aio.server(options=self._options(limit), maximum_concurrent_rpcs=MAX_CALLS)
        server.add_generic_rpc_handlers((grpc_handler(self.router),))
        address = f"{self.host}:{self.port}"
        bound = (server.add_secure_port(address, self.credentials) if self.credentials
                 else server.add_insecure_port(address))
        if not bound:
            raise OSError(f"could not listen on {address}")
        await server.start()
        self.server, self.limit, self.port = server, limit, bound

    async def stop(self):
        if self.server is not None:
            await self.server.stop(grace=1)


# -- REST (TensorFlow Serving's REST API) -------------------------------------------------------------
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


def rest_predict_request(body: bytes, service: str, max_images: int) -> tuple:
    """A REST predict body -> (PredictRequest bytes, row format?, image count); runs in the REST process pool.
    Any malformed JSON (deep nesting and bad encodings too) is INVALID_ARGUMENT."""
    from . import tensors
    from .protos import serving_pb2, tensorflow_pb2
    try:
        doc = json.loads(body)
    except RecursionError:
        raise CallError("INVALID_ARGUMENT", "the body is not JSON we take: nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CallError("INVALID_ARGUMENT", f"the body is not JSON ({str(e)[:200]}).") from None
    images, rows = parse_rest_predict(doc, "images", max_images)
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


def _warm():
    from . import oip, tensors  # noqa: F401 - the pool's processes import what they parse with once, at start
    from .protos import inference_pb2, serving_pb2  # noqa: F401
    return True


class RestApi:
    """TensorFlow Serving's REST API and the Open Inference Protocol's (``/v2``) on aiohttp's low-level server: the
    routes, body limits and the pool."""

    _V2 = r"/v2/models/([^/]+)(?:/versions/([^/]+))?"
    ROUTES = [("GET", re.compile(r"/v1/models/([^/:]+)"), "status"),
              ("GET", re.compile(r"/v1/models/([^/:]+)/metadata"), "metadata"),
              ("POST", re.compile(r"/v1/models/([^/:]+):predict"), "predict"),
              ("GET", re.compile(r"/v2/health/live"), "v2_live"),
              ("GET", re.compile(r"/v2/health/ready"), "v2_ready"),
              ("GET", re.compile(r"/v2"), "v2_server"),
              ("GET", re.compile(_V2), "v2_metadata"),
              ("GET", re.compile(_V2 + "/ready"), "v2_model_ready"),
              ("POST", re.compile(_V2 + "/infer"), "v2_infer")]

    def __init__(self, router: Router):
        import concurrent.futures
        import multiprocessing
        self.router = router
        from . import host
        self.pool = concurrent.futures.ProcessPoolExecutor(REST_WORKERS, mp_context=multiprocessing.get_context(
            "spawn"), initializer=host.die_with_parent)       # the pool goes with the front end, killed or not
        self.parsing = {}                        # service name -> a semaphore: one body of a service at a time

    async def start(self):
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _warm) for _ in range(REST_WORKERS)))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def fail(code, message):
        from aiohttp import web
        return web.json_response({"error": message}, status=HTTP_STATUS.get(code, 500))

    async def handle(self, request):
        for method, pattern, what in self.ROUTES:
            m = pattern.fullmatch(request.path)
            if m and request.method == method:
                try:
                    return await getattr(self, what)(request, *m.groups())
                except CallError as e:
                    return self.fail(e.code, e.message)
        if any(p.fullmatch(request.path) for _, p, _ in self.ROUTES):
            return self.fail("UNIMPLEMENTED", f"{request.method} is not served on {request.path}.")
        return self.fail("NOT_FOUND", f"no route {request.path}; TF Serving's REST API is /v1/models/<service>"
                                      "[/metadata] and POST /v1/models/<service>:predict; the Open Inference "
                                      "Protocol's is /v2/health/{live,ready}, /v2/models/<service>[/ready] and "
                                      "POST /v2/models/<service>/infer.")

    def _service(self, request, name):
        svc = self.router.pick_service(cluster.route(name), None)
        self.router.check_key(svc, request.headers.get("Authorization"))
        return svc

    async def status(self, request, name):
        from aiohttp import web
        svc = self._service(request, name)
        ready = bool(self.router.sup.ready(svc.name))
        return web.json_response({"model_version_status": [{
            "version": "1", "state": "AVAILABLE" if ready else "LOADING",
            "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(self, request, name):
        from aiohttp import web
        from google.protobuf import json_format, wrappers_pb2

        from .protos import serving_pb2
        svc = self._service(request, name)
        req = serving_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = svc.name
        raw = await self.router.forward(svc, METADATA, req.SerializeToString(), time.monotonic() + 30)
        resp = serving_pb2.GetModelMetadataResponse.FromString(raw)
        sigmap = serving_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sigmap)
        about = wrappers_pb2.StringValue()
        resp.metadata["accel_lib"].Unpack(about)
        return web.json_response({"model_spec": {"name": svc.name, "signature_name": "", "version": "1"},
                                  "metadata": {"signature_def": json_format.MessageToDict(
                                      sigmap, preserving_proto_field_name=True),
                                               "accel_lib": json.loads(about.value)}})

    async def read_body(self, request, svc) -> bytes:
        """The body, read in chunks against the service's limit (a chunked body too): 413 past it."""
        self.router.check_size(svc, request.content_length or 0)
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            self.router.check_size(svc, size)
            chunks.append(chunk)

    async def predict(self, request, name):
        from aiohttp import web
        svc = self._service(request, name)
        body = await self.read_body(request, svc)
        raw_request, rows, n = await self.work(svc, len(body), rest_predict_request, body, svc.name,
                                               svc.limits.max_images)
        del body
        raw = await self.router.forward(svc, PREDICT, raw_request, time.monotonic() + 60)
        reply = await self.work(svc, len(raw), rest_predict_reply, raw, rows, n)
        return web.Response(body=reply, content_type="application/json")

    async def work(self, svc, size, fn, *args):
        """``fn(*args)`` (parsing a body or encoding a reply of ``size`` bytes): on the loop when it is small, else
        in the pool, one of the service's at a time, so that no service's large bodies hold the others up."""
        if size <= INLINE_BYTES:
            return fn(*args)
        gate = self.parsing.setdefault(svc.name, asyncio.Semaphore(1))
        async with gate:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


    # -- the Open Inference Protocol -------------------------------------------------------------
    async def v2_live(self, request):
        from aiohttp import web
        return web.json_response({"live": True})

    async def v2_ready(self, request):
        from aiohttp import web
        ready = self.router.all_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def v2_server(self, request):
        from aiohttp import web

        return web.json_response({"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION,
                                  "extensions": oip.EXTENSIONS})

    async def v2_model_ready(self, request, name, version):
        from aiohttp import web
        svc = self._service(request, name)
        check_version(svc, version)
        ready = bool(self.router.sup.ready(svc.name))
        return web.json_response({"name": svc.name, "ready": ready}, status=200 if ready else 400)

    async def v2_metadata(self, request, name, version):
        from aiohttp import web

        from .protos import inference_pb2
        svc = self._service(request, name)
        check_version(svc, version)
        req = inference_pb2.ModelMetadataRequest(name=svc.name).SerializeToString()
        raw = await self.router.forward(svc, MODEL_METADATA, req, time.monotonic() + 30)
        return web.json_response(oip.model_metadata_json(raw))

    async def v2_infer(self, request, name, version):
        from aiohttp import web

        svc = self._service(request, name)
        check_version(svc, version)
        header = request.headers.get(oip.HEADER_LENGTH)
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            raise CallError("INVALID_ARGUMENT", f"{oip.HEADER_LENGTH} must be a whole number, got {header!r}.") \
                from None
        body = await self.read_body(request, svc)
        raw_request, how = await self.work(svc, len(body), oip.rest_infer_request, body, header_length, svc.name,
                                           svc.limits.max_images)
        del body
        raw = await self.router.forward(svc, INFER, raw_request, time.monotonic() + 60)
        reply, length = await self.work(svc, len(raw), oip.rest_infer_reply, raw, how)
        if length is None:
            return web.Response(body=reply, content_type="application/json")
        return web.Response(body=reply, content_type="application/octet-stream",
                            headers={oip.HEADER_LENGTH: str(length)})


def rest_server(api: RestApi):
    """aiohttp's low-level server for ``api``, with the connection guard."""
    from aiohttp import web

    class Guarded(web.Server):
        """At most MAX_CONNECTIONS connections; one that has not sent a request's headers HEADER_SECONDS after it
        opened (or after its last reply) is closed; idle keep-alive connections close after IDLE_SECONDS."""

        def __init__(self):
            super().__init__(self.handle, keepalive_timeout=IDLE_SECONDS)
            self.timers = {}

        async def handle(self, request):
            proto = request.protocol
            timer = self.timers.pop(proto, None)
            if timer:
                timer.cancel()
            try:
                return await api.handle(request)
            finally:
                if request.transport is not None and not request.transport.is_closing():
                    self._arm(proto, request.transport)

        def _arm(self, proto, transport):
            self.timers[proto] = asyncio.get_running_loop().call_later(HEADER_SECONDS, self._expire, proto,
                                                                       transport)

        def _expire(self, proto, transport):
            self.timers.pop(proto, None)
            if not transport.is_closing():
                transport.abort()

        def connection_made(self, handler, transport):
            super().connection_made(handler, transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.abort()
                return
            self._arm(handler, transport)

        def connection_lost(self, handler, exc=None):
            timer = self.timers.pop(handler, None)
            if timer:
                timer.cancel()
            super().connection_lost(handler, exc)

    return Guarded()


class Acceptor:
    """Accepts the REST listener's connections one at a time. Out of file handles, it waits (0.1 s doubling to 2 s)
    and logs once per interval, where asyncio's own accept loop (Python 3.11) retries in bursts and logs each try."""

    def __init__(self, sock, factory, ssl_ctx, errors):
        self.sock, self.factory, self.ssl_ctx, self.errors = sock, factory, ssl_ctx, errors
        self.sock.setblocking(False)
        self.tasks = set()

    async def run(self):
        loop = asyncio.get_running_loop()
        pause = 0.1
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                self.errors("accepting a REST connection", e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.1
            task = loop.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn):
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self.factory, conn, ssl=self.ssl_ctx, ssl_handshake_timeout=HEADER_SECONDS if self.ssl_ctx else None)
        except Exception as e:  # noqa: BLE001 - a handshake that failed or timed out: that connection only
            conn.close()
            if not isinstance(e, (ConnectionError, asyncio.TimeoutError, OSError)):
                self.errors("a REST connection", e)

    def close(self):
        for t in list(self.tasks):
            t.cancel()
        self.sock.close()


# -- the process -------------------------------------------------------------------------------------
def _tls_files(cluster_dir):
    return Path(cluster_dir) / cluster.TLS_CERT_FILE, Path(cluster_dir) / cluster.TLS_KEY_FILE


def _more_file_handles():
    """Raise this process's open-file limit to its hard limit: every connection takes one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if os.environ.get("ACCEL_LIB_NOFILE"):                 # a smaller one, for the tests that run out of them
        want = int(os.environ["ACCEL_LIB_NOFILE"])
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


async def amain(args):
    import shutil
    import socket
    import ssl

    import grpc
    _more_file_handles()
    folder = Path(args.cluster_dir)
    spec = cluster.read(cluster.ClusterSpec, folder)
    socket_dir = cluster.make_socket_dir()
    sup = Supervisor(folder, spec, socket_dir)
    errors = ErrorLog(who="front end")
    router = Router(sup)
    api = RestApi(router)
    credentials = ssl_ctx = None
    if spec.tls:
        cert, key = _tls_files(folder)
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_ctx.load_cert_chain(cert, key)
    listener = GrpcListener(router, args.host, args.grpc_port, credentials)
    rest = None
    try:
        await sup.remove_containers(s.engine for s in spec.services if s.runtime == "container")  # left by a kill
        await sup.reconcile(spec)
        await listener.ensure(spec.largest_message())
        await api.start()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: errors("the event loop", ctx.get("exception")
                                                         or RuntimeError(ctx.get("message", "?"))))
        sock = socket.create_server((args.host, args.rest_port), backlog=128)
        rest_port = sock.getsockname()[1]
        rest = Acceptor(sock, rest_server(api), ssl_ctx, errors)
        accepting = loop.create_task(rest.run())
        cluster.write(cluster.Endpoints(pid=os.getpid(), host=args.host, grpc_port=listener.port,
                                        rest_port=rest_port, tls=spec.tls), folder)
        _log(f"front end of cluster {spec.name!r}: gRPC {args.host}:{listener.port}, REST {args.host}:{rest_port}"
             f"{' (TLS)' if spec.tls else ''}; pid {os.getpid()}")

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        prober = loop.create_task(sup.probe_forever())
        seen = cluster.spec_version(folder)
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
                try:
                    version = cluster.spec_version(folder)
                except OSError as e:
                    errors("reading the spec", e)
                    continue
                if version is None:
                    _log("the cluster's spec is gone: the cluster was deleted")
                    break
                if version == seen:
                    continue
                try:
                    new = cluster.read(cluster.ClusterSpec, folder)
                    await sup.reconcile(new)
                    await listener.ensure(new.largest_message())
                    seen = version
                    _log(f"services now: {[s.name for s in new.services]}")
                except Exception as e:  # noqa: BLE001 - a bad spec or a rebuild that failed: the services stay
                    errors("taking the new spec", e)
        finally:
            prober.cancel()
            accepting.cancel()
    finally:
        _log("stopping")
        await sup.stop_all()
        await listener.stop()
        if rest is not None:
            rest.close()
        api.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
        for f in (cluster.ENDPOINTS_FILE, cluster.STATUS_FILE):
            (folder / f).unlink(missing_ok=True)


def command(python, cluster_dir, host="127.0.0.1", grpc_port=0, rest_port=0):
    """The cluster process's command line."""
    return [python, "-m", "accel_lib.fpga.frontend", "--cluster-dir", str(cluster_dir), "--host", host,
            "--grpc-port", str(grpc_port), "--rest-port", str(rest_port)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cluster-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--rest-port", type=int, default=0)
    asyncio.run(amain(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
