"""The front end's ingress: the gRPC listener (one generic handler for TF Serving's and the Open Inference
Protocol's methods, the request read as a stream only once route, key and service are checked) and the REST
listener (aiohttp's low-level server behind an accept loop of our own), with the limits every connection meets:
at most ``MAX_CONNECTIONS`` per listener from its first byte, TLS handshakes and a request's headers within
``HEADER_SECONDS``, idle connections closed after ``IDLE_SECONDS``, at most ``MAX_STREAMS`` calls per gRPC
connection, and large REST bodies parsed in a small process pool, one request of a service at a time."""
from __future__ import annotations

import asyncio
import re
import time

from . import specs
from ..replica import logtime, oip, tfserving
from .routing import (ANSWERED, CLUSTER_WIDE, FORWARDED, INFER, METADATA, MODEL_METADATA, PREDICT, CallError, Router,
                      answer, model_name)

MAX_CONNECTIONS = 256           # per listener
MAX_STREAMS = 100               # concurrent calls on one gRPC connection
MAX_CALLS = 1024                # concurrent gRPC calls in all
HEADER_SECONDS = 10.0           # a TLS handshake, or a request's headers, must arrive within this
IDLE_SECONDS = 60.0             # a connection with nothing to do is closed after this
REST_WORKERS = 2                # processes that parse large REST bodies and encode large replies
INLINE_BYTES = 256 << 10        # a body or reply this small is parsed or encoded on the loop (well under 1 ms):
                                # the pool's round trip would cost more than the work


def log(msg):
    """One line of the cluster's log, timestamped."""
    print(logtime.stamped(msg), flush=True)


def grpc_handler(router: Router):
    """The generic handler of every method (TF Serving's and the Open Inference Protocol's). The request comes as
    a stream: nothing is read from it until route, key and service are checked from the metadata (when the call
    names its service)."""
    import grpc

    async def call(method, request_iterator, context):
        md = dict(context.invocation_metadata() or ())
        try:
            header = md.get(specs.ROUTE_HEADER)
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
                svc = router.pick_service(None, model_name(method, request))
                router.check_key(svc, md.get("authorization"))
            router.check_size(svc, len(request))
            if method in ANSWERED:
                return answer(router, method, svc, request)
            left = context.time_remaining()
            trailers = []
            reply = await router.forward(svc, method, request, None if left is None else time.monotonic() + left,
                                         trailers)
            context.set_trailing_metadata(trailers)
            return reply
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


# -- REST ---------------------------------------------------------------------------------------------
def _warm():
    from ..replica import oip, tensors, tfserving  # noqa: F401 - what the pool parses with, imported once at start
    from ..replica.protos import inference_pb2, serving_pb2  # noqa: F401
    return True


class RestApi:
    """TensorFlow Serving's REST API and the Open Inference Protocol's (``/v2``) on aiohttp's low-level server: the
    routes, body limits and the pool."""

    ROUTES = [("GET", re.compile(r"/v1/models/([^/:]+)"), "status"),
              ("GET", re.compile(r"/v1/models/([^/:]+)/metadata"), "metadata"),
              ("POST", re.compile(r"/v1/models/([^/:]+):predict"), "predict"),
              *((method, path, "v2_" + what) for method, path, what in oip.ROUTES)]

    def __init__(self, router: Router):
        import concurrent.futures
        import multiprocessing
        self.router = router
        from ..device import resources
        self.pool = concurrent.futures.ProcessPoolExecutor(REST_WORKERS, mp_context=multiprocessing.get_context(
            "spawn"), initializer=resources.die_with_parent)       # the pool goes with the front end, killed or not
        self.parsing = {}                        # service name -> a semaphore: one body of a service at a time

    async def start(self):
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _warm) for _ in range(REST_WORKERS)))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def reply(answer):
        from aiohttp import web
        body, status = answer
        return web.json_response(body, status=status)

    def fail(self, code, message):
        return self.reply(oip.error(code, message))

    async def handle(self, request):
        for method, pattern, what in self.ROUTES:
            m = pattern.fullmatch(request.path)
            if m and request.method == method:
                try:
                    return await getattr(self, what)(request, *m.groups())
                except CallError as e:
                    return self.fail(e.code, e.message)
                except Exception as e:  # noqa: BLE001 - a bug of ours: still the protocol's JSON error object
                    log(f"REST {request.method} {request.path}: {type(e).__name__}: {e}")
                    return self.fail("INTERNAL", f"the front end failed on this request ({type(e).__name__}); "
                                                 "its log says more.")
        if any(p.fullmatch(request.path) for _, p, _ in self.ROUTES):
            return self.fail("UNIMPLEMENTED", f"{request.method} is not served on {request.path}.")
        return self.fail("NOT_FOUND", f"no route {request.path}; TF Serving's REST API is /v1/models/<service>"
                                      f"[/metadata] and POST /v1/models/<service>:predict; the Open Inference "
                                      f"Protocol's is {oip.ROUTES_IN_WORDS}.")

    def _service(self, request, name):
        svc = self.router.pick_service(specs.route(name), None)
        self.router.check_key(svc, request.headers.get("Authorization"))
        return svc

    async def status(self, request, name):
        svc = self._service(request, name)
        return self.reply((tfserving.rest_status(self.router.sup.ready(svc.name)), 200))

    async def metadata(self, request, name):
        svc = self._service(request, name)
        raw = await self.router.forward(svc, METADATA, tfserving.metadata_request(svc.name))
        return self.reply((tfserving.rest_metadata(svc.name, raw), 200))

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
        lim = svc.config.limits
        raw_request, rows, n = await self.work(svc, len(body), tfserving.rest_predict_request, body, svc.name,
                                               lim.max_images, lim.request_bytes)
        del body
        trailers = []
        raw = await self.router.forward(svc, PREDICT, raw_request, trailers=trailers)
        reply = await self.work(svc, len(raw), tfserving.rest_predict_reply, raw, rows, n)
        return web.Response(body=reply, content_type="application/json", headers=dict(trailers))

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
        return self.reply(oip.live())

    async def v2_ready(self, request):
        return self.reply(oip.ready(self.router.all_ready()))

    async def v2_server(self, request):
        return self.reply(oip.server())

    async def v2_model_ready(self, request, name, version):
        svc = self._service(request, name)
        oip.check_version(svc.name, version)
        return self.reply(oip.model_ready(svc.name, self.router.sup.ready(svc.name)))

    async def v2_metadata(self, request, name, version):
        from aiohttp import web

        from ..replica.protos import inference_pb2
        svc = self._service(request, name)
        oip.check_version(svc.name, version)
        req = inference_pb2.ModelMetadataRequest(name=svc.name).SerializeToString()
        raw = await self.router.forward(svc, MODEL_METADATA, req)
        return web.json_response(oip.model_metadata_json(raw))

    async def v2_infer(self, request, name, version):
        from aiohttp import web

        svc = self._service(request, name)
        oip.check_version(svc.name, version)
        header = request.headers.get(oip.HEADER_LENGTH)
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            raise CallError("INVALID_ARGUMENT", f"{oip.HEADER_LENGTH} must be a whole number, got {header!r}.") \
                from None
        body = await self.read_body(request, svc)
        lim = svc.config.limits
        raw_request, how = await self.work(svc, len(body), oip.rest_infer_request, body, header_length, svc.name,
                                           lim.max_images, lim.request_bytes)
        del body
        trailers = []
        raw = await self.router.forward(svc, INFER, raw_request, trailers=trailers)
        reply, length = await self.work(svc, len(raw), oip.rest_infer_reply, raw, how)
        if length is None:
            return web.Response(body=reply, content_type="application/json", headers=dict(trailers))
        return web.Response(body=reply, content_type="application/octet-stream",
                            headers={oip.HEADER_LENGTH: str(length), **dict(trailers)})


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
    and logs once per interval, where asyncio's own accept loop (Python 3.11) retries in bursts and logs each try.
    Every connection counts against MAX_CONNECTIONS from its first byte: one still in its TLS handshake too."""

    def __init__(self, sock, factory, ssl_ctx, errors):
        self.sock, self.factory, self.ssl_ctx, self.errors = sock, factory, ssl_ctx, errors
        self.sock.setblocking(False)
        self.tasks = set()
        self.open = set()             # accepted sockets not yet closed (a closed socket's fileno is -1)

    def _room(self) -> bool:
        self.open = {c for c in self.open if c.fileno() != -1}
        return len(self.open) < MAX_CONNECTIONS

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
            if not self._room():
                conn.close()
                self.errors("accepting a REST connection", ConnectionError(
                    f"{MAX_CONNECTIONS} connections are open (TLS handshakes included): refused"))
                continue
            self.open.add(conn)
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
