"""The cluster process: the front end (the simulated AKS ingress) and the supervisor of the cluster's replicas.

One process per cluster: ``python -m accel_lib.fpga.cluster.frontend --cluster-dir DIR`` (``command()`` builds it). It
listens on 127.0.0.1 with a gRPC port and a REST port (TLS on both when the cluster has a certificate). Its rooms:
``routing`` (which service a call is for, keys, balancing and retries), ``ingress`` (the listeners, the accept
loop and every connection's limits), and the codecs ``tfserving`` (TF Serving's REST API) and ``oip`` (the Open
Inference Protocol). Replicas are reached on Unix sockets only (``specs.replica_sockets``).

Why asyncio (grpc.aio + aiohttp's low-level server): one event loop holds thousands of waiting calls without a
thread each, the listeners and the supervisor share the routing table without locks, and gRPC calls are forwarded
as the bytes that came in (no decoding, no re-encoding) unless a call carries no route header. The process stops
when the cluster's spec file disappears or on SIGTERM, and stops its replicas first.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from . import specs
from .ingress import Acceptor, GrpcListener, RestApi, log, rest_server
from .routing import Router
from .supervisor import ErrorLog, Supervisor


# -- the process -------------------------------------------------------------------------------------
def _tls_files(cluster_dir):
    return Path(cluster_dir) / specs.TLS_CERT_FILE, Path(cluster_dir) / specs.TLS_KEY_FILE


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
    spec = specs.read(specs.ClusterSpec, folder)
    socket_dir = specs.make_socket_dir()
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
        await sup.remove_containers(spec.engines())  # left by a kill
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
        specs.write(specs.Endpoints(pid=os.getpid(), host=args.host, grpc_port=listener.port,
                                        rest_port=rest_port, tls=spec.tls), folder)
        log(f"front end of cluster {spec.name!r}: gRPC {args.host}:{listener.port}, REST {args.host}:{rest_port}"
             f"{' (TLS)' if spec.tls else ''}; pid {os.getpid()}")

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        prober = loop.create_task(sup.probe_forever())
        seen = specs.spec_version(folder)
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
                try:
                    version = specs.spec_version(folder)
                except OSError as e:
                    errors("reading the spec", e)
                    continue
                if version is None:
                    log("the cluster's spec is gone: the cluster was deleted")
                    break
                if version == seen:
                    continue
                try:
                    new = specs.read(specs.ClusterSpec, folder)
                    await sup.reconcile(new)
                    await listener.ensure(new.largest_message())
                    seen = version
                    log(f"services now: {[s.name for s in new.services]}")
                except Exception as e:  # noqa: BLE001 - a bad spec or a rebuild that failed: the services stay
                    errors("taking the new spec", e)
        finally:
            prober.cancel()
            accepting.cancel()
    finally:
        log("stopping")
        await sup.stop_all()
        await listener.stop()
        if rest is not None:
            rest.close()
        api.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
        for f in (specs.ENDPOINTS_FILE, specs.STATUS_FILE):
            (folder / f).unlink(missing_ok=True)


def command(python, cluster_dir, host="127.0.0.1", grpc_port=0, rest_port=0):
    """The cluster process's command line."""
    return [python, "-m", "accel_lib.fpga.cluster.frontend", "--cluster-dir", str(cluster_dir), "--host", host,
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
