"""The cluster's supervisor: runs each service's replicas and restarts them with Kubernetes' semantics.

A replica that exits or is killed is started again (its FPGA flashed again; the front end routes around it
meanwhile) and its restart count grows. The first restart is immediate; when a replica keeps crashing the wait
doubles (CrashLoopBackOff) up to a cap, and resets once a replica has stayed up long enough. A replica that stops
answering its health probe while it served (hung) is killed and restarted, as a liveness probe would. Kubernetes
waits 10 s doubling to 300 s, resets after 10 min and probes liveness every 10 s, three failures in a row; the
simulation scales these down tenfold (*modeled*) so that a learner sees a restart within seconds. A replica whose
package cannot load exits with ``server.EXIT_LOAD_FAILED`` and is reported Failed, never restarted.

The loops never stop on their own errors (a status file that cannot be written, no file handles left, a replica
that cannot be started): each step catches what it raises, logs each distinct error once per ``LOG_EVERY`` seconds,
and tries again with a back-off.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time

from . import specs
from ..replica import logtime, server
from ..device import resources

BACKOFF_FIRST = 1.0          # seconds before the second restart in a row (Kubernetes: 10 s)
BACKOFF_MAX = 30.0           # the cap (Kubernetes: 300 s)
BACKOFF_RESET = 60.0         # up this long, and the back-off starts again from nothing (Kubernetes: 10 min)
PROBE_EVERY = 0.1            # seconds between health probes of a replica that is not serving yet (a local call)
PROBE_HEALTHY_EVERY = 1.0    # ... and of one that serves (Kubernetes' liveness period: 10 s)
PROBE_TIMEOUT = 1.0
LIVENESS_FAILURES = 3        # failed probes in a row of a replica that served, and it is restarted
LOG_EVERY = 30.0             # seconds between two log lines of the same error


def backoff(crashes_in_a_row):
    """Seconds to wait before restarting a replica that has crashed ``crashes_in_a_row`` times in a row."""
    if crashes_in_a_row <= 1:
        return 0.0
    return min(BACKOFF_FIRST * 2 ** (crashes_in_a_row - 2), BACKOFF_MAX)


def _log(path, msg):
    with open(path, "a") as f:
        f.write(logtime.stamped(f"supervisor: {msg}") + "\n")


class ErrorLog:
    """Logs each distinct error once per ``every`` seconds (with how many were left out), never raising itself."""

    def __init__(self, every=LOG_EVERY, who="supervisor"):
        self.every, self.who = every, who
        self.seen = {}               # key -> [last time logged, times left out since]

    def __call__(self, where, error):
        key = (where, type(error).__name__, str(error)[:200])
        now = time.monotonic()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.every:
            last[1] += 1
            return
        more = f" (and {last[1]} more like it)" if last and last[1] else ""
        self.seen[key] = [now, 0]
        try:
            print(logtime.stamped(f"{self.who}: {where}: {type(error).__name__}: {error}{more}"), flush=True)
        except OSError:
            pass


class ReplicaProcess:
    """One replica's process, restarted as needed; ``state`` is one of ``specs.REPLICA_STATES``."""

    def __init__(self, sup, svc: specs.ServiceSpec, spec: specs.ReplicaSpec):
        self.sup, self.svc, self.spec = sup, svc, spec
        self.state = specs.STARTING
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.proc = None
        self.container = ""           # the name of its container (runtime "container")
        self.socket = self.health_socket = None
        self.last_exit = None
        self.message = ""
        self.healthy_since = None
        self.failed_probes = 0
        self.stopping = False
        self.log = specs.replica_log(svc.log_dir, spec.idx)
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def fpga(self):
        return f"{self.sup.name}/node-{self.spec.node}/fpga-0"

    def status(self) -> specs.ReplicaStatus:
        return specs.ReplicaStatus(idx=self.spec.idx, node=self.spec.node, state=self.state,
                                     restarts=self.restarts, pid=self.proc.pid if self.proc else 0,
                                     last_exit=self.last_exit, message=self.message, container=self.container)

    def _set(self, state, message=None):
        if message is not None:
            self.message = message
        if state != self.state:
            self.state = state
            if state == specs.HEALTHY:
                self.healthy_since = time.monotonic()
        self.sup.changed()

    async def _start(self):
        serial = next(self.sup.serials)
        if self.svc.settled.runtime == specs.CONTAINER:
            cmd = self._container_command(serial)
        else:
            self.socket, self.health_socket = specs.replica_sockets(self.sup.socket_dir, serial)
            cmd = server.command(sys.executable, self.svc, socket=self.socket, health_socket=self.health_socket,
                                 fpga=self.fpga, threads=self.sup.threads, exit_with_parent=True)
        env = {**os.environ, "PYTHONPATH": self.svc.context, "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as f:
            self.proc = await asyncio.create_subprocess_exec(*cmd, cwd=self.svc.context, env=env,
                                                             stdin=asyncio.subprocess.DEVNULL, stdout=f,
                                                             stderr=asyncio.subprocess.STDOUT)
        self.failed_probes = 0
        self._set(specs.STARTING)

    def _container_command(self, serial):
        """The engine's command line that runs this replica in a container of the service's image, its sockets in
        a folder of its own (mounted into the container)."""
        from . import containers, running
        folder = running.prepare_socket_dir(specs.replica_socket_dir(self.sup.socket_dir, serial))
        self.socket, self.health_socket = folder / "replica.sock", folder / "health.sock"
        self.container = f"accel-{self.sup.cluster_id[:8]}-{self.svc.name}-{self.spec.idx}-{serial}"
        inner = server.command(containers.PYTHON, self.svc, socket=f"{running.SOCKETS}/{self.socket.name}",
                               health_socket=f"{running.SOCKETS}/{self.health_socket.name}", fpga=self.fpga,
                               threads=self.sup.threads)
        settled = self.svc.settled
        self.sup.engines.add(settled.engine)
        return running.replica_run_command(settled.engine, settled.container_image, self.container,
                                              self.sup.cluster_id, folder, inner)

    async def _kill(self):
        """Kill the replica as a crash would (its container, for one that runs in a container)."""
        if self.container:
            from . import running
            await asyncio.to_thread(running.kill, self.svc.settled.engine, self.container)
        elif self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def _run(self):
        start_failures = 0
        while not self.stopping:
            try:
                await self._start()
            except Exception as e:  # noqa: BLE001 - no file handles, a log that cannot be opened: try again
                start_failures += 1
                self.sup.errors(f"starting replica {self.spec.idx} of {self.svc.name!r}", e)
                self._set(specs.BACKOFF, f"could not start: {type(e).__name__}: {e}")
                await asyncio.sleep(min(BACKOFF_FIRST * 2 ** min(start_failures, 5), BACKOFF_MAX))
                continue
            start_failures = 0
            code = await self.proc.wait()
            self._forget_sockets()
            if self.stopping:
                return
            self.last_exit = code
            try:
                await self._after_exit(code)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the restart goes on even if its log line cannot be written
                self.sup.errors(f"after replica {self.spec.idx} of {self.svc.name!r} exited", e)
            if self.state == specs.FAILED:
                return

    async def _after_exit(self, code):
        if code == server.EXIT_LOAD_FAILED:
            self._set(specs.FAILED, "the package could not load; see the replica's log")
            _log(self.log, f"replica {self.spec.idx} could not load its package (exit {code}): Failed, "
                           "not restarted. Fix the model or image and deploy again.")
            return
        up = time.monotonic() - self.healthy_since if self.healthy_since else 0.0
        self.healthy_since = None
        self.crashes_in_a_row = 1 if up >= BACKOFF_RESET else self.crashes_in_a_row + 1
        self.restarts += 1
        wait = backoff(self.crashes_in_a_row)
        how = "killed by signal %d" % -code if code < 0 else "exited with code %d" % code
        self._set(specs.BACKOFF if wait else specs.STARTING, f"last exit: {how}")
        try:
            _log(self.log, f"replica {self.spec.idx} {how}; restart {self.restarts} in {wait:.0f} s"
                           + (" (CrashLoopBackOff, modeled back-off)" if wait else ""))
        finally:
            if wait:
                await asyncio.sleep(wait)

    def _forget_sockets(self):
        for p in (self.socket, self.health_socket):
            if p is not None:
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass
        if self.container and self.socket is not None:
            try:
                self.socket.parent.rmdir()          # a container's own socket folder
            except OSError:
                pass

    async def probe(self):
        """Ask the replica's gRPC health service; a replica that served and fails ``LIVENESS_FAILURES`` probes in
        a row is hung: it is killed, and restarted like any replica that exits."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        if self.state in (specs.FAILED, specs.BACKOFF) or self.proc is None or self.proc.returncode is not None:
            return
        if not self.health_socket or not self.health_socket.exists():
            return
        ch = self.sup.channel(self.health_socket)
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=PROBE_TIMEOUT)
            serving = resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            serving = False
        if self.proc.returncode is not None or self.state in (specs.FAILED, specs.BACKOFF):
            return
        if serving:
            self.failed_probes = 0
            self._set(specs.HEALTHY, "")
            return
        self.failed_probes += 1
        was_serving = self.healthy_since is not None
        self._set(specs.LOADING)
        if was_serving and self.failed_probes >= LIVENESS_FAILURES:
            _log(self.log, f"replica {self.spec.idx} failed {self.failed_probes} health probes in a row: hung, "
                           "killed (liveness, modeled)")
            await self._kill()

    def not_ready(self):
        """The front end saw this replica fail a call: take it out of rotation until a probe says otherwise."""
        if self.state == specs.HEALTHY:
            self._set(specs.LOADING)

    async def stop(self, note=None):
        """Stop the replica for good (SIGTERM, then SIGKILL after 5 s)."""
        self.stopping = True
        if note:
            try:
                _log(self.log, note)
            except OSError:
                pass
        p = self.proc
        if p is not None and p.returncode is None:
            try:
                p.send_signal(signal.SIGCONT)           # a stopped (hung) process must wake up to take SIGTERM
                p.send_signal(signal.SIGTERM)
                await asyncio.wait_for(p.wait(), 5)
            except asyncio.TimeoutError:
                await self._kill()
                p.kill()
                await p.wait()
            except ProcessLookupError:
                pass
        if self.container:
            from . import running
            await asyncio.to_thread(running.remove, self.svc.settled.engine, self.container)
        self._forget_sockets()
        self.task.cancel()


class Supervisor:
    """Keeps the replicas of every service in the cluster spec running; reports them in ``status.json``."""

    def __init__(self, cluster_dir, spec: specs.ClusterSpec, socket_dir):
        self.dir = cluster_dir
        self.name = spec.name
        self.socket_dir = socket_dir
        self.spec = specs.ClusterSpec(name=spec.name, nodes=spec.nodes, vcpus_per_node=spec.vcpus_per_node)
        self.services: dict[str, list[ReplicaProcess]] = {}
        self.generations: dict[str, int] = {}
        self._channels = {}
        self._dirty = True
        self.threads = 1
        self.serials = itertools.count()
        self.errors = ErrorLog()
        from . import running
        self.cluster_id = running.cluster_id(cluster_dir)      # the label of its replicas' containers
        self.engines = set()                                      # the engines that ran them

    def channel(self, socket):
        """A (cached) gRPC channel to a replica's Unix socket."""
        import grpc
        key = str(socket)
        ch = self._channels.get(key)
        if ch is None:
            big = 1 << 30
            ch = self._channels[key] = grpc.aio.insecure_channel(
                f"unix:{key}", options=[("grpc.max_send_message_length", big),
                                        ("grpc.max_receive_message_length", big)])
        return ch

    def changed(self):
        self._dirty = True

    async def reconcile(self, spec: specs.ClusterSpec):
        """Start what the spec adds, stop what it removes (or redeploys under a new generation)."""
        replicas_here = sum(len(s.replicas) for s in spec.services)
        self.threads = specs.threads_per_replica(resources.cpus(), replicas_here, spec.vcpus_per_node)
        wanted = {s.name: s for s in spec.services}
        for name in list(self.services):
            if name not in wanted or wanted[name].settled.generation != self.generations[name]:
                await self.remove(name, "the service was deleted or redeployed")
        for name, svc in wanted.items():
            if name not in self.services:
                self.services[name] = [ReplicaProcess(self, svc, r) for r in svc.replicas]
                self.generations[name] = svc.settled.generation
        self.spec = spec              # only now does the status report this revision
        self.changed()

    async def remove(self, name, note):
        for r in self.services.pop(name, []):
            await r.stop(f"replica {r.spec.idx} stopped: {note}")
            ch = self._channels.pop(str(r.socket), None), self._channels.pop(str(r.health_socket), None)
            for c in ch:
                if c is not None:
                    await c.close()
        self.generations.pop(name, None)
        self.changed()

    async def stop_all(self, note="the cluster was deleted"):
        await asyncio.gather(*(self.remove(n, note) for n in list(self.services)))
        for ch in self._channels.values():
            await ch.close()
        await self.remove_containers()

    async def remove_containers(self, engines=()):
        """Remove every container labelled with this cluster (what a killed front end left behind, too)."""
        from . import running
        for engine in set(engines) | self.engines:
            if engine:
                try:
                    await asyncio.to_thread(running.remove_labelled, engine, self.cluster_id)
                except Exception as e:  # noqa: BLE001 - an engine that does not answer: logged, the rest goes on
                    self.errors("removing the cluster's containers", e)

    def ready(self, name) -> list[ReplicaProcess]:
        """The replicas of ``name`` that serve now."""
        return [r for r in self.services.get(name, []) if r.state == specs.HEALTHY]

    def states(self, name):
        return [r.state for r in self.services.get(name, [])]

    async def probe_forever(self):
        """Probe every replica (faster while it is not serving yet) and write status.json when anything changed;
        an error in either is logged (once per LOG_EVERY) and the loop goes on, slower while it lasts."""
        last, pause = {}, 0.05
        while True:
            try:
                now = time.monotonic()
                due = [r for rs in self.services.values() for r in rs
                       if now - last.get(id(r), 0) >= (PROBE_HEALTHY_EVERY if r.state == specs.HEALTHY
                                                       else PROBE_EVERY)]
                for r in due:
                    last[id(r)] = now
                if due:
                    results = await asyncio.gather(*(r.probe() for r in due), return_exceptions=True)
                    for r, res in zip(due, results):
                        if isinstance(res, Exception):
                            self.errors(f"probing replica {r.spec.idx} of {r.svc.name!r}", res)
                if self._dirty:
                    self._dirty = False
                    try:
                        self.write_status()
                    except Exception:
                        self._dirty = True        # written again on the next round
                        raise
                pause = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop that supervises must outlive its own errors
                self.errors("the probe loop", e)
                pause = min(pause * 2, 2.0)
            await asyncio.sleep(pause)

    def write_status(self):
        st = specs.ClusterStatus(pid=os.getpid(), revision=self.spec.revision, services=[
            specs.ServiceStatus(name=n, generation=self.generations[n], replicas=[r.status() for r in rs])
            for n, rs in self.services.items()])
        specs.write(st, self.dir)
