"""Kubernetes manifests for a deployed service: what a real cluster with FPGA nodes would run for its image.

A Deployment (the replicas, the FPGA as the extended resource ``microsoft.com/fpga``, start-up, readiness and
liveness by gRPC health, the keys mounted from a Secret), a Service in front of it, and the Secret. Nothing here
talks to a cluster: ``kubectl apply -f <folder>`` does, once the image is built and pushed (see the README).
``play`` runs them, unchanged, on this machine's containers with podman's Kubernetes runner (``podman kube
play``: one node, no scheduler, no Service, no probes, ``microsoft.com/fpga`` not enforced).
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
                    "metadata": {"name": secret, "labels": dict(labels)},
                    "stringData": {KEYS_FILE: "\n".join(keys) + "\n"}})
        container["volumeMounts"] = [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}]
        pod["volumes"] = [{"name": "keys", "secret": {"secretName": secret, "defaultMode": 0o400}}]
    out.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": dict(labels)},
                "spec": {"replicas": len(svc.replicas), "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}})
    out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
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


PLAYED = ("Secret", "Pod", "Deployment")     # the kinds podman's Kubernetes runner takes; a Service is a cluster's
PLAY_FILE = "play.yaml"


def play(paths, folder, engine=None) -> Path:
    """Run the manifests at ``paths`` (as ``write`` gives them) on real containers with ``podman kube play``: their
    Secrets, Pods and Deployments, unchanged, in one file ``folder/play.yaml`` (0600: it holds the keys); returns
    it, for ``down``. A runner that fails stops here, its message in an EngineError, with nothing left running."""
    import yaml

    from .fpga import containers
    from .fpga.cluster import write_private
    engine = engine or _podman()
    docs = [d for d in (yaml.safe_load(Path(p).read_text()) for p in paths) if d["kind"] in PLAYED]
    target = Path(folder) / PLAY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, yaml.safe_dump_all(docs, sort_keys=False).encode())
    try:
        containers.kube_play(engine, target)
    except containers.EngineError:
        down(target, engine)
        raise
    return target


def down(played, engine=None):
    """Remove what ``play`` made from ``played``: its pods and containers (``podman kube down``, then any pod of
    its apps that podman 4.3's ``kube down`` stops short of: it gives up at the first replica it cannot find), and
    the secrets it stored, which that ``kube down`` leaves."""
    import yaml

    from .fpga import containers
    engine = engine or _podman()
    containers.kube_down(engine, played)
    for doc in yaml.safe_load_all(Path(played).read_text()):
        if not doc:
            continue
        if doc["kind"] == "Secret":
            containers.remove_secret(engine, doc["metadata"]["name"])
        else:
            for pod in containers.pods(engine, label=f"app={doc['metadata']['labels']['app']}"):
                containers.remove_pod(engine, pod)


def _podman():
    from .fpga import containers
    engine, why = containers.find_engine("podman")
    if engine is None:
        raise containers.EngineError(f"running manifests needs podman ({why})")
    return engine
