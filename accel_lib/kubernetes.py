"""Kubernetes manifests for a deployed service: what a real cluster with FPGA nodes would run for its image.

A Deployment (the replicas, the FPGA as the extended resource ``microsoft.com/fpga``, start-up, readiness and
liveness by gRPC health, the keys mounted from a Secret), a Service in front of it, and the Secret. Nothing here
talks to a cluster: ``kubectl apply -f <folder>`` does, once the image is built and pushed (see the README).
"""
from __future__ import annotations

from pathlib import Path

from .fpga import containers, server

FPGA_RESOURCE = "microsoft.com/fpga"
PORT = containers.PORT
KEYS_DIR = "/etc/accel-keys"
KEYS_FILE = "keys"


def manifests(svc, image, cpus=6):
    """The Deployment, Service and (with keys) Secret of service ``svc`` (a ``cluster.ServiceSpec``, as
    ``deployment.service_spec`` gives it) running container ``image``, as dicts, in the order to apply them."""
    name, keys = svc.name, svc.keys
    labels = {"app": name, "app.kubernetes.io/managed-by": "accel_lib"}
    cmd = server.command(containers.PYTHON, svc, host="0.0.0.0", port=PORT, threads=cpus,
                         keys_file=f"{KEYS_DIR}/{KEYS_FILE}" if keys else None)
    probe = {"grpc": {"port": PORT}}
    container = {
        "name": "replica", "image": image, "workingDir": containers.APP, "command": cmd,
        "ports": [{"name": "grpc", "containerPort": PORT}],
        "resources": {"limits": {FPGA_RESOURCE: "1", "cpu": str(cpus)}, "requests": {FPGA_RESOURCE: "1"}},
        # flashing the FPGA takes time: the start-up probe waits for it before liveness counts
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
    }
    pod = {"containers": [container]}
    out = []
    if keys:
        secret = f"{name}-keys"
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret, "labels": labels},
                    "stringData": {KEYS_FILE: "\n".join(keys) + "\n"}})
        container["volumeMounts"] = [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}]
        pod["volumes"] = [{"name": "keys", "secret": {"secretName": secret, "defaultMode": 0o400}}]
    out.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                "spec": {"replicas": len(svc.replicas), "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": labels}, "spec": pod}}})
    out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
                "spec": {"selector": {"app": name}, "ports": [{"name": "grpc", "port": PORT, "targetPort": "grpc"}]}})
    return out


def write(docs, folder):
    """Write each manifest as ``<kind>.yaml`` into ``folder``; returns the paths, in the order to apply them. The
    Secret, which holds the keys, is created 0600."""
    import yaml

    from .fpga.cluster import write_private
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        p = folder / f"{i:02d}-{doc['kind'].lower()}.yaml"
        text = yaml.safe_dump(doc, sort_keys=False)
        if doc["kind"] == "Secret":
            write_private(p, text.encode())
        else:
            p.write_text(text)
        paths.append(p)
    return paths
