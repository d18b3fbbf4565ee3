"""Deployment: where a new service's replicas go (``schedule``) and what a cluster must run, derived from the
workspace's records (``service_specs``, which ``ComputeTarget.publish`` writes into the cluster's spec)."""
from __future__ import annotations

import json

from .errors import UserError
from .fpga import cluster
from .image import Image


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


def service_specs(workspace, target):
    """The services a cluster runs, as its spec declares them (built from the workspace's records)."""
    with workspace.connect() as db:
        rows = db.execute("SELECT * FROM services WHERE compute=? AND state != 'Replaced' ORDER BY name",
                          (target.name,)).fetchall()
        reps = db.execute("SELECT service, idx, fpga FROM replicas WHERE compute=? ORDER BY service, idx",
                          (target.name,)).fetchall()
    out = []
    for row in rows:
        cfg = cluster.ServiceConfig.from_json(row["config"])
        img = Image(workspace, row["image_name"], row["image_version"])
        out.append(cluster.ServiceSpec(
            name=row["name"], context=str(img.context), log_dir=str(workspace.service_folder(row["name"])),
            replicas=[cluster.ReplicaSpec(idx=r["idx"], node=r["fpga"]) for r in reps if r["service"] == row["name"]],
            keys=json.loads(row["keys"]) if row["keys"] else [], flash_seconds=cfg.flash_seconds,
            limits=cfg.limits, generation=cfg.generation))
    return out
