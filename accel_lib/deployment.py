"""Deployment: what a deployment settles from the user's request (``settle``), where a new service's replicas go
(``schedule``, ``record_service``), the one path of a deployment (``deploy``: record, then publish, then start),
what a cluster must run, derived from the workspace's records (``service_spec(s)``, which ``publish`` writes into
the cluster's spec), and what a service's state is from what its cluster reports (``replica_status``,
``service_state``, ``failure``, ``logs``). ``Webservice`` is the Azure-shaped face of these."""
from __future__ import annotations

import re
import shutil
import time

from . import records
from .errors import UserError
from .fpga.cluster import specs, lifecycle
from .fpga.replica import logtime
from .fpga.replica import keys as service_keys

from .records import DELETED, FAILED, HEALTHY, REPLACED, TRANSITIONING, UNHEALTHY     # a service's states


def schedule(nodes, held, num_replicas, edge=False):
    """Pick FPGAs for a new service: ``held`` maps node -> the service holding its FPGA. Returns (nodes chosen,
    services replaced). An edge device runs one model at a time, so a new service replaces whatever ran there;
    an AKS cluster schedules only on free FPGAs and refuses like Kubernetes when there are too few."""
    if edge:
        if num_replicas != 1:
            raise UserError(f"an edge device has one FPGA: deploy with num_replicas=1, not {num_replicas}.")
        return [0], sorted(set(held.values()))
    free = [n for n in range(nodes) if n not in held]
    if len(free) < num_replicas:
        holders = sorted(set(held.values()))
        raise UserError(
            f"0/{nodes} nodes are available: {nodes - len(free)} Insufficient microsoft.com/fpga "
            f"({num_replicas} replica(s) need {num_replicas} free FPGA(s); {len(free)} of {nodes} free). Remedy: "
            f"delete the service that holds them ({', '.join(holders) or 'none'}), lower num_replicas, or create a "
            "cluster with a larger agent_count.")
    return free[:num_replicas], []


def container_engine(image, required=True) -> str:
    """The engine that holds ``image``'s container image; without one, UserError saying how to build it (or ""
    when not ``required``)."""
    from .fpga.cluster import containers
    if not required:
        engine = containers.find_engine()[0] if image.container_image else None
        return engine if engine and containers.image_exists(engine, image.container_image) else ""
    if not image.container_image:
        raise UserError(f"image {image.id} has no container image: runtime={specs.CONTAINER!r} needs one. Build it "
                        "with image.wait_for_creation() where podman or docker answers, or deploy with "
                        f"runtime={specs.PROCESS!r}.")
    engine, why = containers.find_engine()
    if engine is None:
        raise UserError(f"runtime={specs.CONTAINER!r} needs a container engine: {why}.")
    if not containers.image_exists(engine, image.container_image):
        raise UserError(f"{containers.engine_name(engine)} holds no image {image.container_image}: build it again "
                        "with image.wait_for_creation(engine=...) using this engine.")
    return engine


def settle(cfg, image, target) -> tuple:
    """What deploying ``image`` to ``target`` with ``cfg`` settles: (specs.Settled, keys or None). Keys are on
    by default on AKS, as in Azure ML, and off on an edge device; replicas run in containers where the image
    was built into one and its engine answers, unless ``cfg.runtime`` says."""
    runtime = cfg.runtime or (specs.CONTAINER if container_engine(image, required=False) else specs.PROCESS)
    engine = container_engine(image) if runtime == specs.CONTAINER else ""
    settled = specs.Settled(generation=time.time_ns() // 1000, runtime=runtime, engine=engine,
                              container_image=image.container_image if engine else "")
    keyed = cfg.auth_enabled if cfg.auth_enabled is not None else target.type == records.AKS
    return settled, service_keys.new() if keyed else None


def check_device(image, target):
    """UserError unless ``image``'s package was converted for the device ``target``'s nodes carry (the same
    fingerprint: an FPGA loads only a bitstream built for its own configuration)."""
    from .fpga.device import timing
    made_for = image.models[0].manifest.device_preset
    here = timing.preset(target.device_preset)
    try:
        theirs = timing.preset(made_for)
    except ValueError:
        theirs = None
    if theirs is None or timing.fingerprint(theirs) != timing.fingerprint(here):
        shown = f"{made_for} (fingerprint {timing.fingerprint(theirs)})" if theirs else repr(made_for)
        raise UserError(f"fingerprint mismatch: image {image.id} holds a model converted for {shown}, but the nodes "
                        f"of {target.name!r} carry {here.name} (fingerprint {timing.fingerprint(here)}: {here.fpga}). "
                        f"Convert the model again with device={here.name!r}, or deploy to a target of that device.")


def deploy(workspace, name, image, cfg, target) -> records.ServiceRecord:
    """The one path of a deployment: the device checked, settle, record (scheduling the replicas), publish the
    cluster's spec, start its process if it is down. A failure after the record removes it again. Returns the
    service's record."""
    check_device(image, target)
    settled, keys = settle(cfg, image, target)
    rec, replaced = record_service(workspace, name, image, target, cfg, settled, keys)
    log_dir = workspace.service_folder(name)
    shutil.rmtree(log_dir, ignore_errors=True)              # a new service: logs of an earlier one go
    for old in replaced:
        text = (f"edge device {target.name}: service {old!r} replaced by {name!r} (image {image.id}); "
                "one model runs on the FPGA at a time")
        note(workspace.service_folder(old), 0, text)
        note(log_dir, 0, text)
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        publish(workspace, target)
        start(target)
    except Exception:
        forget_service(workspace, name)
        publish(workspace, target)
        raise
    return rec


def start(target):
    """Start ``target``'s cluster process if it is down, on the spec published already; UserError if it does not
    come up."""
    if lifecycle.running(target.run_dir):
        return
    try:
        lifecycle.start(target.run_dir)
    except lifecycle.NotRunning:
        raise UserError(f"the front end of cluster {target.name!r} did not start within {lifecycle.START_TIMEOUT} s; "
                        f"its log says why: {target.run_dir / specs.LOG_FILE}") from None


def record_service(workspace, name, image, target, cfg, settled, keys):
    """In one transaction: refuse a taken name, schedule ``cfg.num_replicas`` replicas on ``target``'s FPGAs, mark
    what it replaces on an edge device, and record the service and its replicas. Returns (its record, the names
    of the services it replaced)."""
    with workspace.connect(immediate=True) as db:
        if records.exists(db, records.ServiceRecord, name=name):
            raise UserError(f"a service named {name!r} exists; delete it (Webservice(ws, {name!r}).delete()) or "
                            "choose another name.")
        held = {r.fpga: r.service for r in records.find(db, records.ReplicaRecord, compute=target.name)}
        try:
            nodes, replaced = schedule(target.fpgas, held, cfg.num_replicas, edge=target.type == records.EDGE)
        except UserError as e:
            raise UserError(f"deployment of {name!r} to {target.name!r} failed: {e}") from None
        for old in replaced:
            records.set_status(db, records.ServiceRecord, {"name": old}, REPLACED,
                               error=f"replaced on edge device {target.name!r} by service {name!r} (image {image.id})")
            records.delete(db, records.ReplicaRecord, service=old)
        rec = records.ServiceRecord(name=name, image_name=image.name, image_version=image.version, compute=target.name,
                                    config=cfg, state=TRANSITIONING, keys=keys, error=None, created_time=records.now(),
                                    settled=settled)
        records.insert(db, rec)
        for idx, node in enumerate(nodes):
            records.insert(db, records.ReplicaRecord(service=name, idx=idx, compute=target.name, fpga=node))
    return rec, replaced


def forget_service(workspace, name):
    """Remove service ``name``'s record and its replicas' (their FPGAs are free again)."""
    with workspace.connect(immediate=True) as db:
        records.delete(db, records.ReplicaRecord, service=name)
        records.delete(db, records.ServiceRecord, name=name)


def mark_healthy(workspace, name):
    """Record that every replica of service ``name`` served."""
    with workspace.connect(immediate=True) as db:
        records.set_status(db, records.ServiceRecord, {"name": name}, HEALTHY, only_from=(TRANSITIONING,))


def _spec(layout, s, image, replicas) -> specs.ServiceSpec:
    return specs.ServiceSpec(
        name=s.name, context=str(layout.resolve(image.context)), log_dir=str(layout.service_logs(s.name)),
        replicas=[specs.ReplicaSpec(idx=r.idx, node=r.fpga) for r in replicas if r.service == s.name],
        config=s.config, settled=s.settled, keys=list(s.keys or []))


def service_specs(workspace, target) -> list:
    """The services a cluster runs, as its spec declares them (built from the workspace's records, read in one
    transaction)."""
    with workspace.connect() as db:
        services = [s for s in records.find(db, records.ServiceRecord, compute=target.name) if s.state != REPLACED]
        replicas = records.find(db, records.ReplicaRecord, compute=target.name)
        images = {s.name: records.get(db, records.ImageRecord, name=s.image_name, version=s.image_version)
                  for s in services}
    return [_spec(workspace.layout, s, images[s.name], replicas) for s in services]


def service_spec(workspace, name) -> specs.ServiceSpec:
    """Service ``name`` as a cluster runs it (what ``kubernetes.manifests`` reads); UserError if there is none."""
    with workspace.connect() as db:
        s = records.get(db, records.ServiceRecord, name=name)
        if s is None:
            raise UserError(f"no service {name!r} in workspace {workspace.name!r}.")
        image = records.get(db, records.ImageRecord, name=s.image_name, version=s.image_version)
        replicas = records.find(db, records.ReplicaRecord, service=name)
    return _spec(workspace.layout, s, image, replicas)


def publish(workspace, target, timeout=30):
    """Declare in the cluster's spec the services the workspace's records give ``target``, reading the records and
    writing the spec under the cluster's spec lock (no deployment is lost to another at the same time); if its
    process runs, wait up to ``timeout`` s until its supervisor has taken the change. Returns the spec's revision
    (None when the cluster's folder is gone)."""
    run_dir = target.run_dir
    if not run_dir.is_dir():
        return None
    with specs.spec_lock(run_dir):
        revision = lifecycle.declare(run_dir, target.name, target.fpgas, target.host_vcpus,
                                     service_specs(workspace, target))
    lifecycle.wait_applied(run_dir, revision, timeout)
    return revision


# -- what the cluster reports -----------------------------------------------------------------------
CRASHES_TO_FAIL = 3          # restarts in CrashLoopBackOff after which waiting for a service stops


def replica_status(run_dir, running, name, generation) -> list:
    """What the cluster's supervisor reports for each replica of service ``name`` deployed as ``generation``
    (specs.ReplicaStatus: state, restarts, last exit); [] while nothing is reported, or the cluster is down."""
    st = lifecycle.status(run_dir) if running else None            # the running process's own word only
    mine = st.service(name) if st else None
    if mine is None or mine.generation != generation:
        return []
    return mine.replicas


def service_state(recorded, running, replicas) -> str:
    """A service's state: Deleted (no record), Replaced (on an edge device), Unhealthy (the cluster's process is
    down, or a replica in CrashLoopBackOff), Failed (a replica cannot load), Healthy (every replica serves), else
    Transitioning (starting, flashing, restarting)."""
    if recorded is None:
        return DELETED
    if recorded.state == REPLACED:
        return REPLACED
    if not running:
        return UNHEALTHY
    states = [r.state for r in replicas]
    if specs.FAILED in states:
        return FAILED
    if all_healthy(replicas):
        return HEALTHY
    if specs.BACKOFF in states:
        return UNHEALTHY
    return TRANSITIONING


def all_healthy(replicas) -> bool:
    """Whether a service is serving: it has replicas, and every one of them is Healthy."""
    return bool(replicas) and all(r.state == specs.HEALTHY for r in replicas)


def failure(replicas):
    """Why waiting for these replicas is pointless (a replica cannot load, or keeps crashing), or None."""
    if any(r.state == specs.FAILED for r in replicas):
        return "cannot load its model"
    if any(r.state == specs.BACKOFF and r.restarts >= CRASHES_TO_FAIL for r in replicas):
        return "keeps crashing (CrashLoopBackOff)"
    return None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")      # terminal colours a library wrote into a log


def logs(log_dir, num_replicas, where, num_lines=5000, timestamps=True) -> str:
    """The last ``num_lines`` lines of each replica's log under ``log_dir``, headed by replica and ``where``; as plain
    text (terminal escapes removed), each line's time left off with ``timestamps=False``."""
    parts = []
    for i in range(num_replicas):
        p = specs.replica_log(log_dir, i)
        text = ANSI_ESCAPE.sub("", p.read_text(errors="replace")) if p.exists() else ""
        lines = (text if timestamps else logtime.unstamped(text)).splitlines()[-num_lines:]
        parts.append(f"--- replica {i} ({where}) ---\n" + "\n".join(lines))
    return "\n".join(parts)


def note(log_dir, idx, text):
    """Add a supervisor-style note to replica ``idx``'s log (e.g. that an edge device's model was replaced)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(specs.replica_log(log_dir, idx), "a") as f:
        f.write(logtime.stamped(text) + "\n")
