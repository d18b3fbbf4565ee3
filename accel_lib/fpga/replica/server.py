"""One replica of a deployed service: a gRPC server holding one (simulated) FPGA loaded with one package.

Speaks TensorFlow Serving's PredictionService (Predict, GetModelMetadata), the Open Inference Protocol's
GRPCInferenceService (``oip``) and the standard gRPC health service, from the project's own compiled protocols
(``protos/``): a replica imports no TensorFlow.
Run from an image's build context: ``python -m fpga.replica.server --package package --socket PATH ...``; the command
line is built by ``command()`` and nowhere else, and its limit flags come from ``limits.ServiceLimits``.

Where it listens: in a local cluster, on a Unix socket in the cluster's private folder (only the front end can call
it), with the health service also on a socket of its own, answered by its own thread, so that scoring can never
delay a probe; in an image run by Docker or Kubernetes, on TCP (``--host``/``--port``), checking the keys itself
(``--keys-file``). Before it allocates, a request is held to the service's limits: its strings, its tensors'
filled-out values and its images' decoded size (``max_request_mb``). A replica exits on SIGTERM, when its parent
(the cluster's supervisor) is gone (``--exit-with-parent``), and with ``EXIT_LOAD_FAILED`` when its package cannot
load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

from . import keys, logtime, trailers
from .limits import ServiceLimits

EXIT_LOAD_FAILED = 3          # a replica's exit code when its package cannot load: Failed, never restarted
FLASH_SECONDS = 1.0           # the modeled time to flash a package onto the FPGA, unless the service says otherwise
MODULE = "fpga.replica.server"     # what ``python -m`` runs, from an image's build context
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService")


def command(python, svc=None, *, package="package", socket=None, health_socket=None, host="127.0.0.1", port=0,
            rest_port=None, fpga="node-0/fpga-0", threads=0, keys_file=None, exit_with_parent=False, check=False):
    """The replica's command line for service ``svc`` (a cluster's ``ServiceSpec``: its name, flash time and limits;
    None: a service "local" at the defaults), run with the image's build context as working
    directory and PYTHONPATH: on the Unix ``socket`` (and ``health_socket``) when given, else on TCP ``host``:``port``
    (and the Open Inference Protocol over HTTP on ``rest_port``)."""
    cmd = [python, "-m", MODULE, "--package", str(package)]
    if check:
        return cmd + ["--check"]
    name, flash, limits = ((svc.name, svc.config.flash_seconds, svc.config.limits) if svc is not None
                           else ("local", FLASH_SECONDS, ServiceLimits()))
    cmd += (["--socket", str(socket)] if socket else ["--host", host, "--port", str(port)])
    if rest_port is not None:
        cmd += ["--rest-port", str(rest_port)]
    if health_socket:
        cmd += ["--health-socket", str(health_socket)]
    cmd += ["--service", name, "--fpga", fpga, "--flash-seconds", str(flash), "--threads", str(threads),
            *limits.flags()]
    if keys_file:
        cmd += ["--keys-file", str(keys_file)]
    if exit_with_parent:
        cmd.append("--exit-with-parent")
    return cmd


def _log(msg):
    print(logtime.stamped(msg), flush=True)


class FpgaReplica:
    """The servicer: authenticates, validates and runs requests through the accelerator package."""

    def __init__(self, args, keys, health, on_load_failed):
        self.package_dir = args.package
        self.service = args.service
        self.fpga = args.fpga
        self.keys = [k for k in keys if k]
        self.flash_seconds = args.flash_seconds
        self.threads = args.threads
        self.limits = ServiceLimits.from_args(args)
        self.health = health
        self.on_load_failed = on_load_failed
        self.pkg = None
        self.error = None

    # -- loading the FPGA ---------------------------------------------------------------------
    def load(self):
        """Flash the FPGA with the package (modeled delay), then report SERVING."""
        from grpc_health.v1 import health_pb2

        from ..device.package import AcceleratorPackage
        try:
            _log(f"flashing {self.fpga} with {Path(self.package_dir).name} "
                 f"(modeled flash time {self.flash_seconds:.1f} s)")
            t0 = time.monotonic()
            pkg = AcceleratorPackage(self.package_dir, threads=self.threads, spinning=False,
                                     max_pixels=self.limits.max_pixels, max_decoded_bytes=self.limits.request_bytes)
            rest = self.flash_seconds - (time.monotonic() - t0)
            if rest > 0:
                time.sleep(rest)
            self.pkg = pkg
            m = pkg.manifest
            _log(f"loaded {m.source_model['name']}:{m.source_model['version']} on {self.fpga}: featurizer "
                 f"{m.model_class} in {pkg.numeric_format}; ready in {time.monotonic() - t0:.1f} s (measured); "
                 f"{self.threads or 'all'} CPU thread(s)")
            for s in HEALTH_SERVICES:
                for h in self.health:
                    h.set(s, health_pb2.HealthCheckResponse.SERVING)
        except Exception as e:  # noqa: BLE001 - reported through health and the log
            self.error = f"{type(e).__name__}: {e}"
            _log(f"loading failed: {self.error}")
            for s in HEALTH_SERVICES:
                for h in self.health:
                    h.set(s, health_pb2.HealthCheckResponse.NOT_SERVING)
            self.on_load_failed()

    # -- checks -------------------------------------------------------------------------------
    def _check_key(self, context):
        import grpc
        if self.keys and not keys.ok(dict(context.invocation_metadata()).get("authorization", ""), self.keys):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, keys.refusal("metadata"))

    def _check(self, context):
        import grpc
        self._check_key(context)
        if self.pkg is None:
            if self.error:
                context.abort(grpc.StatusCode.INTERNAL, f"the replica could not load its model: {self.error}")
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{self.fpga} is being flashed with the model; retry in a moment.")

    @staticmethod
    def _fail(context, code, msg):
        import grpc
        _log(f"{code}: {msg}")
        context.abort(getattr(grpc.StatusCode, code), msg)

    def _score(self, value, outputs, context, what):
        """Run ``value`` (a list of encoded images, or a float32 [N, H, W, 3] array) through the package; the
        errors a client can fix become their status codes. Returns {output name: array}."""
        from ..device.package import RequestError, RequestTooLarge
        t0 = time.perf_counter()
        pkg, lim, times = self.pkg, self.limits, {}
        try:
            if len(value) > lim.max_images:
                raise RequestError(f"the request holds {len(value)} images; at most {lim.max_images} per request. "
                                   "Split it into smaller batches.")
            if isinstance(value, list):
                if not value:
                    raise RequestError("the request holds no images.")
                result = pkg.run(value, outputs, times)
            else:
                result = pkg.run_arrays(value, outputs, times)
        except RequestTooLarge as e:
            self._fail(context, "RESOURCE_EXHAUSTED", str(e))
        except (RequestError, ValueError) as e:
            self._fail(context, "INVALID_ARGUMENT", str(e))
        device, sent = "", [(trailers.REPLICA_US, trailers.encode_stages(times))]
        if pkg.timing_report is not None:               # what the FPGA itself would take: modeled
            from ..device import timing
            us = timing.seconds(pkg.timing_report, len(value)) * 1e6
            sent.append((trailers.MODELED_DEVICE_US, f"{us:.1f}"))
            device = f"; device {us:.0f} µs (modeled, {pkg.timing_report['preset']})"
        context.set_trailing_metadata(sent)
        _log(f"{what} ok: {len(value)} image(s), {1000 * (time.perf_counter() - t0):.1f} ms (measured, host CPU)"
             + device)
        return result

    def _deadline(self, context):
        import grpc
        left = context.time_remaining()
        if left is not None and left <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed before scoring began.")

    # -- PredictionService --------------------------------------------------------------------
    def Predict(self, request, context):
        from . import tensors
        from .protos import serving_pb2, tensorflow_pb2
        self._check(context)
        self._deadline(context)
        pkg, lim = self.pkg, self.limits
        if len(request.inputs) != 1:
            self._fail(context, "INVALID_ARGUMENT", f"expected exactly one input ({pkg.input_name!r}), got "
                                                    f"{sorted(request.inputs)}.")
        name, proto = next(iter(request.inputs.items()))
        if name not in pkg.input_names():
            self._fail(context, "INVALID_ARGUMENT", f"unknown input {name!r}; this model's input is "
                                                    f"{pkg.input_name!r}.")
        rank = len(proto.tensor_shape.dim)           # judged on the wire, before a value is decoded or filled out
        if not (proto.dtype == tensors.DT_STRING or (proto.dtype == tensors.DT_FLOAT and rank == 4)):
            got = tensors.DTYPE_NAMES.get(proto.dtype, proto.dtype)
            self._fail(context, "INVALID_ARGUMENT", f"input {name!r} must be DT_STRING (encoded JPEG/PNG images) or "
                                                    f"DT_FLOAT [N, H, W, 3] (preprocessed), got {got} of rank {rank}.")
        try:
            value = tensors.from_proto(proto, max_bytes=lim.request_bytes, max_strings=lim.max_images)
        except tensors.TensorTooLarge as e:
            limit = {"max_bytes": "max_request_mb", "max_strings": "max_images"}[e.limit]
            self._fail(context, "RESOURCE_EXHAUSTED", f"{e} The service's limit is {limit}="
                                                      f"{getattr(lim, limit):g} (deploy_configuration).")
        except ValueError as e:
            self._fail(context, "INVALID_ARGUMENT", str(e))
        result = self._score(value, list(request.output_filter) or None, context, "Predict")
        resp = serving_pb2.PredictResponse()
        resp.model_spec.name = request.model_spec.name or self.service
        for k, v in result.items():
            resp.outputs[k].CopyFrom(tensors.to_proto(v, tensorflow_pb2.TensorProto))
        return resp

    # -- the Open Inference Protocol (GRPCInferenceService) ------------------------------------------
    def ModelInfer(self, request, context):
        from . import oip
        from .protos import inference_pb2
        self._check(context)
        self._deadline(context)
        self._version(request.model_version, context)
        try:
            value = oip.infer_input(request, self.pkg.input_names(), self.limits.max_images,
                                    self.limits.request_bytes)
        except oip.ProtocolError as e:
            self._fail(context, e.code, str(e))
        result = self._score(value, oip.requested_outputs(request), context, "ModelInfer")
        return oip.infer_response(inference_pb2.ModelInferResponse, request.model_name or self.service, request.id,
                                  result)

    def ModelMetadata(self, request, context):
        from . import oip
        from .protos import inference_pb2
        self._check(context)
        self._version(request.version, context)
        return oip.model_metadata(inference_pb2.ModelMetadataResponse, request.name or self.service,
                                  self.pkg.manifest)

    def ModelReady(self, request, context):
        from .protos import inference_pb2
        self._check_key(context)
        self._version(request.version, context)
        return inference_pb2.ModelReadyResponse(ready=self.pkg is not None)

    def ServerLive(self, request, context):
        from .protos import inference_pb2
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        from .protos import inference_pb2
        return inference_pb2.ServerReadyResponse(ready=self.pkg is not None)

    def ServerMetadata(self, request, context):
        from . import oip
        return oip.server_metadata_message()

    def _version(self, version, context):
        from . import oip
        try:
            oip.check_version(self.service, version)
        except oip.ProtocolError as e:
            self._fail(context, e.code, e.message)

    def GetModelMetadata(self, request, context):
        from google.protobuf import wrappers_pb2

        from . import tensors
        from .protos import serving_pb2, tensorflow_pb2
        self._check(context)
        if list(request.metadata_field) not in ([], ["signature_def"]):
            self._fail(context, "INVALID_ARGUMENT", "only metadata_field 'signature_def' is available.")
        m = self.pkg.manifest
        sig = tensorflow_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        sig.inputs[m.input.name].name = m.input.name
        sig.inputs[m.input.name].dtype = tensors.DT_STRING
        for o in m.served():
            info = sig.outputs[o.name]
            info.name = o.name
            info.dtype = tensors.DT_FLOAT
            for d in o.shape:
                info.tensor_shape.dim.add(size=d)
        sigmap = serving_pb2.SignatureDefMap()
        sigmap.signature_def["serving_default"].CopyFrom(sig)
        resp = serving_pb2.GetModelMetadataResponse()
        resp.model_spec.name = request.model_spec.name or self.service
        resp.metadata["signature_def"].Pack(sigmap)
        about = {"numeric_format": self.pkg.numeric_format, "featurizer": m.model_class, "fpga": self.fpga,
                 "source_model": m.source_model, "weights": m.weights, "labels": m.labels,
                 "postprocess": m.postprocess}
        resp.metadata["accel_lib"].Pack(wrappers_pb2.StringValue(value=json.dumps(about)))
        return resp


def serve(args, on_load_failed=lambda: None):
    """Start the gRPC server(s); return (servers, replica, where it listens)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    limits = ServiceLimits.from_args(args)
    opts = [("grpc.max_receive_message_length", limits.message_bytes),
            ("grpc.max_send_message_length", limits.request_bytes), ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=opts)
    healths = [health.HealthServicer()]
    servers = [server]
    if args.health_socket:                  # health on its own server and thread: scoring cannot hold a probe up
        probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
        healths.append(health.HealthServicer())
        health_pb2_grpc.add_HealthServicer_to_server(healths[-1], probe)
        if probe.add_insecure_port(f"unix:{args.health_socket}") == 0:
            raise SystemExit(f"could not listen on {args.health_socket}")
        servers.append(probe)
    for h in healths:
        for s in HEALTH_SERVICES:
            h.set(s, health_pb2.HealthCheckResponse.NOT_SERVING)
    replica = FpgaReplica(args, keys.read(args.keys_file) if args.keys_file else [], healths, on_load_failed)
    server.add_generic_rpc_handlers(_handlers(replica, limits))
    health_pb2_grpc.add_HealthServicer_to_server(healths[0], server)
    if args.socket:
        where = f"unix:{args.socket}"
        if server.add_insecure_port(where) == 0:
            raise SystemExit(f"could not listen on {args.socket}")
    else:
        port = server.add_insecure_port(f"{args.host}:{args.port}")
        if port == 0:
            raise SystemExit(f"could not bind {args.host}:{args.port}")
        where = f"{args.host}:{port}"
    for s in servers:
        s.start()
    if args.rest_port is not None and not args.socket:
        from .oip_rest import RestEndpoint
        rest = RestEndpoint(args.host, args.rest_port, f"127.0.0.1:{port}", args.service, replica.keys,
                            limits).start()
        servers.append(rest)
        where += f", HTTP {args.host}:{rest.port}"
    return servers, replica, where


def _handlers(replica, limits):
    """The replica's gRPC services, TF Serving's and the Open Inference Protocol's: each request is judged on the
    wire (its key, then its fields' counts and what it would decode to) before it is decoded."""
    import grpc
    from google.protobuf import message_factory
    from google.protobuf.message import DecodeError

    from . import oip, tensors, wire
    from .protos import inference_pb2, serving_pb2
    caps = {**tensors.wire_caps(limits.max_images), **oip.wire_caps(limits.max_images)}

    def handler(fn, method):
        request_cls = message_factory.GetMessageClass(method.input_type)

        def behaviour(raw, context):
            replica._check_key(context)
            try:
                wire.check(raw, method.input_type, caps, limits.request_bytes)
                request = request_cls.FromString(raw)
            except wire.WireError as e:
                replica._fail(context, e.code, str(e))
            except DecodeError as e:
                replica._fail(context, "INVALID_ARGUMENT", f"the request is not a {method.input_type.name}: {e}")
            return fn(request, context)
        return grpc.unary_unary_rpc_method_handler(
            behaviour, response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)

    return [grpc.method_handlers_generic_handler(service.full_name, {
                m.name: handler(getattr(replica, m.name), m) for m in service.methods})
            for mod in (serving_pb2, inference_pb2) for service in mod.DESCRIPTOR.services_by_name.values()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", required=True)
    p.add_argument("--socket", help="listen on this Unix socket (a local cluster); else on --host/--port")
    p.add_argument("--health-socket", help="answer gRPC health on this Unix socket too, from a thread of its own")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rest-port", type=int, help="answer the Open Inference Protocol over HTTP on this port too (TCP)")
    p.add_argument("--service", default="local")
    p.add_argument("--fpga", default="node-0/fpga-0")
    p.add_argument("--keys-file", help="check the keys in this file (one a line) on every call")
    p.add_argument("--flash-seconds", type=float, default=FLASH_SECONDS,
                   help="the modeled time to flash the FPGA before serving")
    ServiceLimits.add_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: the CPUs this process may use)")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started it is gone")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--check", action="store_true", help="load the package, score a generated image, exit")
    args = p.parse_args(argv)
    if args.check:
        return _check_package(args.package)
    stop = threading.Event()
    exit_code = [0]

    def load_failed():
        exit_code[0] = EXIT_LOAD_FAILED
        stop.set()

    parent = os.getppid()
    servers, replica, where = serve(args, load_failed)
    # the log is what get_logs() shows a learner: a cluster's replica listens on a unix socket, whose path (and the pid)
    # changes with every run and is left out; a replica on a TCP port (port 0 in the tests) says which port it got
    _log(f"replica of {args.service!r} listening on " + ("a unix socket" if where.startswith("unix:") else where))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=replica.load, daemon=True).start()
    while not stop.wait(0.5):
        if args.exit_with_parent and os.getppid() != parent:
            _log("the cluster's supervisor is gone")
            break
    _log("stopping")
    for s in servers:
        s.stop(grace=2).wait()
    return exit_code[0]


def _check_package(package):
    import io

    import numpy as np
    from PIL import Image

    from ..device.package import AcceleratorPackage
    pkg = AcceleratorPackage(package)
    buf = io.BytesIO()
    Image.fromarray((np.indices((180, 240)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(buf, "JPEG")
    out = pkg.run([buf.getvalue()])
    print(json.dumps({k: list(v.shape) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
