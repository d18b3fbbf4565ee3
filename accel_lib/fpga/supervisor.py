"""The cluster's supervisor: runs each service's replicas and restarts them with Kubernetes' semantics.

A replica that exits or is killed is started again (its FPGA flashed again; the front end routes around it
meanwhile) and its restart count grows. The first restart is immediate; when a replica keeps crashing the wait
doubles (CrashLoopBackOff) up to a cap, and resets once a replica has stayed up long enough. Kubernetes waits
10 s doubling to 300 s and resets after 10 min; the simulation scales these down tenfold (1 s, 30 s, 60 s:
*modeled*) so that a learner sees a restart within seconds. A replica whose package cannot load exits with
``cluster.EXIT_LOAD_FAILED`` and is reported Failed, never restarted.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from . import cluster, host, server

BACKOFF_FIRST = 1.0          # seconds before the second restart in a row (Kubernetes: 10 s)
BACKOFF_MAX = 30.0           # the cap (Kubernetes: 300 s)
BACKOFF_RESET = 60.0         # up this long, and the back-off starts again from nothing (Kubernetes: 10 min)
PROBE_EVERY = 0.25           # seconds between health probes of a replica that is not serving yet
PROBE_HEALTHY_EVERY = 1.0    # ... and of one that serves


def backoff(crashes_in_a_row):
    """Seconds to wait before restarting a replica that has crashed ``crashes_in_a_row`` times in a row."""
    if crashes_in_a_row <= 1:
        return 0.0
    return min(BACKOFF_FIRST * 2 ** (crashes_in_a_row - 2), BACKOFF_MAX)


def _log(path, msg):
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor: {msg}\n")


class Replica:
    """One replica's process, restarted as needed; ``state`` is one of ``cluster.REPLICA_STATES``."""

    def __init__(self, sup, svc: cluster.ServiceSpec, spec: cluster.ReplicaSpec):
        self.sup, self.svc, self.spec = sup, svc, spec
        self.state = cluster.STARTING
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.proc = None
        self.port = 0
        self.last_exit = None
        self.message = ""
        self.healthy_since = None
        self.stopping = False
        self.log = cluster.replica_log(svc.log_dir, spec.idx)
        self.port_file = cluster.replica_port_file(svc.log_dir, spec.idx)
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def fpga(self):
        return f"{self.sup.name}/node-{self.spec.node}/fpga-0"

    def status(self) -> cluster.ReplicaStatus:
        return cluster.ReplicaStatus(idx=self.spec.idx, node=self.spec.node, state=self.state,
                                     restarts=self.restarts, pid=self.proc.pid if self.proc else 0, port=self.port,
                                     last_exit=self.last_exit, message=self.message)

    def _set(self, state, message=None):
        if message is not None:
            self.message = message
        if state != self.state:
            self.state = state
            if state == cluster.HEALTHY:
                self.healthy_since = time.monotonic()
        self.sup.changed()

    async def _start(self):
        self.port = 0
        self.port_file.unlink(missing_ok=True)
        cmd = server.command(sys.executable, port_file=self.port_file, service=self.svc.name, fpga=self.fpga,
                             flash_seconds=self.svc.flash_seconds, max_message_mb=self.svc.max_message_mb,
                             max_images=self.svc.max_images, max_pixels=self.svc.max_pixels,
                             threads=self.sup.threads, exit_with_parent=True)
        env = {**os.environ, "PYTHONPATH": self.svc.context, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as f:
            self.proc = await asyncio.create_subprocess_exec(*cmd, cwd=self.svc.context, env=env,
                                                             stdin=asyncio.subprocess.DEVNULL, stdout=f,
                                                             stderr=asyncio.subprocess.STDOUT)
        self._set(cluster.STARTING)

    async def _run(self):
        while not self.stopping:
            await self._start()
            code = await self.proc.wait()
            if self.stopping:
                return
            self.last_exit = code
            self.port = 0
            if code == cluster.EXIT_LOAD_FAILED:
                _log(self.log, f"replica {self.spec.idx} could not load its package (exit {code}): Failed, "
                               "not restarted. Fix the model or image and deploy again.")
                self._set(cluster.FAILED, "the package could not load; see the replica's log")
                return
            up = time.monotonic() - self.healthy_since if self.healthy_since else 0.0
            self.healthy_since = None
            self.crashes_in_a_row = 1 if up >= BACKOFF_RESET else self.crashes_in_a_row + 1
            self.restarts += 1
            wait = backoff(self.crashes_in_a_row)
            how = "killed by signal %d" % -code if code < 0 else "exited with code %d" % code
            _log(self.log, f"replica {self.spec.idx} {how}; restart {self.restarts} in {wait:.0f} s"
                           + (" (CrashLoopBackOff, modeled back-off)" if wait else ""))
            self._set(cluster.BACKOFF if wait else cluster.STARTING, f"last exit: {how}")
            if wait:
                await asyncio.sleep(wait)

    async def probe(self):
        """Read the port once the replica listens, then ask its gRPC health service."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        if self.state in (cluster.FAILED, cluster.BACKOFF) or self.proc is None or self.proc.returncode is not None:
            return
        if not self.port:
            try:
                self.port = int(self.port_file.read_text())
            except (FileNotFoundError, ValueError):
                return
        ch = self.sup.channel(self.port)
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            serving = resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            serving = False
        if self.proc.returncode is None and self.state not in (cluster.FAILED, cluster.BACKOFF):
            self._set(cluster.HEALTHY if serving else cluster.LOADING, "" if serving else None)

    def not_ready(self):
        """The front end saw this replica fail a call: take it out of rotation until a probe says otherwise."""
        if self.state == cluster.HEALTHY:
            self._set(cluster.LOADING)

    async def stop(self, note=None):
        """Stop the replica for good (SIGTERM, then SIGKILL after 5 s)."""
        self.stopping = True
        if note:
            _log(self.log, note)
        p = self.proc
        if p is not None and p.returncode is None:
            p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), 5)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
        self.task.cancel()


class Supervisor:
    """Keeps the replicas of every service in the cluster spec running; reports them in ``status.json``."""

    def __init__(self, cluster_dir, spec: cluster.ClusterSpec):
        self.dir = cluster_dir
        self.name = spec.name
        self.spec = cluster.ClusterSpec(name=spec.name, nodes=spec.nodes, vcpus_per_node=spec.vcpus_per_node)
        self.services: dict[str, list[Replica]] = {}
        self.generations: dict[str, int] = {}
        self._channels = {}
        self._dirty = True
        self.threads = 1

    def channel(self, port):
        """A (cached) gRPC channel to a replica on this machine."""
        import grpc
        ch = self._channels.get(port)
        if ch is None:
            big = 1 << 30
            ch = self._channels[port] = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", big),
                                              ("grpc.max_receive_message_length", big)])
        return ch

    def changed(self):
        self._dirty = True

    async def reconcile(self, spec: cluster.ClusterSpec):
        """Start what the spec adds, stop what it removes (or redeploys under a new generation)."""
        replicas_here = sum(len(s.replicas) for s in spec.services)
        self.threads = cluster.threads_per_replica(host.cpus(), replicas_here, spec.vcpus_per_node)
        wanted = {s.name: s for s in spec.services}
        for name in list(self.services):
            if name not in wanted or wanted[name].generation != self.generations[name]:
                await self.remove(name, "the service was deleted or redeployed")
        for name, svc in wanted.items():
            if name not in self.services:
                self.services[name] = [Replica(self, svc, r) for r in svc.replicas]
                self.generations[name] = svc.generation
        self.spec = spec              # only now does the status report this revision
        self.changed()

    async def remove(self, name, note):
        for r in self.services.pop(name, []):
            await r.stop(f"replica {r.spec.idx} stopped: {note}")
        self.generations.pop(name, None)
        self.changed()

    async def stop_all(self, note="the cluster was deleted"):
        await asyncio.gather(*(self.remove(n, note) for n in list(self.services)))
        for ch in self._channels.values():
            await ch.close()

    def ready(self, name) -> list[Replica]:
        """The replicas of ``name`` that serve now."""
        return [r for r in self.services.get(name, []) if r.state == cluster.HEALTHY]

    def states(self, name):
        return [r.state for r in self.services.get(name, [])]

    async def probe_forever(self):
        """Probe every replica (faster while it is not serving yet) and write status.json when anything changed."""
        last = {}
        while True:
            now = time.monotonic()
            due = [r for rs in self.services.values() for r in rs
                   if now - last.get(id(r), 0) >= (PROBE_HEALTHY_EVERY if r.state == cluster.HEALTHY else PROBE_EVERY)]
            for r in due:
                last[id(r)] = now
            if due:
                await asyncio.gather(*(r.probe() for r in due))
            if self._dirty:
                self._dirty = False
                self.write_status()
            await asyncio.sleep(0.05)

    def write_status(self):
        st = cluster.ClusterStatus(pid=os.getpid(), revision=self.spec.revision, services=[
            cluster.ServiceStatus(name=n, generation=self.generations[n], replicas=[r.status() for r in rs])
            for n, rs in self.services.items()])
        cluster.write(st, self.dir)
