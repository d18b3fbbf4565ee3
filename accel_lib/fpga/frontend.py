"""The cluster's front end (the simulated AKS ingress) and the process that hosts it with the supervisor.

One process per cluster: ``python -m accel_lib.fpga.frontend --cluster-dir DIR`` (``command()`` builds it). It listens on 127.0.0.1 with a gRPC port
and a REST port (TLS on both when the cluster has a certificate), routes each call to a service by the
``x-ms-aml-grpc-service-route: /api/v1/service/<name>`` header (else by ``model_spec.name``, else to the only
service), checks the service's keys (``authorization: Bearer <key>``), balances round-robin over the service's
healthy replicas and retries a call that a replica failed with UNAVAILABLE on another one.

Why asyncio (grpc.aio + aiohttp): one event loop holds thousands of waiting calls without a thread each, the gRPC
and REST servers and the supervisor share the routing table without locks, and gRPC calls are forwarded as the
bytes that came in (no decoding, no re-encoding) unless a request carries no route header.
The process stops when the cluster's spec file disappears or on SIGTERM, and stops its replicas first.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import cluster
from .supervisor import Supervisor

SERVICE = "/tensorflow.serving.PredictionService/"
PREDICT, METADATA = SERVICE + "Predict", SERVICE + "GetModelMetadata"
MB = 1024 * 1024
MAX_RECEIVE = 1 << 30           # the listener's own cap; each service's limit is checked per call
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501}


def _log(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}", flush=True)


class CallError(Exception):
    """A call the front end answers itself: a gRPC status code name and a message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class Router:
    """Routing, keys, limits, balancing and retries, shared by the gRPC and REST listeners."""

    def __init__(self, sup: Supervisor):
        self.sup = sup
        self._turn = itertools.count()

    def pick_service(self, route_header, model_name) -> cluster.ServiceSpec:
        spec = self.sup.spec
        name = cluster.service_from_route(route_header)
        if name is None and model_name and spec.service(model_name):
            name = model_name
        if name is None:
            if len(spec.services) == 1:
                return spec.services[0]
            raise CallError("NOT_FOUND", f"no route: send the header '{cluster.ROUTE_HEADER}: "
                                         f"{cluster.ROUTE_PREFIX}<service>' (services on this cluster: "
                                         f"{sorted(s.name for s in spec.services)}).")
        svc = spec.service(name)
        if svc is None:
            raise CallError("NOT_FOUND", f"no service {name!r} on cluster {spec.name!r} (services: "
                                         f"{sorted(s.name for s in spec.services)}).")
        return svc

    @staticmethod
    def check_key(svc, authorization):
        if not svc.keys:
            return
        token = authorization[len("Bearer "):] if authorization and authorization.startswith("Bearer ") else None
        if token not in svc.keys:
            raise CallError("UNAUTHENTICATED", "missing or wrong key: send 'authorization: Bearer <key>' with a key "
                                               "from service.get_keys().")

    @staticmethod
    def check_size(svc, nbytes):
        limit = int(svc.max_message_mb * MB)
        if nbytes > limit:
            raise CallError("RESOURCE_EXHAUSTED", f"the request is {nbytes:,} bytes; service {svc.name!r} takes at "
                                                  f"most {limit:,} (max_message_mb={svc.max_message_mb:g}).")

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
            call = self.sup.channel(r.port).unary_unary(method)
            try:
                return await call(request, timeout=left)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise CallError(e.code().name, e.details()) from None
                r.not_ready()
                last = e.details()


# -- gRPC --------------------------------------------------------------------------------------------
def _model_name(method, request):
    """model_spec.name from a request without a route header (the only case where the request is decoded)."""
    from google.protobuf.message import DecodeError

    from .protos import serving_pb2
    cls = serving_pb2.PredictRequest if method == PREDICT else serving_pb2.GetModelMetadataRequest
    try:
        return cls.FromString(request).model_spec.name
    except DecodeError:
        return ""


def grpc_handler(router: Router):
    import grpc

    async def call(method, request, context):
        md = dict(context.invocation_metadata() or ())
        try:
            header = md.get(cluster.ROUTE_HEADER)
            svc = router.pick_service(header, None if header else _model_name(method, request))
            router.check_key(svc, md.get("authorization"))
            router.check_size(svc, len(request))
            left = context.time_remaining()
            return await router.forward(svc, method, request, None if left is None else time.monotonic() + left)
        except CallError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method not in (PREDICT, METADATA):
                return None
            method = details.method

            async def behaviour(request, context):
                return await call(method, request, context)
            return grpc.unary_unary_rpc_method_handler(behaviour)

    return Handler()


# -- REST (TensorFlow Serving's REST API) -------------------------------------------------------------
def _b64(item, where):
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except ValueError:
            raise CallError("INVALID_ARGUMENT", f"{where}: 'b64' is not valid base64.") from None
    raise CallError("INVALID_ARGUMENT", f"{where} must be an object {{\"b64\": \"<base64 JPEG or PNG>\"}}.")


def parse_rest_predict(body, input_name):
    """TF Serving's REST request ('instances' rows or 'inputs' columns) -> (list of image bytes, row format?)."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise CallError("INVALID_ARGUMENT", "the body must be a JSON object with either 'instances' (rows) or "
                                            "'inputs' (columns), e.g. {\"instances\": [{\"b64\": \"...\"}]}.")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise CallError("INVALID_ARGUMENT", "'instances' must be a non-empty list.")
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
    return [_b64(c, f"inputs[{i}]") for i, c in enumerate(cols)], False


def rest_app(router: Router):
    from aiohttp import web

    from . import tensors
    from .protos import serving_pb2, tensorflow_pb2

    def fail(code, message):
        return web.json_response({"error": message}, status=HTTP_STATUS.get(code, 500))

    def service_for(request):
        svc = router.pick_service(cluster.route(request.match_info["name"]), None)
        router.check_key(svc, request.headers.get("Authorization"))
        return svc

    async def status(request):
        try:
            svc = service_for(request)
        except CallError as e:
            return fail(e.code, e.message)
        ready = bool(router.sup.ready(svc.name))
        return web.json_response({"model_version_status": [{
            "version": "1", "state": "AVAILABLE" if ready else "LOADING",
            "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(request):
        from google.protobuf import json_format, wrappers_pb2
        try:
            svc = service_for(request)
            req = serving_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            req.model_spec.name = svc.name
            raw = await router.forward(svc, METADATA, req.SerializeToString(), time.monotonic() + 30)
        except CallError as e:
            return fail(e.code, e.message)
        resp = serving_pb2.GetModelMetadataResponse.FromString(raw)
        sigmap = serving_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sigmap)
        about = wrappers_pb2.StringValue()
        resp.metadata["accel_lib"].Unpack(about)
        return web.json_response({"model_spec": {"name": svc.name, "signature_name": "", "version": "1"},
                                  "metadata": {"signature_def": json_format.MessageToDict(
                                      sigmap, preserving_proto_field_name=True),
                                               "accel_lib": json.loads(about.value)}})

    async def predict(request):
        try:
            svc = service_for(request)
            router.check_size(svc, request.content_length or 0)
            body = await request.read()
            router.check_size(svc, len(body))
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise CallError("INVALID_ARGUMENT", f"the body is not JSON ({e}).") from None
            images, rows = parse_rest_predict(doc, "images")
            req = serving_pb2.PredictRequest()
            req.model_spec.name = svc.name
            req.inputs["images"].CopyFrom(tensors.to_proto(images, tensorflow_pb2.TensorProto))
            raw = await router.forward(svc, PREDICT, req.SerializeToString(), time.monotonic() + 60)
        except CallError as e:
            return fail(e.code, e.message)
        outs = {k: tensors.from_proto(v).tolist() for k, v in serving_pb2.PredictResponse.FromString(raw).outputs.items()}
        if rows:
            n = len(images)
            preds = [next(iter(outs.values()))[i] if len(outs) == 1 else {k: v[i] for k, v in outs.items()}
                     for i in range(n)]
            return web.json_response({"predictions": preds})
        return web.json_response({"outputs": next(iter(outs.values())) if len(outs) == 1 else outs})

    app = web.Application(client_max_size=MAX_RECEIVE)
    app.router.add_get("/v1/models/{name}", status)
    app.router.add_get("/v1/models/{name}/metadata", metadata)
    app.router.add_post("/v1/models/{name:[^/:]+}:predict", predict)
    return app


# -- the process -------------------------------------------------------------------------------------
def _tls_files(cluster_dir):
    return Path(cluster_dir) / cluster.TLS_CERT_FILE, Path(cluster_dir) / cluster.TLS_KEY_FILE


async def amain(args):
    import grpc
    from aiohttp import web
    folder = Path(args.cluster_dir)
    spec = cluster.read(cluster.ClusterSpec, folder)
    sup = Supervisor(folder, spec)
    await sup.reconcile(spec)
    router = Router(sup)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_RECEIVE),
                                      ("grpc.max_send_message_length", MAX_RECEIVE), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc_handler(router),))
    ssl_ctx = None
    if spec.tls:
        import ssl
        cert, key = _tls_files(folder)
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        grpc_port = server.add_secure_port(f"{args.host}:{args.grpc_port}", creds)
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cert, key)
    else:
        grpc_port = server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    await server.start()
    runner = web.AppRunner(rest_app(router), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.rest_port, ssl_context=ssl_ctx)
    await site.start()
    rest_port = site._server.sockets[0].getsockname()[1]
    cluster.write(cluster.Endpoints(pid=os.getpid(), host=args.host, grpc_port=grpc_port, rest_port=rest_port,
                                    tls=spec.tls), folder)
    _log(f"front end of cluster {spec.name!r}: gRPC {args.host}:{grpc_port}, REST {args.host}:{rest_port}"
         f"{' (TLS)' if spec.tls else ''}; pid {os.getpid()}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    prober = loop.create_task(sup.probe_forever())
    spec_file = folder / cluster.SPEC_FILE
    seen = spec_file.stat().st_mtime_ns
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            try:
                mtime = spec_file.stat().st_mtime_ns
            except FileNotFoundError:
                _log("the cluster's spec is gone: the cluster was deleted")
                break
            if mtime != seen:
                seen = mtime
                try:
                    new = cluster.read(cluster.ClusterSpec, folder)
                except Exception as e:  # noqa: BLE001 - a bad spec is logged; the running services stay
                    _log(f"ignored an unreadable spec: {e}")
                    continue
                await sup.reconcile(new)
                _log(f"services now: {[s.name for s in new.services]}")
    finally:
        _log("stopping")
        prober.cancel()
        await sup.stop_all()
        await server.stop(grace=1)
        await runner.cleanup()
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
