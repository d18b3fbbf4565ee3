"""A replica's own Open Inference Protocol over HTTP, for a runner that calls its container directly (KServe's
predictor with ``PROTOCOL=v2``): the protocol's REST routes, each call's key checked and its body held to the
service's message limit before a byte of it is read, then translated by ``oip`` to the gRPC message the replica
answers on its own port, and back. The standard library's threaded HTTP server; no TensorFlow.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import keys, oip



class RestEndpoint:
    """The HTTP server of one replica: ``start()``, ``stop()`` (as a gRPC server's); ``port`` is where it listens."""

    def __init__(self, host, port, grpc_target, service, service_keys, limits):
        import grpc
        self.service, self.keys, self.limits = service, service_keys, limits
        self.channel = grpc.insecure_channel(grpc_target, options=[
            ("grpc.max_receive_message_length", limits.request_bytes),
            ("grpc.max_send_message_length", limits.message_bytes)])
        endpoint = self

        class Handler(_Handler):
            owner = endpoint
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def start(self):
        threading.Thread(target=self.httpd.serve_forever, name="oip-rest", daemon=True).start()
        return self

    def stop(self, grace=None) -> threading.Event:
        """Stop serving (the calls under way end with the process); returns an event that is set, as gRPC's."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.channel.close()
        done = threading.Event()
        done.set()
        return done

    def call(self, method, raw: bytes, authorization) -> bytes:
        """One gRPC call to the replica, the request's bytes as they are, its key passed on."""
        rpc = self.channel.unary_unary(method)                  # no serializers: bytes in, bytes out
        meta = [("authorization", authorization)] if authorization else None
        return rpc(raw, metadata=meta, timeout=self.limits.scoring_seconds + 10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = oip.SERVER_NAME
    owner: RestEndpoint

    def log_message(self, *args):             # the replica's log has one line a call from nowhere else: keep it quiet
        pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _send(self, status, body: bytes, content_type="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, doc, status=200):
        self._send(status, json.dumps(doc).encode())

    def _answer(self, answer):
        self._json(*answer)

    def _fail(self, code, message):
        self._answer(oip.error(code, message))

    def _route(self, method):
        import grpc
        path = self.path.split("?", 1)[0]
        for verb, pattern, what in oip.ROUTES:
            m = pattern.fullmatch(path)
            if m and verb == method:
                try:
                    if what not in oip.ABOUT_SERVER:
                        self._model(*m.groups())
                    return getattr(self, what)(*m.groups())
                except (oip.ProtocolError, grpc.RpcError) as e:
                    self.close_connection = method == "POST"      # its body may be unread: not reusable
                    if isinstance(e, grpc.RpcError):
                        return self._fail(e.code().name, e.details() or str(e.code()))
                    return self._fail(e.code, e.message)
        if any(p.fullmatch(path) for _, p, _ in oip.ROUTES):
            return self._fail("UNIMPLEMENTED", f"{method} is not served on {path}.")
        self._fail("NOT_FOUND", f"no route {path}; the Open Inference Protocol's are {oip.ROUTES_IN_WORDS} (here "
                                f"<model> is {self.owner.service}).")

    def _model(self, name, version):
        """The key, then the model's name and version, before anything is read."""
        o = self.owner
        if o.keys and not keys.ok(self.headers.get("Authorization"), o.keys):
            raise oip.ProtocolError("UNAUTHENTICATED", keys.refusal("header"))
        if name != o.service:
            raise oip.ProtocolError("NOT_FOUND", f"this replica serves model {o.service!r}, not {name!r}.")
        oip.check_version(o.service, version)

    def _serving(self) -> bool:
        from grpc_health.v1 import health_pb2
        raw = self.owner.call("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString(), None)
        return health_pb2.HealthCheckResponse.FromString(raw).status == health_pb2.HealthCheckResponse.SERVING

    # -- the routes -----------------------------------------------------------------------------
    def live(self):
        self._answer(oip.live())

    def ready(self):
        self._answer(oip.ready(self._serving()))

    def server(self):
        self._answer(oip.server())

    def metadata(self, name, version):
        from .protos import inference_pb2
        raw = self.owner.call(oip.MODEL_METADATA, inference_pb2.ModelMetadataRequest(name=name).SerializeToString(),
                              self.headers.get("Authorization"))
        self._json(oip.model_metadata_json(raw))

    def model_ready(self, name, version):
        self._answer(oip.model_ready(name, self._serving()))

    def infer(self, name, version):
        o = self.owner
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise oip.ProtocolError("INVALID_ARGUMENT", "send the body with a Content-Length, not chunked.")
        try:
            length = int(self.headers.get("Content-Length", "0"))
            header = self.headers.get(oip.HEADER_LENGTH)
            header_length = None if header is None else int(header)
        except ValueError:
            raise oip.ProtocolError("INVALID_ARGUMENT", f"Content-Length and {oip.HEADER_LENGTH} must be whole "
                                                        "numbers.") from None
        if not 0 <= length <= o.limits.message_bytes:
            raise oip.ProtocolError("RESOURCE_EXHAUSTED", f"the body has {length:,} bytes; at most "
                                                          f"{o.limits.message_bytes:,} per request (max_message_mb).")
        body = self.rfile.read(length)
        raw, how = oip.rest_infer_request(body, header_length, o.service, o.limits.max_images, o.limits.request_bytes)
        del body
        reply, head = oip.rest_infer_reply(o.call(oip.INFER, raw, self.headers.get("Authorization")), how)
        if head is None:
            self._send(200, reply)
        else:
            self._send(200, reply, "application/octet-stream", [(oip.HEADER_LENGTH, str(head))])
