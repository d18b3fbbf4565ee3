"""THE owner of a cluster's files: what the workspace asks for, what the cluster reports, and where each lives.

A cluster is a folder. The workspace writes the desired state (``cluster.json``: the services, their replicas and
keys, TLS); the cluster process (``python -m accel_lib.fpga.cluster.frontend``: front end + supervisor) reads it,
runs the replicas and reports what it sees (``status.json``) and where it listens (``endpoints.json``). Like
Kubernetes: the spec is declared, the controller reconciles. Deleting ``cluster.json`` tells the cluster process to
stop. Every file here is written 0600: the spec holds the services' keys. Replicas listen on Unix sockets in a
private (0700) folder the cluster process makes, so nothing but the front end (and root) can call them.

What one request may hold is ``replica.limits.ServiceLimits``; a replica's exit codes are ``replica.server``'s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..device import manifest
from ..replica import server
from ..replica.limits import ServiceLimits

SPEC_FILE = "cluster.json"
STATUS_FILE = "status.json"
ENDPOINTS_FILE = "endpoints.json"
LOG_FILE = "frontend.log"
LOCK_FILE = ".spec.lock"              # held while the spec is derived from the records and written (spec_lock)
TLS_CERT_FILE = "tls/cert.pem"        # what the front end presents: the leaf, then its CA
TLS_KEY_FILE = "tls/key.pem"          # its key (0600)
TLS_CA_FILE = "tls/ca.pem"            # what clients trust: the CA that signed a generated certificate
ROUTE_HEADER = "x-ms-aml-grpc-service-route"
ROUTE_PREFIX = "/api/v1/service/"
DEFAULT_MODEL = "default"     # the model name the article's client sends without a service name: no model named

# replica states, as the supervisor reports them
STARTING, LOADING, HEALTHY, BACKOFF, FAILED = "Starting", "Loading", "Healthy", "CrashLoopBackOff", "Failed"
REPLICA_STATES = (STARTING, LOADING, HEALTHY, BACKOFF, FAILED)
PROCESS, CONTAINER = "process", "container"
RUNTIMES = (PROCESS, CONTAINER)          # how a service's replicas run


@dataclass
class ServiceConfig:
    """What the user asked for, as ``AksWebservice.deploy_configuration()`` makes it and the workspace stores it:
    replicas (one FPGA each), keys on or off (None: as the target's kind says), the modeled flash time, a
    description and tags, what one request may hold, and where replicas run (None: as the image allows).
    What the deployment settles from it is ``Settled``."""
    num_replicas: int = 1
    auth_enabled: typing.Optional[bool] = None
    flash_seconds: float = server.FLASH_SECONDS
    description: typing.Optional[str] = None
    tags: dict = field(default_factory=dict)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    runtime: typing.Optional[str] = None   # "process" or "container"; None: a container where the image was built
    format: str = "accel_lib.service-config/2"

    FILE: typing.ClassVar[str] = "deployment_config"
    FORMAT: typing.ClassVar[str] = "accel_lib.service-config/2"
    HOW: typing.ClassVar[str] = "deploy the service again"
    OLDER: typing.ClassVar[tuple] = (None, "accel_lib.service-config/1")    # flat; or with generation and engine

    def validate(self):
        if isinstance(self.num_replicas, bool) or not isinstance(self.num_replicas, int) or self.num_replicas < 1:
            raise manifest.ManifestError(f"num_replicas must be a whole number of at least 1, got "
                                         f"{self.num_replicas!r}.")
        if isinstance(self.flash_seconds, bool) or not isinstance(self.flash_seconds, (int, float)) \
                or self.flash_seconds < 0:
            raise manifest.ManifestError(f"flash_seconds must be a number >= 0, got {self.flash_seconds!r}.")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise manifest.ManifestError(f"runtime must be one of {RUNTIMES} (or None: as the image allows), got "
                                         f"{self.runtime!r}.")
        self.limits.validate()

    def to_json(self) -> str:
        return manifest.dumps(self)

    @classmethod
    def from_json(cls, text) -> "ServiceConfig":
        """Read a stored config; one of version 1 (with what ``Settled`` now holds) or stored flat by an older
        accel_lib (no format, the limits beside the rest) too."""
        import json
        data = json.loads(text)
        if data.get("format") not in cls.OLDER:
            return manifest.loads(cls, text)
        limits = {f.name for f in dataclasses.fields(ServiceLimits)}
        mine = {f.name for f in dataclasses.fields(cls)} - {"limits", "format"}
        data = {**{k: v for k, v in data.items() if k in mine},
                "limits": data.get("limits", {k: v for k, v in data.items() if k in limits}), "format": cls.FORMAT}
        return manifest.build(cls, data)


@dataclass
class Settled:
    """What a deployment settles from a ServiceConfig and the target: its generation (a redeploy under the same
    name restarts), where its replicas run and, in containers, which engine and image."""
    generation: int
    runtime: str                  # one of RUNTIMES
    engine: str = ""              # with "container": the container engine's path (podman or docker)
    container_image: str = ""     # with "container": the image's tag
    format: str = "accel_lib.service-settled/1"

    FILE: typing.ClassVar[str] = "settled"
    FORMAT: typing.ClassVar[str] = "accel_lib.service-settled/1"
    HOW: typing.ClassVar[str] = "deploy the service again"

    def validate(self):
        if self.runtime not in RUNTIMES:
            raise manifest.ManifestError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}.")
        if self.runtime == CONTAINER and not (self.engine and self.container_image):
            raise manifest.ManifestError("a service in containers needs its engine and its container image.")

    def to_json(self) -> str:
        return manifest.dumps(self)

    @classmethod
    def from_json(cls, text) -> "Settled":
        return manifest.loads(cls, text)


@dataclass
class ReplicaSpec:
    """One replica: its index in the service and the FPGA (node) it holds."""
    idx: int
    node: int


@dataclass
class ServiceSpec:
    """A service as the cluster runs it: what the user asked (``config``), what its deployment settled
    (``settled``), the image context replicas start from, where each replica runs, its keys and where logs go."""
    name: str
    context: str                  # the image's build context (absolute); replicas run from it alone
    log_dir: str                  # absolute; replica i logs to replica_log(log_dir, i)
    replicas: list[ReplicaSpec]
    config: ServiceConfig
    settled: Settled
    keys: list[str] = field(default_factory=list)


@dataclass
class ClusterSpec:
    """The desired state of one cluster (written by the workspace, read by the cluster process)."""
    name: str
    nodes: int
    vcpus_per_node: int
    services: list[ServiceSpec] = field(default_factory=list)
    tls: bool = False
    revision: int = 0             # grows with every write; the status says which revision it reflects
    format: str = "accel_lib.cluster/3"

    FILE: typing.ClassVar[str] = SPEC_FILE
    FORMAT: typing.ClassVar[str] = "accel_lib.cluster/3"
    HOW: typing.ClassVar[str] = "ComputeTarget(ws, name).restart() writes it again from the workspace's records"

    def validate(self):
        held = {}
        for s in self.services:
            s.config.validate()
            s.settled.validate()
            for r in s.replicas:
                if not 0 <= r.node < self.nodes:
                    raise manifest.ManifestError(f"{SPEC_FILE}: service {s.name!r} replica {r.idx} is on node "
                                                 f"{r.node}; the cluster has nodes 0..{self.nodes - 1}.")
                if r.node in held:
                    raise manifest.ManifestError(f"{SPEC_FILE}: node {r.node}'s FPGA is given to both "
                                                 f"{held[r.node]!r} and {s.name!r}.")
                held[r.node] = s.name

    def service(self, name) -> typing.Optional[ServiceSpec]:
        """The service called ``name`` (None if there is none)."""
        return next((s for s in self.services if s.name == name), None)

    def engines(self) -> set[str]:
        """The container engines this cluster's services run replicas with."""
        return {s.settled.engine for s in self.services if s.settled.runtime == CONTAINER}

    def largest_message(self) -> int:
        """Bytes of the largest message any service here takes (the listeners' own receive limit)."""
        return max((s.config.limits.message_bytes for s in self.services), default=ServiceLimits().message_bytes)


@dataclass
class ReplicaStatus:
    """What the supervisor sees of one replica."""
    idx: int
    node: int
    state: str
    restarts: int = 0
    pid: int = 0
    last_exit: typing.Optional[int] = None
    message: str = ""
    container: str = ""           # the container's name, when it runs in one


@dataclass
class ServiceStatus:
    name: str
    generation: int
    replicas: list[ReplicaStatus]


@dataclass
class ClusterStatus:
    """The observed state (written by the cluster process)."""
    pid: int
    revision: int = 0             # the spec revision the supervisor has applied
    services: list[ServiceStatus] = field(default_factory=list)
    format: str = "accel_lib.cluster-status/2"

    FILE: typing.ClassVar[str] = STATUS_FILE
    FORMAT: typing.ClassVar[str] = "accel_lib.cluster-status/2"
    HOW: typing.ClassVar[str] = "restart the cluster process (ComputeTarget(ws, name).restart())"

    def validate(self):
        for s in self.services:
            for r in s.replicas:
                if r.state not in REPLICA_STATES:
                    raise manifest.ManifestError(f"{STATUS_FILE}: replica state {r.state!r} is not one of "
                                                 f"{REPLICA_STATES}.")

    def service(self, name) -> typing.Optional[ServiceStatus]:
        """The status of service ``name`` (None if the cluster runs no such service)."""
        return next((s for s in self.services if s.name == name), None)


@dataclass
class Endpoints:
    """Where the cluster process listens (written once it listens)."""
    pid: int
    host: str
    grpc_port: int
    rest_port: int
    tls: bool
    format: str = "accel_lib.cluster-endpoints/1"

    FILE: typing.ClassVar[str] = ENDPOINTS_FILE
    FORMAT: typing.ClassVar[str] = "accel_lib.cluster-endpoints/1"
    HOW: typing.ClassVar[str] = "restart the cluster process (ComputeTarget(ws, name).restart())"

    def validate(self):
        pass

    @property
    def scheme(self):
        return "https" if self.tls else "http"


def read(cls, folder):
    """Read one of this module's files (ClusterSpec, ClusterStatus, Endpoints) from a cluster folder."""
    return manifest.read(cls, folder)


def read_optional(cls, folder):
    """Like read(), but None where the file does not exist yet."""
    return read(cls, folder) if (Path(folder) / cls.FILE).is_file() else None


def write(obj, folder):
    """Write one of this module's files atomically, readable by its owner only (0600)."""
    return manifest.write(obj, folder, mode=0o600)


def write_private(path, data: bytes):
    """Write a file that holds a secret: created 0600 (never readable by others, not even for a moment)."""
    import os
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@contextlib.contextmanager
def spec_lock(folder):
    """Hold the cluster's spec lock (an flock, released if its holder dies): whoever derives the spec from the
    workspace's records and writes it does both under it, so the last writer has read every change committed before
    it wrote (two deployments at once cannot lose each other's service)."""
    import fcntl
    import os
    fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                       # closing releases the lock


def spec_version(folder) -> tuple:
    """What changes whenever the spec is written again (its file is replaced: a new inode), even twice in one
    timestamp tick; None if there is no spec."""
    try:
        st = (Path(folder) / SPEC_FILE).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def replica_log(log_dir, idx) -> Path:
    """The log file of replica ``idx`` of a service."""
    return Path(log_dir) / f"replica-{idx}.log"


SOCKET_PATH_LIMIT = 107          # a Unix socket's path, in bytes (sun_path holds 108 with its NUL)
LONGEST_SOCKET = "c1000000/replica.sock"    # the longest name a replica's socket takes in the folder


def make_socket_dir() -> Path:
    """A private folder (0700) for the replicas' Unix sockets, short enough for a socket's path: in the temporary
    folder ($TMPDIR), or /tmp where that is too deep."""
    import tempfile
    for base in (None, "/tmp"):
        folder = Path(tempfile.mkdtemp(prefix="accel-cluster-", dir=base))
        if len(os.fsencode(folder / LONGEST_SOCKET)) <= SOCKET_PATH_LIMIT:
            return folder
        folder.rmdir()
    raise OSError(f"no folder for the replicas' sockets within {SOCKET_PATH_LIMIT} bytes of path: set $TMPDIR to a "
                  "short folder")


def replica_sockets(socket_dir, serial) -> tuple:
    """(scoring socket, health socket) of the replica process the supervisor numbered ``serial``."""
    base = Path(socket_dir) / f"r{serial}"
    return Path(f"{base}.sock"), Path(f"{base}.health")


def replica_socket_dir(socket_dir, serial) -> Path:
    """The folder of its own that a replica in a container (numbered ``serial``) gets for its sockets."""
    return Path(socket_dir) / f"c{serial}"


def route(service_name) -> str:
    """The value of the route header for a service."""
    return ROUTE_PREFIX + service_name


def service_from_route(value) -> typing.Optional[str]:
    """The service a route header names ('/api/v1/service/<name>[/...]'), or None."""
    if not value or not value.startswith(ROUTE_PREFIX):
        return None
    return value[len(ROUTE_PREFIX):].split("/", 1)[0] or None


def threads_per_replica(cpus, replicas_here, vcpus_per_node):
    """ONNX Runtime threads for each replica: the machine's cores shared among the replicas that run on it, at most
    a node's vCPUs."""
    return max(1, min(vcpus_per_node, cpus // max(1, replicas_here)))
