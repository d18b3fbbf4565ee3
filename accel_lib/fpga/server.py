"""One replica of a deployed service: a gRPC server holding one (simulated) FPGA loaded with one package.

Speaks TensorFlow Serving's PredictionService (Predict, GetModelMetadata) and the standard gRPC health service,
from the project's own compiled subset of TF Serving's protocol (``protos/``): a replica imports no TensorFlow.
Run from an image's build context: ``python -m fpga.server --package package --port-file PORT ...``; the command
line is built by ``command()`` and nowhere else. A replica exits on SIGTERM, when its parent (the cluster's
supervisor) is gone (``--exit-with-parent``), and with ``cluster.EXIT_LOAD_FAILED`` when its package cannot load.
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

from .cluster import EXIT_LOAD_FAILED

HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService")
MAX_IMAGES = 64               # default: the most images one request may hold


def command(python, package="package", port_file=None, service="local", fpga="node-0/fpga-0", flash_seconds=0.0,
            max_message_mb=64.0, max_images=MAX_IMAGES, max_pixels=None, threads=0, keys_file=None,
            exit_with_parent=False, host="127.0.0.1", port=0, check=False):
    """The replica's command line (run with the image's build context as working directory and PYTHONPATH)."""
    cmd = [python, "-m", "fpga.server", "--package", str(package)]
    if check:
        return cmd + ["--check"]
    cmd += ["--host", host, "--port", str(port), "--service", service, "--fpga", fpga,
            "--flash-seconds", str(flash_seconds), "--max-message-mb", str(max_message_mb),
            "--max-images", str(max_images), "--threads", str(threads)]
    if max_pixels is not None:
        cmd += ["--max-pixels", str(max_pixels)]
    if port_file:
        cmd += ["--port-file", str(port_file)]
    if keys_file:
        cmd += ["--keys-file", str(keys_file)]
    if exit_with_parent:
        cmd.append("--exit-with-parent")
    return cmd


def _log(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}", flush=True)


class Replica:
    """The servicer: authenticates, validates and runs requests through the accelerator package."""

    def __init__(self, args, keys, health, on_load_failed):
        self.package_dir = args.package
        self.service = args.service
        self.fpga = args.fpga
        self.keys = [k for k in keys if k]
        self.flash_seconds = args.flash_seconds
        self.threads = args.threads
        self.max_images = args.max_images
        self.max_pixels = args.max_pixels
        self.health = health
        self.on_load_failed = on_load_failed
        self.pkg = None
        self.error = None

    # -- loading the FPGA ---------------------------------------------------------------------
    def load(self):
        """Flash the FPGA with the package (modeled delay), then report SERVING."""
        from grpc_health.v1 import health_pb2

        from .package import AcceleratorPackage
        try:
            _log(f"flashing {self.fpga} with {Path(self.package_dir).name} "
                 f"(modeled flash time {self.flash_seconds:.1f} s)")
            t0 = time.monotonic()
            pkg = AcceleratorPackage(self.package_dir, threads=self.threads, spinning=False,
                                     max_pixels=self.max_pixels)
            rest = self.flash_seconds - (time.monotonic() - t0)
            if rest > 0:
                time.sleep(rest)
            self.pkg = pkg
            m = pkg.manifest
            _log(f"loaded {m.source_model['name']}:{m.source_model['version']} on {self.fpga}: featurizer "
                 f"{m.model_class} in {pkg.numeric_format}; ready in {time.monotonic() - t0:.1f} s (measured); "
                 f"{self.threads or 'all'} CPU thread(s)")
            for s in HEALTH_SERVICES:
                self.health.set(s, health_pb2.HealthCheckResponse.SERVING)
        except Exception as e:  # noqa: BLE001 - reported through health and the log
            self.error = f"{type(e).__name__}: {e}"
            _log(f"loading failed: {self.error}")
            for s in HEALTH_SERVICES:
                self.health.set(s, health_pb2.HealthCheckResponse.NOT_SERVING)
            self.on_load_failed()

    # -- checks -------------------------------------------------------------------------------
    def _check(self, context):
        import grpc
        if self.keys:
            md = dict(context.invocation_metadata())
            auth = md.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self.keys:
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "missing or wrong key: send metadata 'authorization: Bearer <key>' with a key from "
                              "service.get_keys().")
        if self.pkg is None:
            if self.error:
                context.abort(grpc.StatusCode.INTERNAL, f"the replica could not load its model: {self.error}")
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{self.fpga} is being flashed with the model; retry in a moment.")

    @staticmethod
    def _bad(context, msg):
        import grpc
        _log(f"INVALID_ARGUMENT: {msg}")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)

    # -- PredictionService --------------------------------------------------------------------
    def Predict(self, request, context):
        import grpc

        from . import tensors
        from .package import RequestError
        from .protos import serving_pb2, tensorflow_pb2
        self._check(context)
        left = context.time_remaining()
        if left is not None and left <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed before scoring began.")
        t0 = time.perf_counter()
        pkg = self.pkg
        if len(request.inputs) != 1:
            self._bad(context, f"expected exactly one input ({pkg.input_name!r}), got {sorted(request.inputs)}.")
        name, proto = next(iter(request.inputs.items()))
        if name not in pkg.input_names():
            self._bad(context, f"unknown input {name!r}; this model's input is {pkg.input_name!r}.")
        try:
            value = tensors.from_proto(proto)
            outputs = list(request.output_filter) or None
            if len(value) > self.max_images:
                raise RequestError(f"the request holds {len(value)} images; at most {self.max_images} per request. "
                                   "Split it into smaller batches.")
            if proto.dtype == tensors.DT_STRING:
                if not value:
                    raise RequestError("the request holds no images.")
                result = pkg.run(value, outputs)
            elif proto.dtype == tensors.DT_FLOAT and value.ndim == 4:
                result = pkg.run_arrays(value, outputs)
            else:
                got = tensors.DTYPE_NAMES.get(proto.dtype, proto.dtype)
                raise RequestError(f"input {name!r} must be DT_STRING (encoded JPEG/PNG images) or DT_FLOAT "
                                   f"[N, H, W, 3] (preprocessed), got {got} of shape {list(value.shape)}.")
        except (RequestError, ValueError) as e:
            self._bad(context, str(e))
        resp = serving_pb2.PredictResponse()
        resp.model_spec.name = request.model_spec.name or self.service
        for k, v in result.items():
            resp.outputs[k].CopyFrom(tensors.to_proto(v, tensorflow_pb2.TensorProto))
        n = len(value)
        _log(f"Predict ok: {n} image(s), {1000 * (time.perf_counter() - t0):.1f} ms (measured, host CPU)")
        return resp

    def GetModelMetadata(self, request, context):
        from google.protobuf import wrappers_pb2

        from . import tensors
        from .protos import serving_pb2, tensorflow_pb2
        self._check(context)
        if list(request.metadata_field) not in ([], ["signature_def"]):
            self._bad(context, "only metadata_field 'signature_def' is available.")
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
    """Start the gRPC server; return (server, replica, port)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from .protos import serving_pb2_grpc

    max_bytes = int(args.max_message_mb * 1024 * 1024)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", max_bytes),
                                  ("grpc.so_reuseport", 0)])
    health_servicer = health.HealthServicer()
    for s in HEALTH_SERVICES:
        health_servicer.set(s, health_pb2.HealthCheckResponse.NOT_SERVING)
    keys = Path(args.keys_file).read_text().split() if args.keys_file else []
    replica = Replica(args, keys, health_servicer, on_load_failed)
    servicer = type("PredictionServicer", (serving_pb2_grpc.PredictionServiceServicer,), {
        "Predict": lambda self, req, ctx: replica.Predict(req, ctx),
        "GetModelMetadata": lambda self, req, ctx: replica.GetModelMetadata(req, ctx)})()
    serving_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"could not bind {args.host}:{args.port}")
    server.start()
    return server, replica, port


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--package", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--service", default="local")
    p.add_argument("--fpga", default="node-0/fpga-0")
    p.add_argument("--keys-file")
    p.add_argument("--flash-seconds", type=float, default=0.0)
    p.add_argument("--max-message-mb", type=float, default=64)
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)
    p.add_argument("--max-pixels", type=int, default=None, help="per-image pixel limit (default: host.MAX_PIXELS)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: every core)")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started it is gone")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--check", action="store_true", help="load the package, score a generated image, exit")
    args = p.parse_args(argv)
    if args.check:
        return _check_package(args.package)
    if args.max_pixels is None:
        from .host import MAX_PIXELS
        args.max_pixels = MAX_PIXELS
    stop = threading.Event()
    exit_code = [0]

    def load_failed():
        exit_code[0] = EXIT_LOAD_FAILED
        stop.set()

    parent = os.getppid()
    server, replica, port = serve(args, load_failed)
    _log(f"replica of {args.service!r} listening on {args.host}:{port} (pid {os.getpid()})")
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, args.port_file)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=replica.load, daemon=True).start()
    while not stop.wait(0.5):
        if args.exit_with_parent and os.getppid() != parent:
            _log("the cluster's supervisor is gone")
            break
    _log("stopping")
    server.stop(grace=2).wait()
    return exit_code[0]


def _check_package(package):
    import io

    import numpy as np
    from PIL import Image

    from .package import AcceleratorPackage
    pkg = AcceleratorPackage(package)
    buf = io.BytesIO()
    Image.fromarray((np.indices((180, 240)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(buf, "JPEG")
    out = pkg.run([buf.getvalue()])
    print(json.dumps({k: list(v.shape) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
