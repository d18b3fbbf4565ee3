"""Deployment: where a new service's replicas go (``schedule``, ``record_service``), what a cluster must run,
derived from the workspace's records (``service_specs``, which ``ComputeTarget.publish`` writes into the cluster's
spec), and what a service's state is from what its cluster reports (``replica_status``, ``service_state``,
``failure``, ``logs``). ``Webservice`` is the Azure-shaped face of these."""
from __future__ import annotations

import re

from . import records
from .errors import UserError
from .fpga import cluster, lifecycle

TRANSITIONING, HEALTHY, REPLACED = "Transitioning", "Healthy", "Replaced"     # a service's recorded state


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


def record_service(workspace, name, image, target, cfg, keys):
    """In one transaction: refuse a taken name, schedule ``cfg.num_replicas`` replicas on ``target``'s FPGAs, mark
    what it replaces on an edge device, and record the service and its replicas. Returns (its record, the names
    of the services it replaced)."""
    with workspace.connect(immediate=True) as db:
        if records.exists(db, records.ServiceRecord, name=name):
            raise UserError(f"a service named {name!r} exists; delete it (Webservice(ws, {name!r}).delete()) or "
                            "choose another name.")
        held = {r.fpga: r.service for r in records.find(db, records.ReplicaRecord, compute=target.name)}
        try:
            nodes, replaced = schedule(target.fpgas, held, cfg.num_replicas, edge=target.type == "edge")
        except UserError as e:
            raise UserError(f"deployment of {name!r} to {target.name!r} failed: {e}") from None
        for old in replaced:
            records.set_status(db, records.ServiceRecord, {"name": old}, REPLACED,
                               error=f"replaced on edge device {target.name!r} by service {name!r} (image {image.id})")
            records.delete(db, records.ReplicaRecord, service=old)
        rec = records.ServiceRecord(name=name, image_name=image.name, image_version=image.version, compute=target.name,
                                    config=cfg, state=TRANSITIONING, keys=keys, error=None, created_time=records.now())
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


def service_specs(workspace, target):
    """The services a cluster runs, as its spec declares them (built from the workspace's records, read in one
    transaction)."""
    with workspace.connect() as db:
        services = [s for s in records.find(db, records.ServiceRecord, compute=target.name) if s.state != REPLACED]
        replicas = records.find(db, records.ReplicaRecord, compute=target.name)
        images = {s.name: records.get(db, records.ImageRecord, name=s.image_name, version=s.image_version)
                  for s in services}
    layout = workspace.layout
    return [cluster.ServiceSpec(
        name=s.name, context=str(layout.resolve(images[s.name].context)), log_dir=str(layout.service_logs(s.name)),
        replicas=[cluster.ReplicaSpec(idx=r.idx, node=r.fpga) for r in replicas if r.service == s.name],
        keys=list(s.keys or []), flash_seconds=s.config.flash_seconds, limits=s.config.limits,
        generation=s.config.generation, runtime=s.config.runtime or "process",
        container_image=images[s.name].container or "" if s.config.runtime == "container" else "",
        engine=s.config.engine) for s in services]


# -- what the cluster reports -----------------------------------------------------------------------
CRASHES_TO_FAIL = 3          # restarts in CrashLoopBackOff after which waiting for a service stops


def replica_status(run_dir, running, name, generation) -> list:
    """What the cluster's supervisor reports for each replica of service ``name`` deployed as ``generation``
    (cluster.ReplicaStatus: state, restarts, last exit); [] while nothing is reported, or the cluster is down."""
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
        return "Deleted"
    if recorded.state == REPLACED:
        return REPLACED
    if not running:
        return "Unhealthy"
    states = [r.state for r in replicas]
    if cluster.FAILED in states:
        return "Failed"
    if states and all(s == cluster.HEALTHY for s in states):
        return HEALTHY
    if cluster.BACKOFF in states:
        return "Unhealthy"
    return TRANSITIONING


def failure(replicas):
    """Why waiting for these replicas is pointless (a replica cannot load, or keeps crashing), or None."""
    if any(r.state == cluster.FAILED for r in replicas):
        return "cannot load its model"
    if any(r.state == cluster.BACKOFF and r.restarts >= CRASHES_TO_FAIL for r in replicas):
        return "keeps crashing (CrashLoopBackOff)"
    return None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")      # terminal colours a library wrote into a log


def logs(log_dir, num_replicas, where, num_lines=5000) -> str:
    """The last ``num_lines`` lines of each replica's log under ``log_dir``, headed by replica and ``where``; as plain
    text (terminal escapes removed)."""
    parts = []
    for i in range(num_replicas):
        p = cluster.replica_log(log_dir, i)
        lines = ANSI_ESCAPE.sub("", p.read_text(errors="replace")).splitlines()[-num_lines:] if p.exists() else []
        parts.append(f"--- replica {i} ({where}) ---\n" + "\n".join(lines))
    return "\n".join(parts)


def note(log_dir, idx, text):
    """Add a supervisor-style note to replica ``idx``'s log (e.g. that an edge device's model was replaced)."""
    import time
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(cluster.replica_log(log_dir, idx), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
